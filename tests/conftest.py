"""Fixtures shared by every test: real child processes that plant address-space
layouts (tests/linux/planter.c, built once per session with the system C compiler),
databases of their own on the real PostgreSQL server, in-process fleet servers on
loopback ports with uplinks that use the real Linux reader, and headless Chromium for the
browser tests with the folder their screenshots go to."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from vmatlas.agents.linux import LinuxReader
    from vmatlas.agents.uplink import Uplink
    from vmatlas.server.app import FleetServer

HERE = Path(__file__).parent
PAGE = os.sysconf("SC_PAGE_SIZE")
# Liveness windows for the tests that are not about them, wide enough that two loaded
# cores never close one: an agent drops its stream after three heartbeat intervals
# without a word from its server, and a server pings a quiet connection after two
# thirds of its offline window and drops it when no answer came in the last third.
# A test about expiry sets short windows of its own and waits for the expiry itself.
HEARTBEAT_SECONDS = 1.0
OFFLINE_AFTER_SECONDS = 15.0


def spaced_table(n: int, page: int = 4096) -> Any:
    """A RegionTable of ``n`` one-page private read-write regions, a page apart, with
    no files: a large table built without a process."""
    from vmatlas.model import RegionTable

    return RegionTable(
        start=[(2 * i + 1) * page for i in range(n)],
        end=[(2 * i + 2) * page for i in range(n)],
        state=[3] * n,
        type=[3] * n,
        protection=[3] * n,
        protection_raw=[3] * n,
        kind=[0] * n,
        path=[""] * n,
        offset=[0] * n,
        device=[0] * n,
        inode=[0] * n,
        deleted=[False] * n,
    )


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


# The PostgreSQL server the tests use: on 127.0.0.1:5432, user postgres, trust auth.
# A test run makes one database of its own and drops it at the end; each test works in
# a fresh schema of it (making a database costs seconds, a schema milliseconds).
POSTGRES_ADMIN_URL = os.environ.get(
    "VMATLAS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _postgres_connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def postgres_run_database() -> Iterator[str]:
    """The URL of this test run's own database, dropped at the end. Skips when the
    server cannot be reached, unless VMATLAS_REQUIRE_POSTGRES is set (CI sets it):
    then that is a failure."""
    try:
        admin = _postgres_connect(POSTGRES_ADMIN_URL)
    except Exception as exc:
        message = (
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({type(exc).__name__}: "
            f"{str(exc).strip()}); the PostgreSQL tests need a server there (user postgres, "
            "trust auth), or VMATLAS_TEST_POSTGRES set to another admin URL"
        )
        if os.environ.get("VMATLAS_REQUIRE_POSTGRES"):
            pytest.fail(f"{message} (VMATLAS_REQUIRE_POSTGRES is set)")
        pytest.skip(message)
    name = f"vmatlas_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with _postgres_connect(POSTGRES_ADMIN_URL) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def make_postgres_url(postgres_run_database: str) -> Iterator[Callable[[], str]]:
    """A factory of URLs of fresh, empty stores on the real PostgreSQL server: each
    is a schema of its own in the run's database (the URL's search_path selects it),
    dropped after the test. Servers given the same URL share one store."""
    schemas: list[str] = []

    def make() -> str:
        schema = f"t_{uuid.uuid4().hex[:16]}"
        with _postgres_connect(postgres_run_database) as db:
            db.execute(f'CREATE SCHEMA "{schema}"')
        schemas.append(schema)
        return f"{postgres_run_database}?options=-csearch_path%3D{schema}"

    yield make
    import psycopg

    with _postgres_connect(postgres_run_database) as db:
        # A connection a test left open must not hang the run: fail instead.
        db.execute("SET lock_timeout = '30s'")
        for schema in schemas:
            # A stopped server's last store call may still be finishing (a closed pool
            # lets a connection in use end its transaction) and deadlock with the drop:
            # PostgreSQL then aborts one of the two, and the drop is tried again.
            for attempt in range(5):
                try:
                    db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                    break
                except psycopg.errors.DeadlockDetected:
                    if attempt == 4:
                        raise


@pytest.fixture
def postgres_url(make_postgres_url: Callable[[], str]) -> str:
    """The URL of a fresh, empty PostgreSQL store of this test's own."""
    return make_postgres_url()


