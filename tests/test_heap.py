"""A resident process's heap (vmatlas.heap): freed columns kept for the next capture,
given back when quiet; real glibc in child processes, a real agent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Planter, wait_for
from vmatlas import heap
from vmatlas.grpcutil import StopSignals

glibc = pytest.mark.skipif(
    not (hasattr(os, "confstr") and os.confstr("CS_GNU_LIBC_VERSION")), reason="glibc only"
)

# In a child: allocate and free ~6 MiB of capture-sized blocks (the columns of a large
# table) `rounds` times; print the minor faults and RSS of the last round, and the RSS
# after give_back.
_CHILD = """
import json, resource, sys
from vmatlas import heap
applied = heap.keep_freed() if sys.argv[1] == "keep" else False
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
def capture():
    blocks = [bytearray(524_288) for _ in range(12)]
    for b in blocks:
        b[::4096] = b"x" * len(range(0, len(b), 4096))
    return blocks
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = capture()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del blocks
kept = rss()
heap.give_back()
print(json.dumps({"applied": applied, "faults": faults, "kept": kept, "after": rss()}))
"""


def _child(mode: str, env: dict[str, str] | None = None) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


@glibc
def test_kept_blocks_are_reused_without_faults_and_given_back() -> None:
    plain, kept = _child("plain"), _child("keep")
    assert kept["applied"] and not plain["applied"]
    # 12 blocks of 128 pages: most pages fault again without the policy.
    assert plain["faults"] >= 12 * 128 // 2, plain
    assert kept["faults"] < 12 * 128 // 10, kept
    # What it kept goes back to the kernel when asked.
    assert kept["kept"] - kept["after"] >= 4 * 1024 * 1024, kept


@glibc
@pytest.mark.parametrize(
    "env",
    [
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
    ],
)
def test_the_operators_malloc_settings_are_left_alone(env: dict[str, str]) -> None:
    result = _child("keep", env)
    assert not result["applied"]
    assert result["faults"] >= 12 * 128 // 2, result


class _Clocks:
    def __init__(self) -> None:
        self.now = 0.0
        self.cpu = 0.0
        self.released = 0

    def release(self) -> None:
        self.released += 1


def _idle(clocks: _Clocks) -> heap.IdleRelease:
    return heap.IdleRelease(
        idle_seconds=5.0,
        quiet_share=0.02,
        work_seconds=0.05,
        cpu=lambda: clocks.cpu,
        clock=lambda: clocks.now,
        release=clocks.release,
    )


def _advance(idle: heap.IdleRelease, clocks: _Clocks, seconds: float, cpu: float) -> None:
    """``seconds`` pass in half-second ticks, ``cpu`` of work spread over them."""
    steps = int(seconds / 0.5)
    for _ in range(steps):
        clocks.now += 0.5
        clocks.cpu += cpu / steps
        idle.tick()


def test_idle_release_waits_for_work_then_quiet() -> None:
    clocks = _Clocks()
    idle = _idle(clocks)
    _advance(idle, clocks, 0.5, cpu=0.0)
    assert clocks.released == 1  # start-up is over: what it freed goes back
    _advance(idle, clocks, 30, cpu=0.0)
    assert clocks.released == 1  # nothing done since: nothing to give back
    _advance(idle, clocks, 5, cpu=0.5)  # a burst of snapshots
    assert clocks.released == 1
    _advance(idle, clocks, 5, cpu=0.01)  # quiet for a window
    assert clocks.released == 2
    _advance(idle, clocks, 30, cpu=0.0)
    assert clocks.released == 2  # once per stretch of work


def test_idle_release_keeps_memory_while_busy() -> None:
    clocks = _Clocks()
    idle = _idle(clocks)
    idle.tick()
    _advance(idle, clocks, 60, cpu=60 * 0.1)  # a tenth of a core, steadily
    assert clocks.released == 1
    _advance(idle, clocks, 10, cpu=0.0)
    assert clocks.released == 2


def test_stop_signals_run_the_tick_while_waiting() -> None:
    ticks = threading.Event()
    calls: list[int] = []

    def every() -> None:
        calls.append(1)
        if len(calls) >= 2:
            ticks.set()

    signals = StopSignals(every=every)
    try:
        waiter = threading.Thread(target=signals.wait)
        waiter.start()
        assert ticks.wait(10)
        signals.event.set()
        waiter.join(10)
        assert not waiter.is_alive()
    finally:
        signals.restore()


@pytest.fixture
def big_planter(planter: Planter) -> Planter:
    planter.grow(20_000)
    return planter


def _agent(env: dict[str, str]) -> Iterator[tuple[int, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmatlas", "agent", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        assert proc.stdout is not None
        match = re.search(r"listening on (\S+)", proc.stdout.readline())
        assert match, "agent did not start"
        yield proc.pid, match.group(1)
    finally:
        proc.terminate()
        proc.wait(20)


def _faults(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])  # minflt


def _snapshot_faults(env: dict[str, str], pid: int) -> int:
    """Minor faults the agent takes for its third snapshot of ``pid``."""
    from vmatlas.client import Client

    for agent_pid, target in _agent(env):
        with Client(target) as client:
            wait_for(lambda c=client: c.host(), what="the agent")
            for _ in range(2):
                client.snapshot(pid)
            before = _faults(agent_pid)
            assert len(client.snapshot(pid).regions) > 20_000
            return _faults(agent_pid) - before
    raise AssertionError("unreachable")


@glibc
def test_the_agent_keeps_its_columns_for_the_next_snapshot(big_planter: Planter) -> None:
    # The same agent with the operator's own trim threshold (glibc's default value),
    # which vmatlas leaves alone: every snapshot faults its columns in again.
    default = _snapshot_faults(
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}, big_planter.pid
    )
    kept = _snapshot_faults({}, big_planter.pid)
    assert default >= 200, default
    assert kept < default / 4, (kept, default)
