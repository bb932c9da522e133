"""The fleet queries: hosts, processes, history, stored and fresh snapshots.

:class:`FleetQueries` is what every front end of the server calls (the gRPC
``FleetService``, an HTTP API, ``vmatlas up``'s view). It returns model objects and
raises :mod:`vmatlas.errors`.

Threads: every method but :meth:`FleetQueries.fresh_snapshot_async` is a plain
blocking call, safe from any thread at once (the store serializes what it must).
Call them from a worker thread, never on an event loop: from asyncio, ``await
asyncio.to_thread(queries.hosts)``. :meth:`FleetQueries.fresh_snapshot` hands the
work to the hub's event loop and waits for it; on that loop itself (the gRPC
servicers), ``await queries.fresh_snapshot_async(...)`` instead.

A fresh snapshot is decoded and checked once, by :func:`accept_snapshot`, as it
arrives from the agent: the resulting :class:`HostSnapshot` is what is stored and
what is answered. It keeps the region table also in the serialized form it was
decoded from, so a front end that sends snapshots on as protobuf splices those bytes
instead of encoding the table again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from vmatlas import errors, wire
from vmatlas.fleet import FleetProcess, History, HostStatus
from vmatlas.model import Host, ProcessOrder, RegionTable, Snapshot
from vmatlas.server.domain.hub import Hub, SnapshotAnswer, SnapshotRequest
from vmatlas.server.store import ProcessFilter, SnapshotRecord, Store
from vmatlas.validate import validate_snapshot_parts

log = logging.getLogger(__name__)

DEFAULT_AGENT_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    """A stored snapshot: its id, its host, and the snapshot itself.

    ``record`` is the snapshot as the store keeps it (a header without regions and
    the serialized region table). ``decoded`` is the whole snapshot when it is in hand
    already (a fresh one was decoded on arrival); :meth:`snapshot` decodes a stored
    one on demand."""

    snapshot_id: str
    host_id: str
    record: SnapshotRecord
    decoded: Snapshot | None = field(default=None, compare=False, repr=False)

    def snapshot(self) -> Snapshot:
        """The whole snapshot, regions included."""
        if self.decoded is not None:
            return self.decoded
        return replace(self.record.header, regions=wire.table_from_bytes(self.record.regions))

    def serialized(self) -> bytes:
        """The whole snapshot as one serialized ``vmatlas.v1.Snapshot``: the header
        encoded, the region table spliced in as stored (not encoded again)."""
        return wire.join_snapshot(
            wire.snapshot_header_bytes(self.record.header), self.record.regions
        )


def accept_snapshot(answer: SnapshotAnswer, host_id: str, registered: Host) -> Snapshot:
    """The one decode and check of a snapshot an agent sent: its error raised as
    itself, a snapshot that does not decode or check against the host it registered
    as (``registered``) as Unavailable (the agent is at fault, not the caller)."""
    if answer.error is not None:
        raise answer.error
    try:
        return validate_snapshot_parts(answer.header, answer.regions, registered)
    except errors.InvalidArgument as exc:
        raise errors.Unavailable(f"host {host_id!r} sent a bad snapshot: {exc}") from None


class FleetQueries:
    """The fleet as its front ends see it (see the module docstring for threads)."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        *,
        agent_timeout_seconds: float = DEFAULT_AGENT_TIMEOUT_SECONDS,
    ):
        self.store = store
        self.hub = hub
        self.agent_timeout_seconds = agent_timeout_seconds

    def hosts(self) -> list[HostStatus]:
        """Every known host, online or not, sorted by host id, each with the replica
        that holds its agent's stream (if one does)."""
        holders = self._holders()
        return [replace(s, replica_id=holders.get(s.host_id, "")) for s in self.store.hosts()]

    def host(self, host_id: str) -> HostStatus:
        """One host, with the replica that holds its agent's stream; NotFound when
        unknown."""
        status = self.store.host(host_id)
        return replace(status, replica_id=self._holders().get(host_id, ""))

    def _holders(self) -> dict[str, str]:
        """The replica id holding each host under a live lease."""
        now = self.hub.clock()
        return {
            host_id: owner.replica_id
            for host_id, owner in self.store.host_owners().items()
            if owner.live(now)
        }

    def processes(
        self,
        *,
        host_id: str = "",
        name_contains: str = "",
        order: ProcessOrder = ProcessOrder.REGIONS,
        limit: int = 0,
        per_host_limit: int = 0,
    ) -> list[FleetProcess]:
        """The latest summary of each current process, of one host or all (``""``),
        whose name contains ``name_contains``, in ``order``, at most ``limit`` (0: all)
        and at most ``per_host_limit`` of each host, its first in ``order`` (0: all; 1
        with HEADROOM: each host's worst process).
        """
        if limit < 0 or per_host_limit < 0:
            raise errors.InvalidArgument("limit must not be negative")
        where = ProcessFilter(
            host_id=host_id,
            name_contains=name_contains,
            order=order,
            limit=limit,
            per_host_limit=per_host_limit,
        )
        return self.store.processes(where)

    def history(
        self, host_id: str, pid: int, since: float = 0.0, until: float = float("inf")
    ) -> History:
        """Stored summaries of ``pid`` on ``host_id`` with ``since <= capture_time <=
        until`` (seconds since the epoch), oldest first, and the snapshots stored of it
        meanwhile. NotFound for an unknown host; InvalidArgument when ``until`` is
        before ``since``."""
        if until < since:
            raise errors.InvalidArgument("until_time is before since_time")
        return self.store.history(host_id, pid, since, until)

    def stored_snapshot(self, snapshot_id: str) -> HostSnapshot:
        """A stored snapshot by id; NotFound when pruned or unknown."""
        host_id, record = self.store.get_snapshot(snapshot_id)
        return HostSnapshot(snapshot_id, host_id, record)

    def latest_snapshot(self, host_id: str, pid: int) -> HostSnapshot:
        """The newest stored snapshot of ``pid`` on ``host_id``; NotFound for an
        unknown host or when none is stored."""
        _require_pid(pid)
        self.store.host(host_id)
        snapshot_id, record = self.store.latest_snapshot(host_id, pid)
        return HostSnapshot(snapshot_id, host_id, record)

    def fresh_snapshot(
        self,
        host_id: str,
        request: SnapshotRequest,
        *,
        timeout_seconds: float | None = None,
    ) -> HostSnapshot:
        """A snapshot taken now by the host's agent, stored, then returned. Waits at
        most ``timeout_seconds`` (the server's agent timeout when None, and never
        longer than it). NotFound for an unknown host or process; Unavailable when the
        host is offline, its agent goes away or answers nonsense; DeadlineExceeded
        when it does not answer in time; ResourceExhausted when too many requests
        wait on it; the agent's own error (AccessDenied, NoSuchProcess, ...)
        otherwise. A call in flight when the server stops is let finish within the
        grace. Blocking; from any thread but the hub's loop."""
        return self.hub.call(
            self.fresh_snapshot_async(host_id, request, timeout_seconds=timeout_seconds)
        )

    async def fresh_snapshot_async(
        self,
        host_id: str,
        request: SnapshotRequest,
        *,
        timeout_seconds: float | None = None,
    ) -> HostSnapshot:
        """:meth:`fresh_snapshot`, awaited on the hub's loop. Decoding, checking and
        storing the answer run on the hub's thread pool."""
        _require_pid(request.pid)
        timeout = self.agent_timeout_seconds
        if timeout_seconds is not None:
            timeout = max(0.0, min(timeout, timeout_seconds))
        async with self.hub.serving():
            with self.hub.telemetry.fresh_snapshot():
                session = await self.hub.session(host_id)
                answer = await session.request_snapshot(request, timeout)
                return await self.hub.blocking(self._keep, host_id, session.host, answer)

    def _keep(self, host_id: str, registered: Host, answer: SnapshotAnswer) -> HostSnapshot:
        snapshot = accept_snapshot(answer, host_id, registered)
        record = SnapshotRecord(
            header=replace(snapshot, regions=RegionTable()), regions=answer.regions
        )
        snapshot_id = self.store.put_snapshot(host_id, record)
        return HostSnapshot(snapshot_id, host_id, record, decoded=snapshot)


def _require_pid(pid: int) -> None:
    if pid == 0:
        raise errors.InvalidArgument("pid must be given (pid 0 is not a process)")