@pytest.fixture(scope="session")
def reader() -> LinuxReader:
    from vmatlas.agents.linux import LinuxReader

    return LinuxReader()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., FleetServer]]:
    """``make(**overrides)``: start a fleet server on a loopback port with a fresh data
    directory and the liveness windows above; every one is stopped afterwards."""
    from vmatlas.server.app import FleetServer, ServerConfig

    servers: list[FleetServer] = []

    def make(**overrides: Any) -> FleetServer:
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "data_dir": str(tmp_path / "data"),
            "heartbeat_seconds": HEARTBEAT_SECONDS,
            "offline_after_seconds": OFFLINE_AFTER_SECONDS,
            "agent_timeout_seconds": 5.0,
            "retain_seconds": 0.0,
            "max_agents": 80,
        }
        values.update(overrides)
        server = FleetServer(ServerConfig(**values)).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop(0.5)


@pytest.fixture
def make_uplink(reader: LinuxReader) -> Iterator[Callable[..., Uplink]]:
    """``make(target, host_id, **options)``: start an uplink to ``target`` reading with
    ``reader`` unless the options name another; every one is stopped afterwards."""
    from vmatlas.agents.uplink import Uplink

    uplinks: list[Uplink] = []

    def make(target: str, host_id: str, **options: Any) -> Uplink:
        source = options.pop("reader", reader)
        values: dict[str, Any] = {"interval_seconds": 60.0, "backoff_max_seconds": 0.5}
        values.update(options)
        uplink = Uplink(source, target, host_id=host_id, **values)
        uplinks.append(uplink.start())
        return uplink

    yield make
    for uplink in uplinks:
        uplink.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A fresh headless Chromium (tests/browser.py), quit after; skips without it
    unless VMATLAS_REQUIRE_CHROMIUM is set."""
    from tests.browser import chromium

    yield from chromium(tmp_path)


_SCREENSHOTS: list[Path] = []


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser tests save a screenshot of each page ($VMATLAS_ARTIFACT_DIR, or
    a temporary directory); printed at the end of the run."""
    root = os.environ.get("VMATLAS_ARTIFACT_DIR")
    path = Path(root) / "web-screenshots" if root else tmp_path_factory.mktemp("web-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    _SCREENSHOTS.append(path)
    return path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for path in _SCREENSHOTS:
        shots = sorted(p.name for p in path.glob("*.png"))
        terminalreporter.write_line(f"web view screenshots ({len(shots)}): {path}")


def pytest_report_header() -> str:
    return f"python {sys.version.split()[0]}, page size {PAGE}"


@pytest.fixture(params=["native", "pure"])
def capture_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test on the C extension's loops, then on the pure-Python ones. Where the
    extension is not built the native run skips, saying how to build it; with
    VMATLAS_REQUIRE_NATIVE=1 (CI) it fails."""
    from vmatlas import native

    if request.param == "native" and not native.available():
        message = (
            f"the C extension vmatlas._native is not in use ({native.describe()}): "
            "`make install-dev` builds it where a C compiler is present (and "
            "VMATLAS_NO_NATIVE is unset)"
        )
        if os.environ.get("VMATLAS_REQUIRE_NATIVE"):
            pytest.fail(message)
        pytest.skip(message)
    with native.use(request.param == "native"):
        yield request.param


def cgroup2_mount() -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return Path(fields[1])
    return None


@pytest.fixture
def cgroups() -> Iterator[Callable[[str, int], None]]:
    """``place(relative_path, pid)``: make a cgroup under a test-owned root and move the
    pid into it. Everything is moved back and removed afterwards. Skips without root or a
    writable cgroup v2 hierarchy, unless VMATLAS_REQUIRE_CGROUPS is set (CI sets it):
    then that is a failure."""
    mount = cgroup2_mount()
    if os.geteuid() != 0 or mount is None or not os.access(mount, os.W_OK):
        if os.geteuid() != 0:
            why = "not running as root"
        elif mount is None:
            why = "no cgroup2 hierarchy is mounted"
        else:
            why = f"the cgroup2 hierarchy at {mount} is not writable"
        message = f"making cgroups needs root and a writable cgroup v2 hierarchy ({why})"
        if os.environ.get("VMATLAS_REQUIRE_CGROUPS"):
            pytest.fail(f"{message} (VMATLAS_REQUIRE_CGROUPS is set)")
        pytest.skip(message)
    root = mount / f"vmatlas-test-{uuid.uuid4().hex[:12]}"
    root.mkdir()
    moved: list[tuple[int, Path]] = []

    def place(relative: str, pid: int) -> None:
        line = next(
            ln
            for ln in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            if ln.startswith("0::")
        )
        moved.append((pid, mount / line[3:].lstrip("/")))
        target = root / relative
        target.mkdir(parents=True, exist_ok=True)
        (target / "cgroup.procs").write_text(str(pid))

    yield place
    for pid, original in moved:
        with contextlib.suppress(OSError):  # unless the process has exited
            (original / "cgroup.procs").write_text(str(pid))
    for directory in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if directory.is_dir():
            directory.rmdir()
    root.rmdir()
