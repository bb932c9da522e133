"""The agent a Windows machine runs: `vmatlas agent` in a real Windows CPython under
Wine, reading with ctypes, connected out to a fleet server on Linux.

Everything is checked through the server: the host as registered, `ps --host`, a fresh
snapshot against the planted program's own VirtualQuery walk, pushes on the interval
and at once on a jump. The interpreter and the dependencies' win_amd64 wheels are
fetched once and cached (see :mod:`tests.windows.winpython`); without network access
the tests skip, unless VMATLAS_REQUIRE_WINPYTHON is set (CI sets it).
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from vmatlas.agents.windows.win32 import MEM_FREE
from vmatlas.agents.windows.wine import WineApi
from vmatlas.client import Client
from vmatlas.fleet import HostStatus
from vmatlas.model import OperatingSystem, ProcessSummary, RegionState, RegionType
from vmatlas.server.app import FleetServer, ServerConfig

from .planting import Planter, Region, assert_counts_walk, assert_matches_walk, start_planter
from .winpython import Installation, WindowsProcess

# One agent pushes often (the interval); the other seldom, so that a push between two
# of its interval pushes can only be a jump.
FAST, SLOW = "wine-fast", "wine-slow"
FAST_INTERVAL = 2.0
SLOW_INTERVAL = 120.0
JUMP = 100
# Starting Windows CPython under Wine and its first read of every process take a while.
AGENT_START_SECONDS = 180.0

# The first run fetches the interpreter and the wheels; every run starts a Wine prefix.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def planter(
    wine: str, planter_exe: Path, wine_env: dict[str, str], wine_api: WineApi
) -> Iterator[Planter]:
    """The planter run from the prefix's C: drive, its file view there too: the paths
    of its image and view are C: paths."""
    directory = Path(wine_env["WINEPREFIX"], "drive_c", "vmatlas-test")
    directory.mkdir(parents=True, exist_ok=True)
    exe = Path(shutil.copy2(planter_exe, directory / "planter.exe"))
    planted = start_planter(wine, exe, wine_env, directory / "view.bin")
    yield planted
    planted.exit()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServer]:
    config = ServerConfig(
        listen="127.0.0.1:0",
        data_dir=str(tmp_path_factory.mktemp("server")),
        heartbeat_seconds=1.0,
        # A Windows agent under Wine on a loaded machine answers slowly; it must not
        # drop offline between heartbeats.
        offline_after_seconds=30.0,
        agent_timeout_seconds=60.0,
    )
    server = FleetServer(config).start()
    yield server
    server.stop(1.0)


@pytest.fixture(scope="module")
def agents(
    winpython: Installation,
    wine: str,
    wine_env: dict[str, str],
    server: FleetServer,
    planter: Planter,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, WindowsProcess]]:
    # Its own directory: `python -m` would import a vmatlas/ found there first.
    cwd = tmp_path_factory.mktemp("agent-cwd")
    env = winpython.env(wine_env)
    started = {}
    for host_id, interval in ((FAST, FAST_INTERVAL), (SLOW, SLOW_INTERVAL)):
        command = [wine, str(winpython.python), "-m", "vmatlas", "agent"]
        command += ["--listen", "127.0.0.1:0", "--server", server.address]
        command += ["--host-id", host_id, "--interval", str(interval), "--jump", str(JUMP)]
        started[host_id] = WindowsProcess(command, env, cwd)
    try:
        with Client(server.address, timeout=30) as client:
            for host_id, agent in started.items():

                def pushed(host_id: str = host_id, agent: WindowsProcess = agent) -> bool:
                    assert agent.process.poll() is None, f"the agent exited:\n{agent.output}"
                    status = {h.host_id: h for h in client.hosts()}.get(host_id)
                    return status is not None and status.process_count > 0

                wait_for(pushed, timeout=AGENT_START_SECONDS, what=f"{host_id}'s first push")
        yield started
    finally:
        for agent in started.values():
            agent.stop()


@pytest.fixture(scope="module")
def client(server: FleetServer) -> Iterator[Client]:
    with Client(server.address, timeout=60) as c:
        yield c


def status(client: Client, host_id: str) -> HostStatus:
    (found,) = [h for h in client.hosts() if h.host_id == host_id]
    return found


def test_the_agent_runs_windows_cpython_and_its_ctypes_reader(
    agents: dict[str, WindowsProcess],
    winpython: Installation,
    wine: str,
    wine_env: dict[str, str],
    tmp_path: Path,
) -> None:
    assert agents[FAST].lines[0].startswith("vmatlas agent listening on 127.0.0.1:")
    # The same interpreter, asked what it is and which reader the agent builds.
    check = WindowsProcess(
        [wine, str(winpython.python), "-c", _WHICH_READER], winpython.env(wine_env), tmp_path
    )
    check.process.wait(timeout=AGENT_START_SECONDS)
    check.stop()
    assert check.lines[-1:] == ["win32 3.11 AMD64 CtypesApi"], check.output


_WHICH_READER = """
import platform, sys
from vmatlas.agents import default_reader
print(sys.platform, "%d.%d" % sys.version_info[:2], platform.machine(),
      type(default_reader().api).__name__)
