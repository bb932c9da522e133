"""Driving the planter program (planter.c) from the tests."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from vmatlas.agents.windows.win32 import MEM_COMMIT, MEM_FREE, MEM_RESERVE
from vmatlas.model import RegionState, RegionType, Snapshot, Summary

_STATES = {
    MEM_FREE: RegionState.FREE,
    MEM_RESERVE: RegionState.RESERVED,
    MEM_COMMIT: RegionState.COMMITTED,
}
_TYPES = {
    0: RegionType.UNSPECIFIED,
    0x20000: RegionType.PRIVATE,
    0x40000: RegionType.MAPPED,
    0x1000000: RegionType.IMAGE,
}


@dataclass
class Region:
    """One record of the planter's own walk, as it printed it."""

    base: int
    allocation_base: int
    allocation_protect: int
    size: int
    state: int
    protect: int
    type: int
    name: str


@dataclass
class Planter:
    process: subprocess.Popen[str]
    windows_pid: int
    plants: dict[str, int] = field(default_factory=dict)

    def walk(self) -> list[Region]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("walk\n")
        self.process.stdin.flush()
        regions = []
        for line in self.process.stdout:
            if line.strip() == "end":
                return regions
            _, *numbers, name = line.rstrip("\n").split(" ", 8)
            regions.append(Region(*(int(n, 16) for n in numbers), name=name))
        raise AssertionError("the planter stopped mid-walk")

    def system_info(self) -> tuple[int, int, int, int]:
        """GetSystemInfo as the program sees it: (page size, allocation granularity,
        minimum and maximum application address)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("info\n")
        self.process.stdin.flush()
        word, *numbers = self.process.stdout.readline().split()
        assert word == "info" and len(numbers) == 4, (word, numbers)
        page, granularity, low, high = (int(n, 16) for n in numbers)
        return page, granularity, low, high

    def allocate_small(self, count: int) -> None:
        """``count`` more separate 4 KiB allocations."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"small {count}\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        assert answer == "ok", answer

    def carve(self) -> int:
        """Reserves every other 16 MiB of each free region (a 32-bit program only);
        returns how many reservations it made."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("carve\n")
        self.process.stdin.flush()
        word, count = self.process.stdout.readline().split()
        assert word == "ok", (word, count)
        return int(count)

    def exit(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("exit\n")
            self.process.stdin.flush()
            self.process.wait(timeout=30)


def start_planter(wine: str, exe: Path, env: dict[str, str], view_file: Path) -> Planter:
    process = subprocess.Popen(
        [wine, str(exe), str(view_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    plants = {}
    for line in process.stdout:
        words = line.split()
        if words[0] == "plant":
            plants[words[1]] = int(words[2], 16)
        elif words[0] == "pid":
            return Planter(process, int(words[1]), plants)
        else:
            raise AssertionError(f"planter: {line}")
    raise AssertionError(f"the planter exited with status {process.wait()}")


def assert_matches_walk(snapshot: Snapshot, walk: list[Region]) -> None:
    """``snapshot`` (taken with free regions) holds exactly the regions of the program's
    own VirtualQuery walk, field for field, and its summary counts them."""
    high = snapshot.process.user_address_max
    rows = list(snapshot.regions.rows())
    assert len(rows) == len(walk)
    for row, own in zip(rows, walk, strict=True):
        free = own.state == MEM_FREE
        assert row.start == own.base
        assert row.end == min(own.base + own.size, high)
        assert row.state == _STATES[own.state]
        assert row.type == (RegionType.UNSPECIFIED if free else _TYPES[own.type])
        assert row.protection_raw == own.protect
        assert row.allocation_base == own.allocation_base
        assert row.allocation_protection_raw == own.allocation_protect
        name = "" if own.name == "-" else own.name.removeprefix("\\??\\")
        assert row.path == name
    assert_counts_walk(snapshot.summary, walk)


def assert_counts_walk(summary: Summary, walk: list[Region]) -> None:
    """``summary`` counts the regions of the program's own walk: the figures a summary
    pushed without its regions can be checked by."""
    assert summary.region_count == sum(own.state != MEM_FREE for own in walk)
    assert summary.allocation_count == len(
        {own.allocation_base for own in walk if own.state != MEM_FREE}
    )
    assert summary.committed_bytes == sum(own.size for own in walk if own.state == MEM_COMMIT)
    assert summary.reserved_bytes == sum(own.size for own in walk if own.state == MEM_RESERVE)
