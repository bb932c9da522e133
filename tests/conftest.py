"""Fixtures shared by every test: real child processes that plant address-space
layouts (tests/linux/planter.c, built once per session with the system C compiler)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
PAGE = os.sysconf("SC_PAGE_SIZE")


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """The first truthy value of ``predicate``, polled until it comes. Tests wait on
    events this way; ``timeout`` only guards against a hang and is never what a test
    measures."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


class Planter:
    """A running planter child; each method sends one command and parses its answer."""

    def __init__(self, binary: Path):
        self.proc = subprocess.Popen(
            [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        ready = self._readline()
        assert ready.startswith("ready "), ready
        self.pid = self.proc.pid

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"planter exited with {self.proc.wait()}")
        return line.strip()

    def send(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._readline()

    def _address(self, command: str) -> int:
        answer = self.send(command)
        if answer.startswith("err"):
            raise OSError(int(answer.split()[1]), f"planter: {command}: {answer}")
        return int(answer, 16)

    def _ok(self, command: str) -> None:
        answer = self.send(command)
        if answer != "ok":
            raise OSError(int(answer.split()[1]), f"planter: {command}: {answer}")

    def map(self, pages: int) -> int:
        return self._address(f"map {pages}")

    def reserve(self, pages: int) -> int:
        return self._address(f"reserve {pages}")

    def mapfile(self, path: str | Path, pages: int) -> int:
        return self._address(f"mapfile {pages} {path}")

    def grow(self, regions: int) -> int:
        return self._address(f"grow {regions}")

    def unmap(self, address: int, pages: int) -> None:
        self._ok(f"unmap {address:x} {pages}")

    def protect(self, address: int, pages: int, prot: str) -> None:
        self._ok(f"protect {address:x} {pages} {prot or '-'}")

    def alternate(self, address: int, pages: int) -> None:
        self._ok(f"alternate {address:x} {pages}")

    def name(self, address: int, pages: int, name: str) -> None:
        self._ok(f"name {address:x} {pages} {name}")

    def touch(self, address: int, pages: int) -> None:
        self._ok(f"touch {address:x} {pages}")

    def split_until_enomem(self) -> int:
        answer = self.send("split")
        kind, count = answer.split()
        assert kind == "enomem", answer
        return int(count)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError, BrokenPipeError, OSError):
                self.send("exit")
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def planter_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("a C compiler (cc or gcc) is needed to build the planter child")
    out = tmp_path_factory.mktemp("planter") / "planter"
    subprocess.run(
        [cc, "-O1", "-Wall", "-o", str(out), str(HERE / "linux" / "planter.c")], check=True
    )
    return out


@pytest.fixture
def planter(planter_binary: Path) -> Iterator[Planter]:
    child = Planter(planter_binary)
    try:
        yield child
    finally:
        child.close()


@pytest.fixture
def make_planter(planter_binary: Path) -> Iterator[object]:
    """A factory for several planter children in one test."""
    children: list[Planter] = []

    def make() -> Planter:
        child = Planter(planter_binary)
        children.append(child)
        return child

    yield make
    for child in children:
        child.close()


def pytest_report_header() -> str:
    return f"python {sys.version.split()[0]}, page size {PAGE}"
