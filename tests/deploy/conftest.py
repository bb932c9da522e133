"""Debian's ``prometheus`` package (promtool and the Prometheus server) for the tests of
deploy/prometheus and deploy/grafana.

The tests skip when it is missing, unless VMATLAS_REQUIRE_PROMETHEUS is set (CI sets
it): then a missing tool is a failure. ``tools/system-deps`` installs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is not None:
        return path
    message = f"missing {tool} (apt-get install prometheus, or run tools/system-deps as root)"
    if os.environ.get("VMATLAS_REQUIRE_PROMETHEUS"):
        pytest.fail(f"{message} (VMATLAS_REQUIRE_PROMETHEUS is set)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def promtool() -> str:
    return require("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return require("prometheus")
