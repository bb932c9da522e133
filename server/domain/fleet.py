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

Replicas: a fresh snapshot of a host whose agent is connected to another server on
the same store is forwarded to that server (the holder its lease in the store names)
through a :class:`Peers` link, which a transport provides; when the record is missing
or stale, or its holder does not hold the host after all, the servers named in the
other ownership records are asked. The caller's role is checked and addresses are
stripped at the front end the caller reached, as for a snapshot taken here.

A fresh snapshot is decoded and checked once, by :func:`accept_snapshot`, as it
arrives from the agent: the resulting :class:`HostSnapshot` is what is stored and
what is answered. It keeps the region table also in the serialized form it was
decoded from, and the header as the agent sent it, so a front end or a replica that
sends snapshots on as protobuf splices those bytes instead of encoding them again; a
forwarded snapshot arrives as those bytes and is decoded only where a front end needs
the model (the web view), not to be sent on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Protocol

from vmatlas import errors, wire
from vmatlas.fleet import FleetProcess, History, HostStatus
from vmatlas.model import Host, ProcessOrder, RegionTable, Snapshot
from vmatlas.security.tokens import Role
from vmatlas.server.domain.hub import AgentSession, Hub, SnapshotAnswer, SnapshotRequest
from vmatlas.server.store import HostOwnership, ProcessFilter, SnapshotRecord, Store
from vmatlas.validate import validate_snapshot_parts

log = logging.getLogger(__name__)

