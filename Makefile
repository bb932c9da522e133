# The two Quick start commands (see README.md):
#   make up      install into .venv and run the server plus a local agent (vmatlas up)
#   make test    install what the tests need (system packages too, as root) and run them
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: up test install install-dev system-deps check-generated lint typecheck pytest bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'

up: install
	$(BIN)/vmatlas up

# Wine and MinGW run the Windows reader's tests; a C compiler builds the planted children.
system-deps:
	@tools/system-deps

check-generated: install-dev
	PATH="$(CURDIR)/$(BIN):$$PATH" PYTHON=$(BIN)/python tools/genproto --check

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install-dev
	PATH="$(CURDIR)/$(BIN):$$PATH" tools/typecheck

# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
pytest: install-dev
	$(BIN)/python -m pytest; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test: system-deps check-generated lint typecheck pytest

bench: install-dev
	$(BIN)/python -m bench
