"""The reader protocol every platform reader implements (after psutil's per-platform
modules behind one API): plain model data out, vmatlas.errors raised."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from vmatlas import errors
from vmatlas.model import Host, OperatingSystem, Process, ProcessSummary, Snapshot


class Reader(Protocol):
    os: OperatingSystem

    def host(self) -> Host:
        """This host's facts."""

    def pids(self) -> list[int]:
        """Every pid, sorted."""

    def process(self, pid: int) -> Process:
        """Identity of one process; NoSuchProcess when it does not exist."""

    def snapshot(
        self, pid: int, *, include_free: bool = False, include_residency: bool = False
    ) -> Snapshot:
        """One process's address space; NoSuchProcess or AccessDenied."""

    def process_summary(self, pid: int, host: Host | None = None) -> ProcessSummary:
        """One process's summary without its regions."""

    def process_summaries(self) -> Iterator[ProcessSummary | errors.Error]:
        """Every process's summary, or the error that stopped one being read."""


def sweep(reader: Reader) -> Iterator[ProcessSummary | errors.Error]:
    """Every process's summary, or the error that stopped one being read: what a
    reader's ``process_summaries`` yields (the host is read once for the sweep)."""
    host = reader.host()
    for pid in reader.pids():
        try:
            yield reader.process_summary(pid, host)
        except errors.Error as exc:
            yield exc
