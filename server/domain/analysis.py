"""Diffs of stored (or given) snapshots and the fleet audit, computed by the shared
:mod:`vmatlas.diff` and :mod:`vmatlas.audit` over what the store holds.

Threads: :class:`Analysis`'s methods are plain blocking calls (store reads and CPU
work), safe from any thread at once; never call them on an event loop (from asyncio,
``await asyncio.to_thread(...)``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from vmatlas import errors
from vmatlas.audit import AuditReport, audit_rows
from vmatlas.diff import Diff, DiffMode, diff
from vmatlas.model import Host, Snapshot
from vmatlas.policy import DEFAULT_POLICY, Policy
from vmatlas.server.domain.fleet import HostSnapshot
from vmatlas.server.store import Store

# A process's history is read for its trend only when it holds at least this many maps
# (a process with a handful cannot be near any limit soon enough to matter).
TREND_MIN_MAP_COUNT = 64


@dataclass(frozen=True, slots=True)
class StoredSnapshotId:
    """A stored snapshot, by its id."""

    snapshot_id: str


@dataclass(frozen=True, slots=True)
class LatestSnapshot:
    """The newest stored snapshot of a process."""

    host_id: str
    pid: int


# One side of a diff: a snapshot in hand, or one the store holds.
SnapshotSelector = Snapshot | StoredSnapshotId | LatestSnapshot


@dataclass(frozen=True, slots=True)
class DiffResult:
    """A diff and the stored snapshot ids of its two sides (``""`` for one given)."""

    diff: Diff
    before_id: str
    after_id: str


class Analysis:
    """Diff and audit over one store (see the module docstring for threads)."""

    def __init__(self, store: Store):
        self.store = store

    def resolve(self, selector: SnapshotSelector, side: str = "snapshot") -> tuple[Snapshot, str]:
        """The snapshot a selector names and its stored id (``""`` for one given).
        NotFound when the store holds no such snapshot; ``side`` names it in errors."""
        if isinstance(selector, Snapshot):
            return selector, ""
        if isinstance(selector, StoredSnapshotId):
            host_id, record = self.store.get_snapshot(selector.snapshot_id)
            stored = HostSnapshot.from_record(selector.snapshot_id, host_id, record)
        elif isinstance(selector, LatestSnapshot):
            if not selector.pid:
                raise errors.InvalidArgument(f"{side}: pid must be given")
            snapshot_id, record = self.store.latest_snapshot(selector.host_id, selector.pid)
            stored = HostSnapshot.from_record(snapshot_id, selector.host_id, record)
        else:
            raise errors.InvalidArgument(f"{side}: no snapshot selected")
        return stored.snapshot(), stored.snapshot_id

    def diff(
        self,
        before: SnapshotSelector,
        after: SnapshotSelector,
        mode: DiffMode = DiffMode.UNSPECIFIED,
    ) -> DiffResult:
        """What changed from ``before`` to ``after`` (``mode`` UNSPECIFIED: by address
        for two snapshots of one process, by identity otherwise)."""
        old, before_id = self.resolve(before, "before")
        new, after_id = self.resolve(after, "after")
        return DiffResult(diff(old, new, mode), before_id, after_id)

    def audit(self, policy: Policy = DEFAULT_POLICY, *, now: float | None = None) -> AuditReport:
        """The findings over every host's latest data and its history under ``policy``."""
        now = time.time() if now is None else now
        # The reads are independent: they run at once, the trend's and the hosts' in
        # threads of their own (a database serves each on a connection of its own, and
        # a driver waiting on one lets the others' rows be made meanwhile).
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="audit-read") as reads:
            # The trend points in the window in one read, then each process's own (a
            # reused pid is another process: its start time tells them apart). Only the
            # series that leave their latest value come: the rest have no trend, and no
            # peak above that value.
            trend = reads.submit(
                self.store.trend_series,
                now - policy.trend.window_seconds,
                now,
                TREND_MIN_MAP_COUNT,
            )
            statuses = reads.submit(self.store.hosts)
            processes = self.store.audit_processes()
            series = trend.result()
            hosts: list[Host] = [status.host for status in statuses.result()]
        # Keyed as the audit looks it up (the store gives current processes only).
        history = {(host_id, pid): points for (host_id, pid, _), points in series.items()}
        return audit_rows(hosts, processes, history, policy=policy, now=now)
