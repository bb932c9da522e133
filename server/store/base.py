"""The one storage interface of the server: the :class:`Store` protocol, the records it
takes and gives, and its errors.

RPC code talks to a :class:`Store` and nothing else: no SQL dialect, no driver call.
Every backend (:mod:`.sqlite`, :mod:`.postgres`) keeps the same contract, which
``tests/store/`` asserts once against each. Every method is safe to call from many
threads and returns only after its writes are committed.

Errors a caller must tell apart are typed (:mod:`vmatlas.errors`):

* :class:`~vmatlas.errors.NotFound`, :class:`~vmatlas.errors.InvalidArgument`: the
  request names nothing or is malformed;
* :class:`~vmatlas.errors.StoreClosed` (a ``FailedPrecondition``): the store was closed;
  give up;
* :class:`~vmatlas.errors.StoreUnavailable` (an ``Unavailable``): the database cannot
  be reached or was busy; the same call may succeed later;
* :class:`~vmatlas.errors.StoreConflict` (an ``Aborted``): a concurrent writer holds the
  lease or ownership record asked for; re-read, do not retry blindly.

A snapshot's region table is kept as the opaque serialized bytes the wire module made
(:class:`SnapshotRecord`): the server never decodes it, and identical tables are kept
once, keyed by their content hash. Summaries are kept as plain columns so that audits
can query them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from vmatlas import errors
from vmatlas.audit import AuditRow
from vmatlas.fleet import FleetProcess, History, HostStatus
from vmatlas.model import Host, ProcessOrder, ProcessSummary, Snapshot


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """A snapshot as the store takes and gives it: ``header`` is the snapshot without
    regions (its region table is empty), ``regions`` the serialized region table, and
    ``regions_sha256`` the SHA-256 digest of ``regions`` the store keeps it under (set
    on what the store gives; not read on what it takes)."""

    header: Snapshot
    regions: bytes
    regions_sha256: bytes = field(default=b"", compare=False)


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
    # At most this many of each host, its first in ``order`` (0: all): with 1, each
    # host's worst process in one read.
    per_host_limit: int = 0


@dataclass(frozen=True, slots=True)
class HostOwnership:
    """Which replica holds a host's agent stream: the record a replica claims when the
    agent connects and renews by heartbeat. ``epoch`` grows by one with every claim of
    the host, so the holder of a smaller epoch knows it was replaced. Times are seconds
    since the epoch on the replicas' clocks (keep them in sync: NTP)."""

    host_id: str
    replica_id: str
    address: str  # where other replicas reach the holder (HOST:PORT)
    instance_id: str  # the agent instance whose stream it holds
    epoch: int
    expires_time: float

    def live(self, now: float) -> bool:
        return bool(self.replica_id) and self.expires_time > now


@dataclass(frozen=True, slots=True)
class JobLease:
    """The right to run one singleton job (``retention``, ``offline``, ``partitions``)
    until ``expires_time``: at most one holder at a time; ``epoch`` grows by one each
    time the lease changes hands."""

    job: str
    holder: str
    epoch: int
    expires_time: float