DEFAULT_AGENT_TIMEOUT_SECONDS = 30.0
# Servers whose ownership records expired longer ago than this are not asked for a
# host whose record is missing or stale.
PEER_MEMORY_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    """A stored snapshot: its id, its host, and the snapshot itself, in the forms in
    hand.

    ``regions`` is the serialized region table (as stored, and as the agent sent it).
    The header (the snapshot without regions) is kept as it came: decoded
    (``parsed_header``: read from the store, or decoded from the agent's answer on
    arrival) and serialized (``header_bytes``: as the agent, or the replica that
    holds the host, sent it); one form is made from the other only when asked for.
    ``decoded`` is the whole snapshot when it is in hand already (a fresh one was
    decoded on arrival); :meth:`snapshot` decodes one on demand."""

    snapshot_id: str
    host_id: str
    regions: bytes = field(repr=False)
    parsed_header: Snapshot | None = field(default=None, repr=False)
    header_bytes: bytes = field(default=b"", compare=False, repr=False)
    decoded: Snapshot | None = field(default=None, compare=False, repr=False)
    # The SHA-256 digest of ``regions`` when the store gave it (b"" otherwise).
    regions_sha256: bytes = field(default=b"", compare=False, repr=False)

    @classmethod
    def from_record(cls, snapshot_id: str, host_id: str, record: SnapshotRecord) -> HostSnapshot:
        """A snapshot as the store gave it."""
        return cls(
            snapshot_id,
            host_id,
            record.regions,
            parsed_header=record.header,
            regions_sha256=record.regions_sha256,
        )

    def header(self) -> Snapshot:
        """The snapshot without its regions (its region table is empty)."""
        if self.parsed_header is not None:
            return self.parsed_header
        return wire.snapshot_header_from_bytes(self.header_bytes)

    def serialized_header(self) -> bytes:
        """The header as a serialized ``vmatlas.v1.Snapshot`` without regions."""
        return self.header_bytes or wire.snapshot_header_bytes(self.header())

    def snapshot(self) -> Snapshot:
        """The whole snapshot, regions included."""
        if self.decoded is not None:
            return self.decoded
        return replace(self.header(), regions=wire.table_from_bytes(self.regions))

    def serialized(self) -> bytes:
        """The whole snapshot as one serialized ``vmatlas.v1.Snapshot``: the header as
        received (or encoded, for a stored one), the region table spliced in as
        stored (not encoded again)."""
        return wire.join_snapshot(self.serialized_header(), self.regions)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked for a fresh snapshot, as the front end they reached authenticated
    them: what a forwarded request tells the server that holds the host."""

    name: str
    role: Role | None


class Peers(Protocol):
    """The link to the other replicas on the same store (a transport provides it)."""

    async def take_snapshot(
        self,
        address: str,
        host_id: str,
        request: SnapshotRequest,
        *,
        timeout_seconds: float,
        caller: Caller | None,
    ) -> HostSnapshot | None:
        """A fresh snapshot taken and stored by the replica at ``address``, or None
        when that replica does not hold the host's agent stream. Unavailable when the
        replica cannot be reached; the holder's errors (the agent's, DeadlineExceeded,
        ...) otherwise."""

    async def close(self) -> None: ...


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
        peers: Peers | None = None,
    ):
        self.store = store
        self.hub = hub
        self.agent_timeout_seconds = agent_timeout_seconds
        self.peers = peers

    def hosts(self) -> list[HostStatus]:
        """Every known host, online or not, sorted by host id, each with the replica
        that holds its agent's stream (if one does)."""
        return self.store.hosts(now=self.hub.clock())

    def host(self, host_id: str) -> HostStatus:
        """One host, with the replica that holds its agent's stream; NotFound when
        unknown."""
        return self.store.host(host_id, now=self.hub.clock())

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
        return HostSnapshot.from_record(snapshot_id, host_id, record)

    def latest_snapshot(self, host_id: str, pid: int) -> HostSnapshot:
        """The newest stored snapshot of ``pid`` on ``host_id``; NotFound for an
        unknown host or when none is stored."""
        _require_pid(pid)
        self.store.host(host_id)
        snapshot_id, record = self.store.latest_snapshot(host_id, pid)
        return HostSnapshot.from_record(snapshot_id, host_id, record)

    def fresh_snapshot(
        self,
        host_id: str,
        request: SnapshotRequest,
        *,
        timeout_seconds: float | None = None,
        caller: Caller | None = None,
    ) -> HostSnapshot:
        """A snapshot taken now by the host's agent, stored, then returned; forwarded
        to the replica that holds the agent's stream when it is not connected here
        (``caller``, already authorised, is named to it). Waits at most
        ``timeout_seconds`` (the server's agent timeout when None, and never longer
        than it). NotFound for an unknown host or process; Unavailable when the host
        is offline (no replica holds it, the message says why), its agent goes away
        or answers nonsense; DeadlineExceeded
        when it does not answer in time; ResourceExhausted when too many requests
        wait on it; the agent's own error (AccessDenied, NoSuchProcess, ...)
        otherwise. A call in flight when the server stops is let finish within the
        grace. Blocking; from any thread but the hub's loop."""
        return self.hub.call(
            self.fresh_snapshot_async(
                host_id, request, timeout_seconds=timeout_seconds, caller=caller
            )
        )

    def _timeout(self, timeout_seconds: float | None) -> float:
        if timeout_seconds is None:
            return self.agent_timeout_seconds
        return max(0.0, min(self.agent_timeout_seconds, timeout_seconds))

    async def fresh_snapshot_async(
        self,
        host_id: str,
        request: SnapshotRequest,
        *,
        timeout_seconds: float | None = None,
        caller: Caller | None = None,
    ) -> HostSnapshot:
        """:meth:`fresh_snapshot`, awaited on the hub's loop. Decoding, checking and
        storing the answer run on the hub's thread pool."""
        _require_pid(request.pid)
        timeout = self._timeout(timeout_seconds)
        async with self._serving():
            found = await self._held(host_id, request, timeout)
            if found is not None:
                return found
            if self.peers is not None:
                return await self._forward(host_id, request, timeout, caller)
            # NotFound or Unavailable (or the agent connected just now).
            return await self._take(await self.hub.session(host_id), request, timeout)

    async def held_snapshot_async(
        self, host_id: str, request: SnapshotRequest, *, timeout_seconds: float | None = None
    ) -> HostSnapshot | None:
        """A fresh snapshot, as :meth:`fresh_snapshot_async`, when the host's agent is
        connected here; None otherwise (never forwarded: this answers a forwarded
        request)."""
        _require_pid(request.pid)
        async with self._serving():
            return await self._held(host_id, request, self._timeout(timeout_seconds))

    @contextlib.asynccontextmanager
    async def _serving(self) -> AsyncIterator[None]:
        """One fresh snapshot call: let finish when the hub stops, and timed."""
        async with self.hub.serving():
            with self.hub.telemetry.fresh_snapshot():
                yield

    async def _held(
        self, host_id: str, request: SnapshotRequest, timeout: float
    ) -> HostSnapshot | None:
        session = self.hub.live_session(host_id)
        if session is None:
            return None
        return await self._take(session, request, timeout)

    async def _take(
        self, session: AgentSession, request: SnapshotRequest, timeout: float
    ) -> HostSnapshot:
        answer = await session.request_snapshot(request, timeout)
        return await self.hub.blocking(self._keep, session.host_id, session.host, answer)

    async def _forward(
        self, host_id: str, request: SnapshotRequest, timeout: float, caller: Caller | None
    ) -> HostSnapshot:
        """Ask the replica the host's ownership record names; failing that, every
        other replica an ownership record names (at once: only one can hold the
        host). Unavailable, saying why, when none does."""
        assert self.peers is not None
        # One read of one row on the way to the holder (NotFound for an unknown host);
        # every host's record only when that one does not lead to it.
        owner = await self.hub.blocking(self.store.host_owner, host_id)
        now = self.hub.clock()
        me = self.hub.replica.replica_id
        asked: list[str] = []
        why = _ownership_text(owner, now)
        if owner is not None and owner.live(now) and owner.replica_id != me and owner.address:
            try:
                found = await self.peers.take_snapshot(
                    owner.address, host_id, request, timeout_seconds=timeout, caller=caller
                )
            except errors.Unavailable as exc:
                why = f"its holder {owner.replica_id} at {owner.address} is unreachable: {exc}"
            else:
                if found is not None:
                    return found
                why = f"its holder {owner.replica_id} at {owner.address} no longer holds it"
            asked.append(owner.address)
        owners = await self.hub.blocking(self.store.host_owners)
        others = sorted(
            {
                o.address
                for o in owners.values()
                if o.address
                and o.replica_id != me
                and o.address not in asked
                and o.expires_time > now - PEER_MEMORY_SECONDS
            }
        )
        found = await self._ask_all(others, host_id, request, timeout, caller)
        if found is not None:
            return found
        raise errors.Unavailable(
            f"host {host_id!r} is offline: no server holds its agent's stream ({why}; "
            f"asked {len(others)} other server{'s' if len(others) != 1 else ''})"
        )

    async def _ask_all(
        self,
        addresses: list[str],
        host_id: str,
        request: SnapshotRequest,
        timeout: float,
        caller: Caller | None,
    ) -> HostSnapshot | None:
        """The first snapshot any of ``addresses`` takes; None when none holds the
        host. An error of the agent's (not of the link) is raised."""
        assert self.peers is not None
        tasks = [
            asyncio.ensure_future(
                self.peers.take_snapshot(
                    address, host_id, request, timeout_seconds=timeout, caller=caller
                )
            )
            for address in addresses
        ]
        failure: errors.Error | None = None
        try:
            for next_done in asyncio.as_completed(tasks):
                try:
                    found = await next_done
                except errors.Unavailable:
                    continue  # that server is down or left: it holds nothing
                except errors.Error as exc:
                    failure = failure or exc
                    continue
                if found is not None:
                    return found
        finally:
            for task in tasks:
                task.cancel()
        if failure is not None:
            raise failure
        return None

    def _keep(self, host_id: str, registered: Host, answer: SnapshotAnswer) -> HostSnapshot:
        snapshot = accept_snapshot(answer, host_id, registered)
        record = SnapshotRecord(
            header=replace(snapshot, regions=RegionTable()), regions=answer.regions
        )
        snapshot_id = self.store.put_snapshot(host_id, record)
        return HostSnapshot(
            snapshot_id,
            host_id,
            answer.regions,
            parsed_header=record.header,
            header_bytes=answer.header,
            decoded=snapshot,
        )


def _ownership_text(owner: HostOwnership | None, now: float) -> str:
    if owner is None:
        return "it has no ownership record"
    if not owner.replica_id:
        return "its agent disconnected"
    if not owner.live(now):
        return (
            f"the lease of {owner.replica_id} at {owner.address} expired "
            f"{now - owner.expires_time:.0f} s ago"
        )
    return f"held by {owner.replica_id}"


def _require_pid(pid: int) -> None:
    if pid == 0:
        raise errors.InvalidArgument("pid must be given (pid 0 is not a process)")
