"""Driving the planter program (planter.c) from the tests."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path


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

    def allocate_small(self, count: int) -> None:
        """``count`` more separate 4 KiB allocations."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"small {count}\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        assert answer == "ok", answer

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