"""


def test_the_host_registers_as_windows(
    agents: dict[str, WindowsProcess], client: Client, planter: Planter
) -> None:
    page, granularity, low, high = planter.system_info()
    host = status(client, FAST).host
    assert host.os is OperatingSystem.WINDOWS
    assert host.page_size_bytes == page == 4096
    assert host.allocation_granularity_bytes == granularity == 65536
    assert (host.user_address_min, host.user_address_max) == (low, high + 1)
    assert host.max_map_count == 0
    assert status(client, FAST).online


def vmatlas(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "vmatlas", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_ps_host_lists_the_planted_programs(
    agents: dict[str, WindowsProcess], server: FleetServer, planter: Planter
) -> None:
    doc = json.loads(vmatlas("ps", "--host", FAST, "--target", server.address, "--format", "json"))
    names = {p["process"]["pid"]: p["process"]["name"] for p in doc["processes"]}
    assert names[planter.windows_pid] == "planter.exe"
    # The agent sees its own interpreter too: it reads its own wineserver's processes.
    assert "python.exe" in names.values()
    table = vmatlas("ps", "--host", FAST, "--target", server.address, "--name", "planter")
    rows = [line.split() for line in table.splitlines()[1:] if line and line[0].isdigit()]
    # Every row is a planter (other tests' planters may run in the same prefix).
    assert planter.windows_pid in [int(row[0]) for row in rows]
    assert {row[1] for row in rows} == {"planter.exe"}


def test_a_fresh_snapshot_equals_the_programs_own_walk(
    agents: dict[str, WindowsProcess], client: Client, planter: Planter
) -> None:
    before = planter.walk()
    snapshot = client.snapshot(planter.windows_pid, host=FAST, include_free=True)
    assert planter.walk() == before, "the planter's layout moved while it was read"
    assert snapshot.host.os is OperatingSystem.WINDOWS
    assert snapshot.process.name == "planter.exe"
    assert snapshot.process.pointer_bits == 64
    assert_matches_walk(snapshot, before)
    states = set(snapshot.regions.state)
    assert states == {RegionState.FREE, RegionState.RESERVED, RegionState.COMMITTED}
    rows = list(snapshot.regions.rows())
    guard = [r for r in rows if r.start == planter.plants["guard"]]
    assert [r.protection_raw for r in guard] == [0x104]
    exe = [r for r in rows if r.allocation_base == planter.plants["exe"]]
    assert exe and {r.type for r in exe} == {RegionType.IMAGE}
    assert {r.path for r in exe} == {"C:\\vmatlas-test\\planter.exe"}
    view = [r for r in rows if r.start == planter.plants["view"]]
    assert [(r.type, r.path) for r in view] == [(RegionType.MAPPED, "C:\\vmatlas-test\\view.bin")]
    # Every file is named by a drive path, never an NT device path.
    assert all(
        r.path[1:3] == ":\\" for r in rows if r.type in (RegionType.IMAGE, RegionType.MAPPED)
    )


@pytest.mark.parametrize("large", [False, True], ids=["2GiB", "4GiB-large-address-aware"])
def test_a_32_bit_program_is_read_over_its_own_range(
    agents: dict[str, WindowsProcess],
    client: Client,
    wow64_planters: dict[bool, Planter],
    large: bool,
) -> None:
    """A 64-bit agent reading a 32-bit (WOW64) program, as on Windows: the snapshot and
    the pushed summary are over the program's own 2 GiB (4 GiB large-address-aware)."""
    planter = wow64_planters[large]
    _, _, low, high = planter.system_info()
    before = planter.walk()
    snapshot = client.snapshot(planter.windows_pid, host=FAST, include_free=True)
    assert planter.walk() == before, "the planter's layout moved while it was read"
    process = snapshot.process
    assert process.pointer_bits == 32
    assert (process.user_address_min, process.user_address_max) == (low, high + 1)
    assert high + 1 == (0xFFFF0000 if large else 0x7FFF0000)
    assert_matches_walk(snapshot, before)
    free = [own.size for own in before if own.state == MEM_FREE]
    assert (snapshot.summary.free_bytes, snapshot.summary.largest_free_bytes) == (
        sum(free),
        max(free),
    )

    def pushed_since(since: float) -> list[ProcessSummary]:
        history = client.history(host=FAST, pid=planter.windows_pid).summaries
        return [s for s in history if s.capture_time > since]

    def pushed_while_still() -> tuple[ProcessSummary, list[Region]] | None:
        """A push read between two equal walks of the program, and that walk. Compared
        with a read made earlier it would count whatever moved in between: once, with
        the program idle, 192 KiB of its free space went between a snapshot and the
        push after it."""
        walk = planter.walk()
        since = time.time()
        # A summary's capture time is taken when its read ends: the second push after
        # the walk is the first whose read surely began after it.
        pushed = wait_for(lambda: (p := pushed_since(since))[1:] and p, 60, "two pushes")
        latest = max(pushed, key=lambda s: s.capture_time)
        return (latest, walk) if planter.walk() == walk else None

    latest, walk = wait_for(pushed_while_still, 300, "a push while the layout held still")
    assert latest.process.pointer_bits == 32
    assert (latest.process.user_address_min, latest.process.user_address_max) == (low, high + 1)
    assert_counts_walk(latest.summary, walk)
    free = [own.size for own in walk if own.state == MEM_FREE]
    assert (latest.summary.free_bytes, latest.summary.largest_free_bytes) == (sum(free), max(free))


