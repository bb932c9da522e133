"""Invariants over every process on this machine (psutil's test_contracts idea)."""

from __future__ import annotations

import itertools

import pytest

from vmatlas import errors
from vmatlas.agents.linux import LinuxReader
from vmatlas.model import RegionState

# Every test here runs over both capture paths: the C loops and the pure-Python ones.
pytestmark = pytest.mark.usefixtures("capture_path")


def _maps_lines(pid: int) -> int:
    with open(f"/proc/{pid}/maps", "rb") as f:
        return f.read().count(b"\n")


def test_every_region_of_every_process() -> None:
    reader = LinuxReader()
    checked = 0
    for pid in reader.pids():
        for _attempt in range(5):
            try:
                snap = reader.snapshot(pid, include_free=True)
                lines = _maps_lines(pid)
            except (errors.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                break
            except errors.AccessDenied:
                break
            mapped = [r for r in snap.regions if r.state is not RegionState.FREE]
            if len(mapped) != lines:  # the process changed between the two reads
                continue
            rows = list(snap.regions)
            assert all(r.end > r.start for r in rows), pid
            assert all(a.end <= b.start for a, b in itertools.pairwise(rows)), pid
            assert snap.summary.region_count == lines, pid
            assert snap.summary.map_count <= snap.summary.region_count, pid
            assert 0.0 <= snap.summary.headroom_fraction <= 1.0, pid
            assert snap.summary.committed_bytes + snap.summary.reserved_bytes == sum(
                r.size for r in mapped
            ), pid
            assert snap.summary.free_bytes == sum(
                r.size for r in rows if r.state is RegionState.FREE
            ), pid
            if snap.process.address_space_empty:
                assert lines == 0, pid
            checked += 1
            break
    assert checked >= 5
