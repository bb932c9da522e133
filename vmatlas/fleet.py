"""Plain data for the fleet: what the server knows about hosts and their processes.

Like :mod:`vmatlas.model`, these are what the server, the store and the client work
on; :mod:`vmatlas.wire` alone converts them to and from ``vmatlas.v1``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmatlas.model import Host, Process, ProcessSummary, Summary


@dataclass(frozen=True, slots=True)
class HostStatus:
    host: Host
    online: bool
    # Seconds since the epoch.
    first_seen_time: float
    last_seen_time: float
    process_count: int = 0
    # Summary pushes the host's agents dropped from a full buffer (gaps in history).
    dropped_push_count: int = 0
    # Processes its agent could not read (access denied) at its latest complete push.
    access_denied_count: int = 0
    # The server (replica id: the HOST:PORT it advertises) holding its agent's stream
    # under a live lease; empty when none does.
    replica_id: str = ""

    @property
    def host_id(self) -> str:
        return self.host.host_id


@dataclass(frozen=True, slots=True)
class FleetProcess:
    """One process summary and the host it runs on."""

    host_id: str
    item: ProcessSummary


@dataclass(frozen=True, slots=True)
class StoredSnapshotInfo:
    """A stored snapshot's id and what it shows, without its regions."""

    snapshot_id: str
    host_id: str
    process: Process
    capture_time: float
    summary: Summary


@dataclass(frozen=True, slots=True)
class History:
    """One process's stored summaries over a time range, oldest first, and the
    snapshots stored of it in that range."""

    summaries: list[ProcessSummary]
    snapshots: list[StoredSnapshotInfo]
