"""The connected agents: one :class:`AgentSession` per host id, kept by the :class:`Hub`.

A session is an outbox of :data:`AgentMessage` for its agent and the snapshot requests
waiting for its answers. The hub holds one session per host id (a second live agent
claiming it is refused), records hosts online and offline in the store, and drops
sessions whose agent fell silent for longer than its offline window.

Heartbeats: the hub tells each agent its heartbeat interval at registration and again
in every heartbeat's answer: ``heartbeat_seconds``, or longer when the agents held here
would together send more than ``heartbeat_budget`` heartbeats a second (so that an
idle fleet costs a replica the same whatever its size). An agent counts as silent
after ``MISSED_HEARTBEATS`` of the longest interval it was told, and never sooner than
``offline_after_seconds``. A connection that stops answering at all is found sooner,
below the hub: the server's transport keepalive cancels its stream.

Ownership, for several replicas on one store: the hub is one :class:`Replica`. When an
agent's stream opens it claims the host in the store (a lease with an epoch, see
:meth:`Store.claim_host`); the hub renews the leases of every host it holds in one
store write each heartbeat interval, whatever its agents send, each for
``MISSED_HEARTBEATS`` intervals (so the rows written a second stay within the
heartbeat budget too). A claim of
the same agent instance through another replica takes the host over with a higher
epoch, and that replica tells this one at once (:class:`Fencer`, the replica link):
this hub checks the host's lease in the store and ends the stale stream with
:class:`~vmatlas.errors.Aborted` naming the new holder (fencing). When the message
cannot be delivered, the hub learns it all the same at its next lease renewal.
Another agent instance claiming a host id that a live lease holds is refused
(AlreadyExists, naming the holder). A clean end of the stream releases the lease
and marks the host offline in one transaction, unless a newer claim holds it; a
replica that dies leaves its leases to expire. A request to one agent waits only on
its own future with a deadline, and at most ``MAX_WAITING_SNAPSHOTS`` requests wait
on one agent at a time (more are refused at once), so a slow or hung agent holds up
nobody else.

Stopping drains: the hub waits (within the grace) for the calls in flight that need
an agent (marked with :meth:`Hub.serving`) before it closes the agents' streams.

Threads and the event loop: the hub lives on one asyncio event loop (the server's),
so that ten thousand idle agents cost ten thousand queues, not ten thousand threads.
Its coroutines (``claim``, ``release``, ``heard``, ``accept_push``,
``request_snapshot``, ``serving``, ``stop``, ...) must be awaited on that loop;
:meth:`Hub.online` and :meth:`Hub.call` may be used from any thread. Store calls,
which block until committed, run on the hub's thread pool (:meth:`Hub.blocking`),
never on the loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import Executor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from vmatlas import defaults, errors
from vmatlas.model import Host, SnapshotView
from vmatlas.server.store import HostOwnership, PushOrigin, Store
from vmatlas.server.telemetry import PUSH_DUPLICATE, PUSH_REFUSED, PUSH_STORED, Telemetry
from vmatlas.validate import validate_summaries

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_SECONDS = defaults.HEARTBEAT_SECONDS
DEFAULT_HEARTBEAT_BUDGET = defaults.HEARTBEAT_BUDGET
# Missed heartbeats before a silent agent counts as gone.
MISSED_HEARTBEATS = 3
# The offline window when none is given, in --heartbeat intervals: the server's
# keepalive pings every connection after two thirds of it, and pings cost the C core
# some 70 us each, so a short window costs an idle fleet more than its heartbeats do.
OFFLINE_HEARTBEATS = 6
# Snapshot requests that may wait on one agent at once.
MAX_WAITING_SNAPSHOTS = 8

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Replica:
    """Which server this hub is, among the replicas sharing its store: ``replica_id``
    names it in ownership records, ``address`` (HOST:PORT) is where the others reach
    it."""

    replica_id: str
    address: str


class Fencer(Protocol):
    """The link to the other replicas, as a claim uses it (a transport provides it)."""

    async def fence_host(self, lost: HostOwnership, claimed: HostOwnership) -> bool:
        """Tell the replica that held ``lost`` that ``claimed`` took the host over:
        whether it ended a stream. Unavailable when it cannot be reached."""


# -- what passes between the hub and an agent ------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """What a fresh snapshot asks an agent for."""

    pid: int
    include_free: bool = False
    include_residency: bool = False
    view: SnapshotView = SnapshotView.NATIVE


@dataclass(frozen=True, slots=True)
class SnapshotCommand:
    """Take a snapshot and answer with ``request_id`` within ``timeout_seconds``."""

    request_id: int
    request: SnapshotRequest
    timeout_seconds: float


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    """A heartbeat answered, with the interval the agent is to keep from now on."""

    server_time: float
    heartbeat_seconds: float


@dataclass(frozen=True, slots=True)
class PushAck:
    """A push is stored (or was already), or ``refused`` for good: sending it again
    would not make it valid."""

    sequence: int
    refused: errors.InvalidArgument | None = None


# Messages for an agent, in the order they are sent.
AgentMessage = SnapshotCommand | HeartbeatAck | PushAck


@dataclass(frozen=True, slots=True)
class SnapshotAnswer:
    """An agent's answer to a :class:`SnapshotCommand`: the snapshot as it sent it (a
    serialized Snapshot without regions and a serialized RegionTable, decoded and
    checked once by :func:`vmatlas.server.domain.fleet.accept_snapshot`), or the
    error it met."""

    request_id: int
    header: bytes = b""
    regions: bytes = b""
    error: errors.Error | None = None


@dataclass(frozen=True, slots=True)
class SummaryPush:
    """One push of process summaries. ``processes`` are model summaries or their wire
    form: :func:`vmatlas.validate.validate_summaries` decodes and checks them in one
    pass."""

    processes: Sequence[Any]
    complete: bool = True
    access_denied_count: int = 0
    sequence: int = 0
    dropped_push_count: int = 0


# -- one agent -------------------------------------------------------------------------


class AgentSession:
    """One connected agent: what to send it and which of its answers are awaited.
    Lives on the hub's loop."""

    def __init__(self, host: Host, instance_id: str):
        self.host = host
        self.host_id = host.host_id
        self.instance_id = instance_id
        self.last_heard = time.monotonic()
        # The longest heartbeat interval the agent was told: it may still be keeping it.
        self.heartbeat_seconds = 0.0
        # The agent's running total of pushes dropped, as last reported.
        self.dropped_push_count = 0
        self.closed = False
        # The host's ownership record while this session holds it.
        self.ownership: HostOwnership | None = None
        # Why the stream ends, when the agent should hear it as an error (fencing).
        self.ended_by: errors.Error | None = None
        # Claimed and recorded online: the agent counts as connected.
        self.registered = False
        self._outbox: asyncio.Queue[AgentMessage | None] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future[SnapshotAnswer]] = {}
        self._ids = itertools.count(1)

    def send(self, message: AgentMessage) -> None:
        if not self.closed:
            self._outbox.put_nowait(message)

    async def outgoing(self) -> AsyncIterator[AgentMessage]:
        """Messages for the agent until the session closes."""
        while True:
            message = await self._outbox.get()
            if message is None:
                return
            yield message

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def told(self, heartbeat_seconds: float) -> None:
        """The agent is told to send heartbeats this often. An agent keeps the interval
        it registered with when it cannot read a new one (an older agent), so the
        silence allowed it never shrinks."""
        self.heartbeat_seconds = max(self.heartbeat_seconds, heartbeat_seconds)

    async def request_snapshot(
        self, request: SnapshotRequest, timeout_seconds: float
    ) -> SnapshotAnswer:
        """Ask the agent for a snapshot and wait at most ``timeout_seconds`` for its
        answer (not yet decoded or checked). Unavailable when the agent goes away
        meanwhile, DeadlineExceeded on timeout, ResourceExhausted when
        ``MAX_WAITING_SNAPSHOTS`` requests already wait on it."""
        if self.closed:
            raise errors.Unavailable(f"host {self.host_id!r} is offline")
        if len(self._pending) >= MAX_WAITING_SNAPSHOTS:
            raise errors.ResourceExhausted(
                f"host {self.host_id!r} already has {MAX_WAITING_SNAPSHOTS} snapshot "
                "requests waiting; try again later"
            )
        request_id = next(self._ids)
        future: asyncio.Future[SnapshotAnswer] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self.send(SnapshotCommand(request_id, request, timeout_seconds))
        try:
            return await asyncio.wait_for(future, timeout_seconds)
        except TimeoutError:
            raise errors.DeadlineExceeded(
                f"host {self.host_id!r} did not answer within {timeout_seconds:.1f} s"
            ) from None
        finally:
            self._pending.pop(request_id, None)

    def resolve(self, answer: SnapshotAnswer) -> None:
        """Hand an answer to the request waiting for it (late answers are dropped)."""
        future = self._pending.pop(answer.request_id, None)
        if future is not None and not future.done():
            future.set_result(answer)

    def close(self, reason: str, error: errors.Error | None = None) -> None:
        """End the session: its outbox ends and the requests waiting on it fail
        Unavailable with ``reason``; with ``error`` its stream ends with that status."""
        if self.closed:
            return
        self.closed = True
        self.ended_by = error
        pending = list(self._pending.values())
        self._pending.clear()
        self._outbox.put_nowait(None)
        for future in pending:
            if not future.done():
                future.set_exception(errors.Unavailable(f"host {self.host_id!r}: {reason}"))


