"""The connected agents: one :class:`AgentSession` per host id, kept by the :class:`Hub`.

A session is an outbox of :data:`AgentMessage` for its agent and the snapshot requests
waiting for its answers. The hub holds one session per host id (a second live agent
claiming it is refused), records hosts online and offline in the store, and drops
sessions whose agent fell silent for longer than the offline window. A request to
one agent waits only on its own future with a deadline, and at most
``MAX_WAITING_SNAPSHOTS`` requests wait on one agent at a time (more are refused at
once), so a slow or hung agent holds up nobody else.

Stopping drains: the hub waits (within the grace) for the calls in flight that need
an agent (marked with :meth:`Hub.serving`) before it closes the agents' streams.

Threads: every public method of :class:`Hub` and :class:`AgentSession` is safe to
call from any thread. :meth:`AgentSession.request_snapshot` blocks its caller until
the agent answers or the deadline passes; store writes block until committed.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from vmatlas import defaults, errors
from vmatlas.model import Host, SnapshotView
from vmatlas.server.store import PushOrigin, Store
from vmatlas.validate import validate_summaries

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_SECONDS = defaults.HEARTBEAT_SECONDS
# Missed heartbeats before a silent agent counts as gone.
MISSED_HEARTBEATS = 3
# Snapshot requests that may wait on one agent at once.
MAX_WAITING_SNAPSHOTS = 8


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
    server_time: float


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
    """One connected agent: what to send it and which of its answers are awaited."""

    def __init__(self, host: Host, instance_id: str):
        self.host = host
        self.host_id = host.host_id
        self.instance_id = instance_id
        self.last_heard = time.monotonic()
        self.last_recorded = 0.0
        # The agent's running total of pushes dropped, as last reported.
        self.dropped_push_count = 0
        self.closed = threading.Event()
        self._outbox: queue.Queue[AgentMessage | None] = queue.Queue()
        self._pending: dict[int, Future[SnapshotAnswer]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def send(self, message: AgentMessage) -> None:
        self._outbox.put(message)

    def outgoing(self) -> Iterator[AgentMessage]:
        """Messages for the agent until the session closes (blocks between them)."""
        while True:
            message = self._outbox.get()
            if message is None:
                return
            yield message

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def request_snapshot(self, request: SnapshotRequest, timeout_seconds: float) -> SnapshotAnswer:
        """Ask the agent for a snapshot and wait at most ``timeout_seconds`` for its
        answer (not yet decoded or checked). Unavailable when the agent goes away
        meanwhile, DeadlineExceeded on timeout, ResourceExhausted when
        ``MAX_WAITING_SNAPSHOTS`` requests already wait on it."""
        future: Future[SnapshotAnswer] = Future()
        with self._lock:
            if self.closed.is_set():
                raise errors.Unavailable(f"host {self.host_id!r} is offline")
            if len(self._pending) >= MAX_WAITING_SNAPSHOTS:
                raise errors.ResourceExhausted(
                    f"host {self.host_id!r} already has {MAX_WAITING_SNAPSHOTS} snapshot "
                    "requests waiting; try again later"
                )
            request_id = next(self._ids)
            self._pending[request_id] = future
        self.send(SnapshotCommand(request_id, request, timeout_seconds))
        try:
            return future.result(timeout=timeout_seconds)
        except FutureTimeout:
            raise errors.DeadlineExceeded(
                f"host {self.host_id!r} did not answer within {timeout_seconds:.1f} s"
            ) from None
        finally:
            with self._lock:
                self._pending.pop(request_id, None)

    def resolve(self, answer: SnapshotAnswer) -> None:
        """Hand an answer to the request waiting for it (late answers are dropped)."""
        with self._lock:
            future = self._pending.pop(answer.request_id, None)
        if future is not None and not future.done():
            future.set_result(answer)

    def close(self, reason: str) -> None:
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
            pending = list(self._pending.values())
            self._pending.clear()
        self._outbox.put(None)
        for future in pending:
            if not future.done():
                future.set_exception(errors.Unavailable(f"host {self.host_id!r}: {reason}"))


# -- every agent -----------------------------------------------------------------------


class Hub:
    """Every connected agent, by host id."""

    def __init__(
        self,
        store: Store,
        *,
        heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
        offline_after_seconds: float = 0.0,
        max_agents: int = 1000,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.heartbeat_seconds = heartbeat_seconds
        self.offline_after_seconds = offline_after_seconds or MISSED_HEARTBEATS * heartbeat_seconds
        self.max_agents = max_agents
        self.clock = clock
        self._sessions: dict[str, AgentSession] = {}
        self._lock = threading.Lock()
        # Serializes the hub's store writes (see _record); never taken under _lock.
        self._writing = threading.Lock()
        self._stop = threading.Event()
        # Client calls in flight that need an agent's stream (fresh snapshots).
        self._in_flight = 0
        self._idle = threading.Condition()
        self._monitor = threading.Thread(target=self._watch, name="vmatlas-hub", daemon=True)
        self._monitor.start()

    # -- sessions ---------------------------------------------------------------------

    def claim(self, host: Host, instance_id: str) -> AgentSession:
        """A new session for ``host`` (already checked), recorded online in the store.
        AlreadyExists when another live agent holds the host id; a reconnect by the
        same agent (same instance id) replaces its own stale session. When the store
        write fails the session is undone and the error raised."""
        with self._lock:
            if self._stop.is_set():
                raise errors.Unavailable("the server is stopping")
            existing = self._sessions.get(host.host_id)
            if existing is not None and not existing.closed.is_set():
                if existing.instance_id != instance_id and not self._silent(existing):
                    raise errors.AlreadyExists(
                        f"host id {host.host_id!r} is held by another connected agent"
                    )
                existing.close("replaced by a new connection")
            elif len(self._sessions) >= self.max_agents:
                raise errors.ResourceExhausted(f"the server takes at most {self.max_agents} agents")
            session = AgentSession(host, instance_id)
            self._sessions[host.host_id] = session
        try:
            self._record(host.host_id)
        except BaseException:
            self.release(session, "could not be recorded")
            raise
        session.last_recorded = session.last_heard
        log.info("host %s online", host.host_id)
        return session

    def release(self, session: AgentSession, reason: str) -> None:
        """End ``session`` and, unless a newer one replaced it, mark its host offline."""
        session.close(reason)
        with self._lock:
            if self._sessions.get(session.host_id) is not session:
                return
            del self._sessions[session.host_id]
        try:
            self._record(session.host_id)
        except errors.FailedPrecondition:
            pass  # the store is closed: the server is stopping, and its start marks
            # every host offline anyway
        except Exception:
            # The host stays online in the store until its next session ends; the
            # stream's end, the monitor and the caller carry on regardless.
            log.exception("recording host %s offline failed", session.host_id)
        log.info("host %s offline: %s", session.host_id, reason)

    def session(self, host_id: str) -> AgentSession:
        """The live session of ``host_id``: NotFound for a host never seen,
        Unavailable for one that is offline."""
        with self._lock:
            session = self._sessions.get(host_id)
        if session is not None and not session.closed.is_set():
            return session
        self.store.host(host_id)  # NotFound for an unknown host
        raise errors.Unavailable(f"host {host_id!r} is offline")

    def online(self) -> list[str]:
        """The host ids with a connected agent, sorted."""
        with self._lock:
            return sorted(self._sessions)

    # -- what agents send -------------------------------------------------------------

    def heard(self, session: AgentSession) -> None:
        """The agent spoke; record last-seen in the store at most once per heartbeat
        interval (each record is a durable commit)."""
        session.heard()
        if session.last_heard - session.last_recorded >= self.heartbeat_seconds:
            session.last_recorded = session.last_heard
            self._record(session.host_id, only=session)

    def heartbeat(self, session: AgentSession) -> None:
        """Answer a heartbeat."""
        session.send(HeartbeatAck(self.clock()))

    def accept_push(self, session: AgentSession, push: SummaryPush) -> None:
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
        refused: errors.InvalidArgument | None = None
        try:
            items = validate_summaries(push.processes, session.host)
        except errors.InvalidArgument as exc:
            log.warning("refused a bad summary push from %s: %s", session.host_id, exc)
            items, refused = None, exc
        origin = (
            PushOrigin(session.instance_id, push.sequence, push.dropped_push_count)
            if push.sequence
            else None
        )
        if items is not None:
            stored = self.store.put_summaries(
                session.host_id,
                items,
                complete=push.complete,
                origin=origin,
                access_denied_count=push.access_denied_count,
            )
            if not stored:
                log.info("host %s: push %d was stored already", session.host_id, push.sequence)
        if push.sequence:
            session.send(PushAck(push.sequence, refused))

    # -- the store --------------------------------------------------------------------

    def _record(self, host_id: str, *, only: AgentSession | None = None) -> None:
        """Write the host's state as it is now (online with its session's facts, or
        offline) to the store; with ``only``, just the last-seen time and only while
        that session holds the host.

        The hub's lock is never held across a store write (a durable commit): lookups
        and claims of every other host go on meanwhile. Writes for the hub are
        serialized instead, and each reads the state after it takes its turn, so
        whichever runs last writes the latest state: a release racing a reconnect
        cannot leave the reconnected host offline."""
        with self._writing:
            with self._lock:
                session = self._sessions.get(host_id)
            if only is not None:
                if session is only and not session.closed.is_set():
                    self.store.mark_online(host_id, self.clock())
            elif session is None:
                self.store.mark_offline(host_id)
            else:
                self.store.put_host(session.host, self.clock())

    # -- silence and stopping ---------------------------------------------------------

    def _silent(self, session: AgentSession) -> bool:
        return time.monotonic() - session.last_heard > self.offline_after_seconds

    def _watch(self) -> None:
        period = min(self.heartbeat_seconds, self.offline_after_seconds) / 2
        while not self._stop.wait(period):
            with self._lock:
                silent = [s for s in self._sessions.values() if self._silent(s)]
            for session in silent:
                try:
                    self.release(session, "missed heartbeats")
                except Exception:  # the monitor must outlive any one failure
                    log.exception("dropping the silent agent of %s failed", session.host_id)

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Marks a call that needs an agent's answer, so that :meth:`stop` lets it
        finish."""
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def stop(self, grace_seconds: float = 0.0) -> None:
        """Wait up to ``grace_seconds`` for the calls marked by :meth:`serving` to
        finish, then close every session (agents will reconnect to the next server)."""
        with self._lock:  # no claim after this: see claim()
            self._stop.set()
        deadline = time.monotonic() + grace_seconds
        with self._idle:
            while self._in_flight and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
            if self._in_flight:
                log.warning("closing agent streams with %d calls unanswered", self._in_flight)
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            self.release(session, "server stopping")
        if self._monitor is not threading.current_thread():
            self._monitor.join()