class Store(Protocol):
    @property
    def prune_granularity_seconds(self) -> float:
        """Retention works in steps this long (0: exact). See :meth:`prune`."""

    def put_host(self, host: Host, now: float) -> None:
        """Record (or update) a host's facts and mark it online, last seen ``now``."""

    def mark_offline(self, host_id: str) -> None:
        """The host's agent is gone; its history stays."""

    def mark_stale_offline(self, seen_before: float, now: float) -> list[str]:
        """Mark offline every host shown online whose agent was last heard from
        before ``seen_before`` and whose ownership record is not live at ``now``
        (its replica went away without saying so); return their ids, sorted. A host
        heard from, or claimed, meanwhile stays online."""

    def put_summaries(
        self,
        host_id: str,
        items: list[ProcessSummary],
        *,
        complete: bool = True,
        origin: PushOrigin | None = None,
        access_denied_count: int = 0,
    ) -> bool:
        """Append summaries to history; committed when this returns (so a push may be
        acknowledged then). ``complete`` means ``items`` is every current process of
        the host (the rest have exited), and ``access_denied_count`` how many more
        exist but could not be read (the host's count from then on); otherwise they
        update the current set. A process listed twice counts once, the later entry.
        With ``origin``, a push whose sequence is not above the last one stored for the
        same agent instance changes nothing but the drop count, and False is returned;
        the sequence is recorded in the same transaction as the summaries.
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

    def trend_series(
        self, since: float, until: float, min_map_count: int
    ) -> dict[tuple[str, int, float], list[tuple[float, int]]]:
        """The :meth:`map_count_series` of just the current processes whose latest
        summary has at least ``min_map_count`` maps and which have a point in the
        range whose map count differs from that summary's: all an audit's trends and
        peaks need (a series that never leaves its latest value has neither a trend
        nor a peak above it), without reading every process's points."""

    def hosts(self, *, now: float | None = None) -> list[HostStatus]:
        """Every known host, sorted by host id, each with the replica whose ownership
        record is live at ``now`` (:meth:`HostOwnership.live`; the clock when None),
        read with it."""

    def host(self, host_id: str, *, now: float | None = None) -> HostStatus:
        """One host, as :meth:`hosts` gives it; NotFound when unknown."""

    def processes(self, where: ProcessFilter) -> list[FleetProcess]:
        """Latest summaries of current processes, filtered and sorted. NotFound for an
        unknown ``where.host_id``, InvalidArgument for an unknown order or a negative
        limit."""

    def latest_summaries_all_hosts(self) -> list[FleetProcess]:
        """The latest summary of every current process of every host, sorted by host
        id and pid."""

    def audit_processes(self) -> dict[str, list[AuditRow]]:
        """What :meth:`latest_summaries_all_hosts` holds, by host id (sorted), each
        host's in pid order, as the rows an audit reads
        (:data:`vmatlas.audit.AUDIT_ROW_FIELDS`): read as columns, not decoded from
        the stored facts."""

    def prune(self, older_than: float) -> int:
        """Delete history (summaries, snapshots, unreferenced region tables) captured
        before ``older_than``; hosts stay, and a current process whose latest summary
        went leaves the current set. Works in whole steps of :attr:`prune_granularity_seconds`
        (a backend that drops time partitions): nothing captured at or after
        ``older_than`` goes, and everything captured before ``older_than`` minus one
        step does. Returns how many summaries and snapshots went."""

    def prepare_ahead(self, now: float, ahead_seconds: float) -> None:
        """Make now what pushes captured from ``now`` to ``now + ahead_seconds`` will
        need (PostgreSQL: their day partitions of summaries), so that no push waits
        for it; nothing on a backend that needs nothing."""

    def check(self) -> list[str]:
        """Verify the store end to end: the database's own integrity, references
        between tables, and every stored snapshot's region table present and
        decodable. Returns the problems found; empty means consistent."""

    def close(self) -> None:
        """Release the store; later calls raise StoreClosed."""

    # -- ownership of hosts and singleton jobs, for several replicas on one store ------

    def claim_host(
        self,
        host_id: str,
        *,
        replica_id: str,
        address: str,
        instance_id: str,
        now: float,
        ttl_seconds: float,
    ) -> HostOwnership:
        """Record that ``replica_id`` (reachable at ``address``) holds the stream of
        agent ``instance_id`` for ``host_id`` until ``now + ttl_seconds``, with an epoch
        one above any the host had: a reconnect of the same agent instance through any
        replica takes the host over, and the replica left with the smaller epoch must
        close its stream. StoreConflict, naming the holder, when a live record holds
        the host for another agent instance (two agents with one host id)."""

    def renew_hosts(
        self, held: Sequence[HostOwnership], *, now: float, ttl_seconds: float
    ) -> list[HostOwnership | errors.StoreConflict]:
        """Extend each of ``held`` to ``now + ttl_seconds`` in one transaction (what a
        replica does each heartbeat interval for the agents it holds), each host renewed
        also marked online and last seen at ``now``. For each of ``held``, in order, the
        renewed record, or a StoreConflict when the host's record is no longer that one
        (another claim bumped the epoch, or it was released): the caller has lost the
        host and must close its stream (fencing). An expired record that nobody claimed
        since is renewed."""

    def release_host(self, held: HostOwnership) -> bool:
        """Give the host up (the stream ended) and mark it offline, in one transaction,
        if ``held`` is still its record, and return True; otherwise change nothing (a
        newer claim holds the host, and it stays online) and return False. The epoch
        stays, so later claims still go above it."""

    def host_owner(self, host_id: str) -> HostOwnership | None:
        """The host's latest ownership record, live or not, as :meth:`host_owners`
        gives it; None when it never had one. NotFound for an unknown host. One read
        of one host: what forwarding a fresh snapshot asks first."""

    def host_owners(self) -> dict[str, HostOwnership]:
        """Every host's latest ownership record, live or expired (see
        :meth:`HostOwnership.live`), released ones included with an empty replica."""

    def acquire_job(
        self, job: str, *, holder: str, now: float, ttl_seconds: float
    ) -> JobLease | None:
        """Take or extend the lease on singleton job ``job`` until ``now +
        ttl_seconds``: when nobody holds it, when its holder's lease expired (a new
        epoch), or when ``holder`` holds it already (same epoch). None when another
        holder's lease is live: do not run the job."""

    def renew_job(self, lease: JobLease, *, now: float, ttl_seconds: float) -> JobLease:
        """Extend ``lease``; StoreConflict when the job changed hands (stop running it)."""

    def release_job(self, lease: JobLease) -> None:
        """Give the job up if ``lease`` still holds it, so another holder need not wait
        for the expiry."""


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