# -- every agent -----------------------------------------------------------------------


class Hub:
    """Every connected agent, by host id. Made, used and stopped on one event loop;
    ``executor`` runs its store calls."""

    def __init__(
        self,
        store: Store,
        executor: Executor,
        *,
        heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
        heartbeat_budget: float = DEFAULT_HEARTBEAT_BUDGET,
        offline_after_seconds: float = 0.0,
        max_agents: int = 10_000,
        clock: Callable[[], float] = time.time,
        telemetry: Telemetry | None = None,
        replica: Replica | None = None,
        fencer: Fencer | None = None,
    ):
        self.store = store
        # The server sets its advertised address once its port is bound.
        self.replica = replica if replica is not None else Replica(default_replica_id(), "")
        self.executor = executor
        # Tells the replica a claim takes a host from (None: it learns at renewal).
        self.fencer = fencer
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        # The shortest heartbeat interval agents are told.
        self.heartbeat_seconds = heartbeat_seconds
        # Heartbeats a second from all agents together; 0: no limit.
        self.heartbeat_budget = heartbeat_budget
        self.offline_after_seconds = offline_after_seconds or OFFLINE_HEARTBEATS * heartbeat_seconds
        # The shortest lease: it outlives the renewals a few missed intervals skip.
        self.lease_seconds = max(self.offline_after_seconds, MISSED_HEARTBEATS * heartbeat_seconds)
        self.max_agents = max_agents
        self.clock = clock
        self.loop = asyncio.get_running_loop()
        self._sessions: dict[str, AgentSession] = {}
        # Each host's store writes take turns (see _record).
        self._writing: dict[str, _Turn] = {}
        # Last-seen records under way.
        self._writes: set[asyncio.Task[None]] = set()
        # Messages to replicas a claim took a host from, under way.
        self._notices: set[asyncio.Task[None]] = set()
        self._stopping = False
        # Calls in flight that need an agent's stream (fresh snapshots).
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._monitor = self.loop.create_task(self._watch(), name="vmatlas-hub-monitor")

    # -- crossing threads ---------------------------------------------------------------

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the hub's thread pool: for store calls and other work that
        would hold up the loop. StoreClosed once the pool is shut down (the server
        stopped)."""
        try:
            future = self.loop.run_in_executor(self.executor, fn, *args)
        except RuntimeError:  # "cannot schedule new futures after shutdown"
            raise errors.StoreClosed("the server is stopping") from None
        return await future

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the hub's loop from another thread and wait for its
        result (never from the loop itself: that would wait forever)."""
        if _running_loop() is self.loop:
            coroutine.close()
            raise RuntimeError("Hub.call from the hub's own loop: await the coroutine")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    # -- sessions ---------------------------------------------------------------------

    async def claim(self, host: Host, instance_id: str) -> AgentSession:
        """A new session for ``host`` (already checked), holding the host's lease and
        recorded online in the store. AlreadyExists when another live agent holds the
        host id, here or through another replica (the message names which); a
        reconnect by the same agent (same instance id), here or anywhere, takes the
        host over. When a store write fails the session is undone and the error
        raised."""
        if self._stopping:
            raise errors.Unavailable("the server is stopping")
        existing = self._sessions.get(host.host_id)
        replaced = None
        if existing is not None and not existing.closed:
            if existing.instance_id != instance_id and not self._silent(existing):
                raise errors.AlreadyExists(
                    f"host id {host.host_id!r} is held by another agent connected to this "
                    f"server (replica {self.replica.replica_id})"
                )
            replaced = existing
            existing.close("replaced by a new connection")
        elif len(self._sessions) >= self.max_agents:
            raise errors.ResourceExhausted(f"the server takes at most {self.max_agents} agents")
        # In the table before the lease is taken: whoever finds the lease here finds
        # the session.
        session = AgentSession(host, instance_id)
        self._sessions[host.host_id] = session
        session.told(self.heartbeat_interval())
        try:
            if (
                replaced is not None
                and replaced.ownership is not None
                and replaced.instance_id != instance_id
            ):
                # A silent agent's lease would refuse its successor for a while yet.
                await self.blocking(self.store.release_host, replaced.ownership)
            previous, claimed = await self.blocking(
                self._claim_lease, session, self.lease_ttl_seconds()
            )
            session.ownership = claimed
            await self._record(host.host_id)
        except errors.StoreConflict as exc:
            await self.release(session, "refused")
            raise errors.AlreadyExists(str(exc)) from None
        except BaseException:
            await self.release(session, "could not be recorded")
            raise
        if session.closed:
            # Released while it was being claimed (the server is stopping): the
            # release found no lease to give up, so give it up here.
            held, session.ownership = session.ownership, None
            if held is not None:
                await self.blocking(self.store.release_host, held)
            raise errors.Unavailable("the server is stopping")
        session.registered = True
        log.info("host %s online (epoch %d)", host.host_id, claimed.epoch)
        if (
            previous is not None
            and previous.replica_id
            and previous.replica_id != self.replica.replica_id
            and previous.address
            and self.fencer is not None
        ):
            task = self.loop.create_task(self._tell_fenced(self.fencer, previous, claimed))
            self._notices.add(task)
            task.add_done_callback(self._notices.discard)
        return session

    def _claim_lease(
        self, session: AgentSession, ttl_seconds: float
    ) -> tuple[HostOwnership | None, HostOwnership]:
        """The host's ownership record before the claim (None: it had none, or the
        host is new), and the claim's. The first is read only to tell its holder, so
        it may be a moment old: whoever holds the host decides from the store."""
        previous = None
        if self.fencer is not None:
            with suppress(errors.NotFound):  # a host never seen: nobody to tell
                previous = self.store.host_owner(session.host_id)
        return previous, self.store.claim_host(
            session.host_id,
            replica_id=self.replica.replica_id,
            address=self.replica.address,
            instance_id=session.instance_id,
            now=self.clock(),
            ttl_seconds=ttl_seconds,
        )

    async def _tell_fenced(
        self, fencer: Fencer, lost: HostOwnership, claimed: HostOwnership
    ) -> None:
        """Tell the replica that held ``lost`` that this one holds the host now."""
        try:
            ended = await fencer.fence_host(lost, claimed)
        except errors.Error as exc:
            log.warning(
                "host %s: could not tell replica %s it lost the host (%s); it learns at "
                "its next lease renewal",
                claimed.host_id,
                lost.replica_id,
                exc,
            )
            return
        if ended:
            log.info(
                "host %s: replica %s ended its stream (epoch %d) at once",
                claimed.host_id,
                lost.replica_id,
                lost.epoch,
            )

    async def fence_now(self, host_id: str, epoch: int, claimed_by: str) -> bool:
        """Another replica (``claimed_by``) says it claimed ``host_id`` at ``epoch``:
        a stream held here under a smaller epoch has its lease checked now, as its
        next renewal would (renewed if the store says it still holds the host, ended
        with Aborted otherwise). Whether a stream ended."""
        session = self.live_session(host_id)
        if session is None or session.ownership is None or session.ownership.epoch >= epoch:
            return False
        log.info(
            "host %s: replica %s says it claimed the host at epoch %d; checking this "
            "stream's lease (epoch %d)",
            host_id,
            claimed_by,
            epoch,
            session.ownership.epoch,
        )
        await self._renew([session])
        return session.closed

    async def release(
        self, session: AgentSession, reason: str, error: errors.Error | None = None
    ) -> None:
        """End ``session`` (its stream with ``error``, when given) and, unless a newer
        session or claim replaced it, release its lease and mark its host offline."""
        session.close(reason, error)
        if self._sessions.get(session.host_id) is not session:
            return
        del self._sessions[session.host_id]
        held, session.ownership = session.ownership, None
        if held is None:
            return  # never held, or lost to another claim: nothing of it to undo
        try:
            await self._record(session.host_id, release=held)
        except errors.StoreClosed:
            pass  # the store is closed: the server is stopping, and its start marks
            # every host offline anyway
        except Exception:
            # The host stays online in the store until its next session ends; the
            # stream's end, the monitor and the caller carry on regardless.
            log.exception("recording host %s offline failed", session.host_id)
        log.info("host %s offline: %s", session.host_id, reason)

    async def _fence(self, session: AgentSession, lost: errors.StoreConflict) -> None:
        """Another claim holds the host now: end this replica's stale stream."""
        session.ownership = None
        log.warning("host %s: %s; closing this replica's stream", session.host_id, lost)
        await self.release(
            session,
            "taken over by another connection",
            errors.Aborted(f"this stream no longer holds host {session.host_id!r}: {lost}"),
        )

    def live_session(self, host_id: str) -> AgentSession | None:
        """The live session of ``host_id``, if its agent is connected here."""
        session = self._sessions.get(host_id)
        return session if session is not None and not session.closed else None

    async def session(self, host_id: str) -> AgentSession:
        """The live session of ``host_id``: NotFound for a host never seen,
        Unavailable for one that is offline."""
        session = self.live_session(host_id)
        if session is not None:
            return session
        await self.blocking(self.store.host, host_id)  # NotFound for an unknown host
        raise errors.Unavailable(f"host {host_id!r} is offline")

    def heartbeat_interval(self) -> float:
        """The heartbeat interval to tell an agent now: ``heartbeat_seconds``, or the
        least whole multiple of it at which the agents held here send at most
        ``heartbeat_budget`` heartbeats a second together. Whole multiples: the
        interval moves only when the number of agents crosses a step, not with every
        agent that comes or goes."""
        if not self.heartbeat_budget:
            return self.heartbeat_seconds
        agents_per_step = self.heartbeat_budget * self.heartbeat_seconds
        return self.heartbeat_seconds * max(1, math.ceil(len(self._sessions) / agents_per_step))

    def lease_ttl_seconds(self) -> float:
        """How long a host lease taken or renewed now lasts: ``MISSED_HEARTBEATS``
        renewals (one each heartbeat interval), at least ``lease_seconds``."""
        return max(self.lease_seconds, MISSED_HEARTBEATS * self.heartbeat_interval())

    def offline_window(self, session: AgentSession) -> float:
        """How long ``session``'s agent may stay silent before it counts as gone."""
        return max(self.offline_after_seconds, MISSED_HEARTBEATS * session.heartbeat_seconds)

    def online(self) -> list[str]:
        """The host ids with a connected agent, sorted. Safe from any thread: the
        copy is one step under the interpreter lock."""
        return sorted(h for h, s in self._sessions.copy().items() if s.registered)

    # -- what agents send -------------------------------------------------------------

    def heard(self, session: AgentSession) -> None:
        """The agent spoke (nothing is written: the monitor renews every held host's
        lease and last-seen time in one write per interval)."""
        session.heard()

    def heartbeat(self, session: AgentSession) -> None:
        """Answer a heartbeat, with the interval the agent is to keep now."""
        interval = self.heartbeat_interval()
        session.told(interval)
        session.send(HeartbeatAck(self.clock(), interval))

    async def accept_push(self, session: AgentSession, push: SummaryPush) -> None:
        """Check and store one push, and acknowledge it when sequenced. A bad push is
        acknowledged too, as refused: sending it again would not make it good."""
        if push.dropped_push_count > session.dropped_push_count:
            log.warning(
                "host %s's agent dropped %d summary pushes while it could not deliver them "
                "(%d in all)",
                session.host_id,
                push.dropped_push_count - session.dropped_push_count,
                push.dropped_push_count,
            )
            session.dropped_push_count = push.dropped_push_count
        refused = await self.blocking(self._store_push, session, push)
        if push.sequence:
            session.send(PushAck(push.sequence, refused))

    def _store_push(
        self, session: AgentSession, push: SummaryPush
    ) -> errors.InvalidArgument | None:
        """Check and store a push (on the thread pool); the reason it is refused."""
        try:
            items = validate_summaries(push.processes, session.host)
        except errors.InvalidArgument as exc:
            log.warning("refused a bad summary push from %s: %s", session.host_id, exc)
            self.telemetry.push(PUSH_REFUSED)
            return exc
        origin = (
            PushOrigin(session.instance_id, push.sequence, push.dropped_push_count)
            if push.sequence
            else None
        )
        stored = self.store.put_summaries(
            session.host_id,
            items,
            complete=push.complete,
            origin=origin,
            access_denied_count=push.access_denied_count,
        )
        self.telemetry.push(PUSH_STORED if stored else PUSH_DUPLICATE)
        if not stored:
            log.info("host %s: push %d was stored already", session.host_id, push.sequence)
        return None

    # -- the store --------------------------------------------------------------------

    async def _record(self, host_id: str, *, release: HostOwnership | None = None) -> None:
        """Write the host's state as it is now to the store: online with its session's
        facts; with ``release``, that lease given up and the host offline, unless a
        newer claim holds it.

        Writes for one host take turns, and each reads the state after it takes its
        turn, so whichever runs last writes the latest state; an offline mark goes in
        the same transaction as the release of the lease it belongs to, so a release
        racing a reconnect (here or through another replica) cannot leave the
        reconnected host offline. Writes for different hosts go on side by side."""
        async with self._turn(host_id):
            session = self._sessions.get(host_id)
            if release is not None:
                await self.blocking(self.store.release_host, release)
            elif session is not None:
                await self.blocking(self.store.put_host, session.host, self.clock())

    async def _renew(self, sessions: list[AgentSession]) -> None:
        """Renew these sessions' leases and record their hosts last seen, in one store
        write (the hub's only periodic one, whatever the number of agents); fence a
        session whose lease another claim took. It needs no turns: a renewal holds only
        while the lease is this session's, so a release or claim committed first makes
        it a no-op, and one committed after undoes it."""
        held = [(session, session.ownership) for session in sessions]
        leases = [lease for _, lease in held if lease is not None]
        ttl_seconds = self.lease_ttl_seconds()
        results = await self.blocking(
            lambda: self.store.renew_hosts(leases, now=self.clock(), ttl_seconds=ttl_seconds)
        )
        renewed = zip(
            [session for session, lease in held if lease is not None], results, strict=True
        )
        for session, result in renewed:
            if self._sessions.get(session.host_id) is not session or session.closed:
                continue  # released meanwhile: nothing left to renew or fence
            if isinstance(result, errors.StoreConflict):
                await self._fence(session, result)
            else:
                session.ownership = result

    @asynccontextmanager
    async def _turn(self, host_id: str) -> AsyncIterator[None]:
        """One host's turn to write; the lock lives only while someone wants it."""
        entry = self._writing.get(host_id)
        if entry is None:
            entry = self._writing[host_id] = _Turn(asyncio.Lock())
        entry.wanted += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.wanted -= 1
            if not entry.wanted:
                del self._writing[host_id]

    def _renew_held(self) -> None:
        """Renew the lease and record the last-seen time of every host held here, all
        in one write, whether or not its agent spoke lately: a silent agent is dropped
        by the silence check, a dead connection by the transport's keepalive."""
        due = [
            session
            for session in self._sessions.values()
            if session.ownership is not None and not session.closed
        ]
        if due:
            task = self.loop.create_task(self._renew(due))
            self._writes.add(task)
            task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        exc = None if task.cancelled() else task.exception()
        # StoreClosed: the server is stopping.
        if exc is not None and not isinstance(exc, errors.StoreClosed):
            log.error("recording a host's last-seen time failed: %s", exc)

    # -- silence and stopping ---------------------------------------------------------

    def _silent(self, session: AgentSession, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return now - session.last_heard > self.offline_window(session)

    async def _watch(self) -> None:
        period = min(self.heartbeat_seconds, self.offline_after_seconds) / 2
        next_renewal = time.monotonic() + self.heartbeat_interval()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            if now >= next_renewal:
                self._renew_held()
                next_renewal = now + self.heartbeat_interval()
            silent = [s for s in self._sessions.values() if self._silent(s, now)]
            for session in silent:
                try:
                    await self.release(session, "missed heartbeats")
                except Exception:  # the monitor must outlive any one failure
                    log.exception("dropping the silent agent of %s failed", session.host_id)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Marks a call that needs an agent's answer, so that :meth:`stop` lets it
        finish."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def stop(self, grace_seconds: float = 0.0) -> None:
        """Wait up to ``grace_seconds`` for the calls marked by :meth:`serving` to
        finish, then close every session (agents will reconnect to the next server).
        No claim succeeds once this began."""
        self._stopping = True
        if self._in_flight:
            try:
                await asyncio.wait_for(self._idle.wait(), grace_seconds)
            except TimeoutError:
                log.warning("closing agent streams with %d calls unanswered", self._in_flight)
        for session in list(self._sessions.values()):
            await self.release(session, "server stopping")
        self._monitor.cancel()
        for notice in self._notices:  # the fenced replica learns at renewal instead
            notice.cancel()
        await asyncio.gather(self._monitor, *self._writes, *self._notices, return_exceptions=True)


@dataclass(slots=True)
class _Turn:
    lock: asyncio.Lock
    wanted: int = 0


def default_replica_id() -> str:
    """A name for a replica that was given none: this machine and process."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