def test_summaries_are_pushed_on_the_interval(
    agents: dict[str, WindowsProcess], client: Client, planter: Planter
) -> None:
    def pushes() -> list[float]:
        history = client.history(host=FAST, pid=planter.windows_pid)
        return [s.capture_time for s in history.summaries]

    times = wait_for(lambda: [t for t in [pushes()] if len(t) >= 3], timeout=60, what="pushes")[0]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # One push an interval (a jump push aside: none is made here). A process's capture
    # time moves with how long the sweep takes to reach it, so one gap may be short by
    # that much; an extra push would leave a gap of a fraction of the interval, and
    # missed ones would stretch the mean.
    assert all(gap >= FAST_INTERVAL * 0.5 for gap in gaps), gaps
    assert FAST_INTERVAL * 0.9 <= (times[-1] - times[0]) / len(gaps) <= FAST_INTERVAL * 3, gaps


def test_a_jump_is_pushed_at_once(
    agents: dict[str, WindowsProcess], client: Client, planter: Planter
) -> None:
    def history(pid: int) -> list[int]:
        return [s.summary.map_count for s in client.history(host=SLOW, pid=pid).summaries]

    other = next(
        p.item.process.pid
        for p in client.fleet_processes(host=SLOW)
        if p.item.process.pid != planter.windows_pid
    )
    before, others_before = history(planter.windows_pid), history(other)
    assert before and others_before
    planter.allocate_small(JUMP * 3)
    after = wait_for(
        lambda: history(planter.windows_pid)[len(before) :], timeout=90, what="a pushed jump"
    )
    assert after[0] >= before[-1] + JUMP * 3
    # A partial push: the processes that did not jump are not in it (an interval push,
    # which would hold them all, is minutes away).
    assert history(other) == others_before
