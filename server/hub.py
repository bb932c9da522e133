"""The server's side of the agents' streams (``vmatlas.v1.AgentHubService``).

Each connected agent is an :class:`AgentSession`: an outbox of messages for the agent
and the snapshot requests waiting for its answers. The :class:`Hub` holds one session
per host id (a second live agent claiming it is refused), records hosts online and
offline in the store, and drops sessions whose agent fell silent for longer than the
offline window. A request to one agent waits only on its own future with a deadline,
and at most ``MAX_WAITING_SNAPSHOTS`` requests wait on one agent at a time (more are
refused at once), so a slow or hung agent holds up nobody else and ties up a bounded
number of server threads.

Stopping drains: the hub waits (within the grace) for the snapshot requests in flight
to be answered before it closes the agents' streams.

Sync gRPC keeps one pool thread per open stream, plus one thread here that reads the
agent's messages; the server sizes its pool for ``max_agents`` streams.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager

import grpc

from vmatlas import errors, wire
from vmatlas.grpcutil import abort_with
from vmatlas.model import Host
from vmatlas.security.auth import require_agent_host
from vmatlas.server.store import PushOrigin, Store
from vmatlas.v1 import agent_pb2, hub_pb2, hub_pb2_grpc
from vmatlas.validate import validate_host, validate_summaries

log = logging.getLogger(__name__)

SERVICE_NAME = hub_pb2.DESCRIPTOR.services_by_name["AgentHubService"].full_name

DEFAULT_HEARTBEAT_SECONDS = 10.0
# Missed heartbeats before a silent agent counts as gone.
MISSED_HEARTBEATS = 3
# Snapshot requests that may wait on one agent at once; each holds a server thread.
MAX_WAITING_SNAPSHOTS = 8


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
        self._outbox: queue.Queue[hub_pb2.ConnectResponse | None] = queue.Queue()
        self._pending: dict[int, Future[hub_pb2.SnapshotResult]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def send(self, message: hub_pb2.ConnectResponse) -> None:
        self._outbox.put(message)

    def outgoing(self) -> Iterator[hub_pb2.ConnectResponse]:
        """Messages for the agent until the session closes."""
        while True:
            message = self._outbox.get()
            if message is None:
                return
            yield message

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def request_snapshot(
        self, request: agent_pb2.GetSnapshotRequest, timeout_seconds: float
    ) -> hub_pb2.SnapshotResult:
        """Ask the agent for a snapshot and wait at most ``timeout_seconds``.
        Unavailable when the agent goes away meanwhile, DeadlineExceeded on timeout."""
        future: Future[hub_pb2.SnapshotResult] = Future()
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
        command = hub_pb2.ConnectResponse()
        command.snapshot_command.request_id = request_id
        command.snapshot_command.request.CopyFrom(request)
        command.snapshot_command.timeout_seconds = timeout_seconds
        self.send(command)
        try:
            return future.result(timeout=timeout_seconds)
        except FutureTimeout:
            raise errors.DeadlineExceeded(
                f"host {self.host_id!r} did not answer within {timeout_seconds:.1f} s"
            ) from None
        finally:
            with self._lock:
                self._pending.pop(request_id, None)

    def resolve(self, result: hub_pb2.SnapshotResult) -> None:
        with self._lock:
            future = self._pending.pop(result.request_id, None)
        if future is not None and not future.done():
            future.set_result(result)

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

    def claim(self, host: Host, instance_id: str) -> AgentSession:
        """A new session for ``host``, recorded online in the store. AlreadyExists when
        another live agent holds the host id; a reconnect by the same agent (same
        instance id) replaces its own stale session. When the store write fails the
        session is undone and the error raised."""
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

    def heard(self, session: AgentSession) -> None:
        """The agent spoke; record last-seen in the store at most once per heartbeat
        interval (each record is a durable commit)."""
        session.heard()
        if session.last_heard - session.last_recorded >= self.heartbeat_seconds:
            session.last_recorded = session.last_heard
            self._record(session.host_id, only=session)

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
        with self._lock:
            return sorted(self._sessions)

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
        """Marks a client call that needs an agent's answer, so that :meth:`stop`
        lets it finish."""
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


class AgentHubServicer(hub_pb2_grpc.AgentHubServiceServicer):
    def __init__(self, hub: Hub):
        self.hub = hub

    def Connect(
        self, request_iterator: Iterator[hub_pb2.ConnectRequest], context: grpc.ServicerContext
    ) -> Iterator[hub_pb2.ConnectResponse]:
        try:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("message") != "register":
                raise errors.InvalidArgument("the first message must be a registration")
            host = wire.registered_host_from_pb(first.register.host)
            if not host.host_id:
                raise errors.InvalidArgument("the registration names no host id")
            validate_host(host)
            # The agent's certificate must name the host it registers as.
            require_agent_host(host.host_id)
            session = self.hub.claim(host, first.register.instance_id)
        except errors.Error as exc:
            abort_with(context, exc)
            return
        except grpc.RpcError:
            return  # the agent went away before it registered
        except Exception:
            # Logged here; the agent learns only that the server failed, not how.
            log.exception("registering an agent failed")
            context.abort(grpc.StatusCode.INTERNAL, "internal error registering the agent")
            return
        context.add_callback(lambda: session.close("stream ended"))
        reader = threading.Thread(
            target=self._read,
            args=(session, request_iterator),
            name=f"vmatlas-agent-{host.host_id}",
            daemon=True,
        )
        registered = hub_pb2.ConnectResponse()
        registered.registered.heartbeat_interval_seconds = self.hub.heartbeat_seconds
        wire.timestamp_to_pb(self.hub.clock(), registered.registered.server_time)
        try:
            yield registered
            reader.start()
            yield from session.outgoing()
        finally:
            self.hub.release(session, "stream ended")

    def _read(self, session: AgentSession, messages: Iterator[hub_pb2.ConnectRequest]) -> None:
        reason = "agent disconnected"
        try:
            for message in messages:
                self.hub.heard(session)
                self._handle(session, message)
        except grpc.RpcError:
            reason = "stream broken"
        except Exception:
            log.exception("agent stream of %s failed", session.host_id)
            reason = "internal error"
        finally:
            self.hub.release(session, reason)

    def _handle(self, session: AgentSession, message: hub_pb2.ConnectRequest) -> None:
        kind = message.WhichOneof("message")
        if kind == "heartbeat":
            ack = hub_pb2.ConnectResponse()
            wire.timestamp_to_pb(self.hub.clock(), ack.heartbeat_ack.send_time)
            session.send(ack)
        elif kind == "summaries":
            self._store_push(session, message.summaries)
        elif kind == "snapshot_result":
            session.resolve(message.snapshot_result)
        else:
            log.warning("agent %s sent an unexpected %s message", session.host_id, kind)

    def _store_push(self, session: AgentSession, push: hub_pb2.SummaryPush) -> None:
        """Store one push and acknowledge it when sequenced. A bad push is acknowledged
        too: sending it again would not make it good."""
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
            stored = self.hub.store.put_summaries(
                session.host_id,
                items,
                complete=push.complete,
                origin=origin,
                access_denied_count=push.access_denied_count,
            )
            if not stored:
                log.info("host %s: push %d was stored already", session.host_id, push.sequence)
        if push.sequence:
            ack = hub_pb2.ConnectResponse()
            ack.summaries_ack.sequence = push.sequence
            if refused is not None:
                ack.summaries_ack.refused_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                ack.summaries_ack.refused_message = str(refused)
            session.send(ack)
