"""The one storage interface of the server.

RPC code talks to a :class:`Store` and nothing else: no SQL dialect, no driver call.
:mod:`vmatlas.server.sqlite_store` is the embedded implementation; a PostgreSQL one
implements the same protocol. Every method is safe to call from many threads (the
gRPC thread pool) and returns only after its writes are durable.

A snapshot's region table is kept as the opaque serialized bytes the wire module made
(:class:`SnapshotRecord`): the server never decodes it, and identical tables are kept
once, keyed by their content hash. Summaries are kept as plain columns so that audits
can query them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from vmatlas import errors
from vmatlas.fleet import FleetProcess, History, HostStatus
from vmatlas.model import Host, ProcessOrder, ProcessSummary, Snapshot


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """A snapshot as the store takes and gives it: ``header`` is the snapshot without
    regions (its region table is empty), ``regions`` the serialized region table."""

    header: Snapshot
    regions: bytes


@dataclass(frozen=True, slots=True)
class PushOrigin:
    """Which push of which agent instance a batch of summaries is: the key that makes
    a replayed push a no-op. ``dropped_push_count`` is the instance's running total
    of pushes it dropped from its full buffer."""

    instance_id: str
    sequence: int
    dropped_push_count: int = 0


@dataclass(frozen=True, slots=True)
class ProcessFilter:
    host_id: str = ""
    name_contains: str = ""
    order: ProcessOrder = ProcessOrder.REGIONS
    limit: int = 0


class Store(Protocol):
    def put_host(self, host: Host, now: float) -> None:
        """Record (or update) a host's facts and mark it online, last seen ``now``."""

    def mark_online(self, host_id: str, now: float) -> None:
        """The host's agent is connected and was heard from at ``now``."""

    def mark_offline(self, host_id: str) -> None:
        """The host's agent is gone; its history stays."""

    def put_summaries(
        self,
        host_id: str,
        items: list[ProcessSummary],
        *,
        complete: bool = True,
        origin: PushOrigin | None = None,
        access_denied_count: int = 0,
    ) -> bool:
        """Append summaries to history. ``complete`` means ``items`` is every current
        process of the host (the rest have exited), and ``access_denied_count`` how
        many more exist but could not be read (the host's count from then on);
        otherwise they update the current set. With ``origin``, a push whose
        sequence is not above the last one stored for the same agent instance changes
        nothing but the drop count, and False is returned; the sequence is recorded
        in the same transaction as the summaries.
        NotFound for an unknown host."""

    def put_snapshot(self, host_id: str, record: SnapshotRecord) -> str:
        """Store a snapshot (committed before this returns) and return its id.
        NotFound for an unknown host."""

    def get_snapshot(self, snapshot_id: str) -> tuple[str, SnapshotRecord]:
        """``(host_id, record)``; NotFound when no snapshot has that id."""

    def latest_snapshot(self, host_id: str, pid: int) -> tuple[str, SnapshotRecord]:
        """``(snapshot_id, record)`` of the newest stored snapshot of the pid;
        NotFound when there is none."""

    def history(self, host_id: str, pid: int, since: float, until: float) -> History:
        """Summaries and snapshot infos of the pid with ``since <= capture_time <=
        until``, oldest first. NotFound for an unknown host."""

    def map_count_series(
        self, since: float, until: float
    ) -> dict[tuple[str, int, float], list[tuple[float, int]]]:
        """Every process's ``(capture_time, map_count)`` points with ``since <=
        capture_time <= until``, from summaries and snapshots alike, oldest first,
        keyed by ``(host_id, pid, process start time)`` (so a reused pid is another
        key): what an audit's trends are fitted to, in one read."""

    def hosts(self) -> list[HostStatus]:
        """Every known host, sorted by host id."""

    def host(self, host_id: str) -> HostStatus:
        """One host; NotFound when unknown."""

    def processes(self, where: ProcessFilter) -> list[FleetProcess]:
        """Latest summaries of current processes, filtered and sorted."""

    def latest_summaries_all_hosts(self) -> list[FleetProcess]:
        """The latest summary of every current process of every host (for audits)."""

    def prune(self, older_than: float) -> int:
        """Delete history (summaries, snapshots, unreferenced region tables) captured
        before ``older_than``; hosts stay. Returns how many summaries and snapshots
        went."""

    def check(self) -> list[str]:
        """Verify the store end to end: the database's own integrity, references
        between tables, and every stored snapshot's region table present and
        decodable. Returns the problems found; empty means consistent."""

    def close(self) -> None:
        """Release the store; later calls fail."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"``, ``"2w"`` in seconds; ``"0"`` or
    ``"forever"`` is 0 (keep everything). InvalidArgument otherwise."""
    if text.strip() in ("0", "forever", "never"):
        return 0.0
    match = _DURATION.match(text)
    if not match:
        raise errors.InvalidArgument(
            f"bad duration {text!r}: use a number and a unit, for example 30d, 12h, 90m"
        )
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
