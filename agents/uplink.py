"""The agent's side of the server stream: ``vmatlas agent --server HOST:PORT[,...]``.

One long-lived ``AgentHubService.Connect`` stream per agent, to one server of those it
was given. Over it the agent registers, sends heartbeats as often as the server says
(at registration, and again in each heartbeat's answer), pushes every process's
summary each ``interval`` (and at once for processes whose map count jumped by
``jump_regions`` since their last push), and answers the server's snapshot commands.

Several servers (replicas on one store) may be given, and a name may resolve to
several addresses (A and AAAA records, all of them tried). When the stream breaks (a
connection that stops answering the transport's keepalive pings breaks it too), or the
server stays silent for three heartbeat intervals, the agent moves on to the next
address, round after round (names are resolved again each round), waiting before each
attempt a delay drawn at random below an exponentially growing cap (full jitter): the
agents of a replica that restarts spread their returns over the other replicas and over
time instead of arriving together.

Pushes are made whether or not the server is reachable. Each gets the next sequence
number of this agent instance and waits in a buffer of at most ``buffer_pushes`` until
the server acknowledges it as stored; after a reconnect the unacknowledged ones are
sent again in order (the server ignores any it had stored already). When the buffer is
full the oldest push is dropped, logged, and counted in every later push's
``dropped_push_count``. :meth:`Uplink.stop` answers the snapshot commands in hand,
delivers what is buffered, then closes the stream from its end.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, replace

import grpc

from vmatlas import __version__, defaults, errors, wire
from vmatlas.addresses import resolve_address
from vmatlas.agents.base import Reader
from vmatlas.agents.service import AgentServicer
from vmatlas.grpcutil import agent_channel_options, error_from_rpc, method_path
from vmatlas.model import Host, ProcessSummary, Snapshot
from vmatlas.v1 import hub_pb2

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = defaults.INTERVAL_SECONDS
DEFAULT_JUMP_REGIONS = defaults.JUMP_REGIONS
DEFAULT_BUFFER_PUSHES = defaults.BUFFER_PUSHES
SILENT_HEARTBEATS = 3

# A snapshot's answer waits as its bytes (wire.snapshot_result_request), the rest as
# messages.
Outbox = queue.Queue[hub_pb2.ConnectRequest | wire.Serialized | None]

_CONNECT_PATH = method_path(hub_pb2, "AgentHubService", "Connect")


# Past this many doublings the cap is the maximum anyway (and 2.0**attempt would
# overflow a float).
_MAX_DOUBLINGS = 60


def backoff_delay(
    attempt: int, initial: float, maximum: float, rng: random.Random | None = None
) -> float:
    """The wait before connection attempt ``attempt`` (0 after a stream that was
    registered): uniform between 0 and ``min(maximum, initial * 2**attempt)`` ("full
    jitter"), so agents that lost the same server neither return in step nor all at
    once."""
    cap = min(maximum, initial * 2.0 ** min(attempt, _MAX_DOUBLINGS))
    return (rng or random).uniform(0.0, cap)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address to dial, and the name it was given by (the server's certificate
    must carry that name, and it is the call's authority)."""

    address: str
    authority: str


class Uplink:
    """Keeps this agent connected to one of ``targets`` (a HOST:PORT, or several)
    until :meth:`stop`, trying them in the order given and then round again; the
    records of a name in a random order. ``resolve`` turns a target into addresses
    (:func:`resolve_address`: DNS); ``rng`` draws the backoff delays and those orders.

    ``host_id`` overrides the reader's host id (several uplinks may share a reader).
    ``poll_seconds`` is how often map counts are re-read between pushes to catch
    jumps; 0 means a sixth of the interval, at most 10 s. ``buffer_pushes`` bounds the
    pushes kept until the server acknowledges them. The stream's connection is pinged
    after ``keepalive_seconds`` of quiet and dropped when no answer came within
    ``keepalive_timeout_seconds`` (gRPC's transport keepalive).
    """

    def __init__(
        self,
        reader: Reader,
        targets: str | Sequence[str],
        *,
        host_id: str | None = None,
        servicer: AgentServicer | None = None,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        poll_seconds: float = 0.0,
        jump_regions: int = DEFAULT_JUMP_REGIONS,
        backoff_initial_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
        buffer_pushes: int = DEFAULT_BUFFER_PUSHES,
        credentials: grpc.ChannelCredentials | None = None,
        resolve: Callable[[str], list[str]] = resolve_address,
        rng: random.Random | None = None,
        keepalive_seconds: float = defaults.AGENT_KEEPALIVE_SECONDS,
        keepalive_timeout_seconds: float = defaults.AGENT_KEEPALIVE_TIMEOUT_SECONDS,
    ):
        if buffer_pushes < 1:
            raise errors.InvalidArgument("the push buffer must hold at least one push")
        self.targets = (targets,) if isinstance(targets, str) else tuple(targets)
        if not self.targets:
            raise errors.InvalidArgument("an uplink needs at least one server address")
        self.reader = reader
        # The address of the server connected to, or being tried.
        self.target = self.targets[0]
        self.resolve = resolve
        self.rng = rng or random.Random()
        self.host_id = host_id
        self.servicer = servicer or AgentServicer(reader)
        self.interval_seconds = interval_seconds
        self.poll_seconds = poll_seconds or min(10.0, interval_seconds / 6)
        self.jump_regions = jump_regions
        self.backoff_initial_seconds = backoff_initial_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.buffer_pushes = buffer_pushes
        self.credentials = credentials
        self.keepalive_seconds = keepalive_seconds
        self.keepalive_timeout_seconds = keepalive_timeout_seconds
        self.instance_id = uuid.uuid4().hex
        # Set while registered on a stream; registrations counts them.
        self.connected = threading.Event()
        self.registrations = 0
        # The heartbeat interval the server last told this agent.
        self.heartbeat_seconds = 0.0
        # Pushes made (their sequence numbers run 1..pushes), dropped from a full
        # buffer, and acknowledged (the highest sequence the server has stored).
        self.pushes = 0
        self.dropped_pushes = 0
        # Pushes the server refused as malformed (a bug here, or a reader gone wrong).
        self.refused_pushes = 0
        self.acked_sequence = 0
        # The latest complete push made (what the server will be told exists).
        self.last_push: tuple[ProcessSummary, ...] = ()
        self._buffer: deque[hub_pb2.ConnectRequest] = deque()
        self._buffered = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._collector: threading.Thread | None = None
        self._call: grpc.Future | None = None
        self._outbox: Outbox | None = None
        self._answering: set[Future[None]] = set()
        self.error: errors.Error | None = None
        # Called with the error when the uplink gives up for good (a refused host id).
        self.on_fatal: Callable[[errors.Error], None] | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> Uplink:
        self._thread = threading.Thread(target=self._run_logged, name="vmatlas-uplink", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop making pushes; within ``timeout``, finish the snapshot answers in hand
        and deliver the buffered pushes if connected, then close the stream from this
        end (the server sees a clean end, not a broken stream). Cancels the stream
        when time runs out."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        with self._buffered:
            self._buffered.notify_all()
        # A push being collected now is made after all: wait for it to join the buffer.
        collector = self._collector
        if collector is not None and collector is not threading.current_thread():
            collector.join(max(0.0, deadline - time.monotonic()))
        wait_futures(self._answering.copy(), timeout=max(0.0, deadline - time.monotonic()))
        with self._buffered:
            while self._buffer and self.connected.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._buffered.wait(min(left, 0.1))
        outbox = self._outbox
        if outbox is not None:
            outbox.put(None)
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(1.0)
        if self._buffer:
            log.warning("%d summary pushes were never delivered", len(self._buffer))

    def buffered(self) -> int:
        """Pushes waiting for the server's acknowledgement."""
        with self._buffered:
            return len(self._buffer)

    def _run_logged(self) -> None:
        try:
            self.run()
        except errors.Error as exc:
            self.error = exc
            log.error("uplink to %s stopped: %s", ",".join(self.targets), exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)

    def run(self) -> None:
        """Make pushes; connect, serve the stream, reconnect, until stopped. Raises
        AlreadyExists when the very first registration is refused for a duplicate host
        id (a misconfiguration); later refusals are retried (the server may still hold
        this agent's own stale stream)."""
        collector = threading.Thread(target=self._collect_loop, name="vmatlas-sweep", daemon=True)
        self._collector = collector
        collector.start()
        try:
            self._connect_loop()
        finally:
            self._stop.set()

    def _connect_loop(self) -> None:
        attempt = 0
        # The addresses left to try in this round.
        pending: deque[Endpoint] = deque()
        while not self._stop.is_set():
            before = self.registrations
            if not pending:
                pending.extend(self._endpoints())
            if pending:
                endpoint = pending.popleft()
                self.target = endpoint.address
                try:
                    self._serve_stream(endpoint)
                except errors.AlreadyExists:
                    if self.registrations == 0:
                        raise
                    log.warning("server still holds host id %s; retrying", self._host().host_id)
                except errors.Error as exc:
                    log.warning("stream to %s ended: %s", endpoint.address, exc)
            if self.registrations > before:
                attempt = 0
            if self._stop.is_set():
                break
            delay = backoff_delay(
                attempt, self.backoff_initial_seconds, self.backoff_max_seconds, self.rng
            )
            attempt += 1
            following = pending[0].address if pending else ",".join(self.targets)
            log.info("connecting to %s in %.1f s", following, delay)
            self._stop.wait(delay)

    def _endpoints(self) -> list[Endpoint]:
        """One round of addresses: every target in the order given, each name's
        records shuffled (so that agents given one name spread over its servers)."""
        round_: list[Endpoint] = []
        for target in self.targets:
            try:
                addresses = list(self.resolve(target))
            except errors.Error as exc:
                log.warning("server %s: %s", target, exc)
                continue
            self.rng.shuffle(addresses)
            round_ += [Endpoint(address, target) for address in addresses]
        return round_

    # -- one stream ---------------------------------------------------------------------

    def _host(self) -> Host:
        host = self.reader.host()
        return replace(host, host_id=self.host_id) if self.host_id else host

    def _serve_stream(self, endpoint: Endpoint) -> None:
        outbox: Outbox = queue.Queue()
        registration = hub_pb2.ConnectRequest()
        wire.host_to_pb(self._host(), registration.register.host)
        registration.register.instance_id = self.instance_id
        registration.register.agent_version = __version__
        outbox.put(registration)

        def requests() -> Iterator[hub_pb2.ConnectRequest | wire.Serialized]:
            while True:
                message = outbox.get()
                if message is None:
                    return
                yield message

        # A channel of its own each time (this class does the backing off), with
        # keepalive: a server whose network went silent fails the stream.
        options = agent_channel_options(self.keepalive_seconds, self.keepalive_timeout_seconds)
        if endpoint.authority != endpoint.address:
            # Dialled by one of its name's addresses: TLS checks the name.
            options.append(("grpc.default_authority", endpoint.authority))
        if self.credentials is None:
            channel = grpc.insecure_channel(endpoint.address, options=options)
        else:
            channel = grpc.secure_channel(endpoint.address, self.credentials, options=options)
        ended = threading.Event()
        workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vmatlas-uplink-snap")
        try:
            # AgentHubServiceStub's Connect, except that a snapshot's answer is sent as
            # the bytes it already is.
            connect = channel.stream_stream(
                _CONNECT_PATH,
                request_serializer=wire.serialize_response,
                response_deserializer=hub_pb2.ConnectResponse.FromString,
                _registered_method=True,
            )
            call = connect(requests())
            self._call = call
            self._outbox = outbox
            if self._stop.is_set():
                call.cancel()
            last_heard = [time.monotonic()]
            registered = False
            for message in call:
                last_heard[0] = time.monotonic()
                kind = message.WhichOneof("message")
                if kind == "registered" and not registered:
                    registered = True
                    self.registrations += 1
                    self.connected.set()
                    self.heartbeat_seconds = (
                        message.registered.heartbeat_interval_seconds or defaults.HEARTBEAT_SECONDS
                    )
                    log.info(
                        "registered with %s (heartbeat every %g s)",
                        self.target,
                        self.heartbeat_seconds,
                    )
                    threading.Thread(
                        target=self._heartbeats,
                        args=(call, outbox, ended, last_heard),
                        daemon=True,
                    ).start()
                    threading.Thread(
                        target=self._send_buffered, args=(outbox, ended), daemon=True
                    ).start()
                elif kind == "heartbeat_ack":
                    told = message.heartbeat_ack.heartbeat_interval_seconds
                    if told and told != self.heartbeat_seconds:
                        log.info("heartbeat every %g s from now on", told)
                        self.heartbeat_seconds = told
                elif kind == "summaries_ack":
                    ack = message.summaries_ack
                    if ack.refused_code:
                        self.refused_pushes += 1
                        log.error(
                            "the server refused push %d: %s", ack.sequence, ack.refused_message
                        )
                    self._acknowledged(ack.sequence)
                elif kind == "snapshot_command":
                    answer = workers.submit(
                        self._answer, message.snapshot_command, outbox, time.monotonic()
                    )
                    self._answering.add(answer)
                    answer.add_done_callback(self._answering.discard)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED or not self._stop.is_set():
                raise error_from_rpc(exc) from None
        finally:
            self.connected.clear()
            ended.set()
            with self._buffered:
                self._buffered.notify_all()
            self._outbox = None
            outbox.put(None)
            workers.shutdown(wait=False, cancel_futures=True)
            channel.close()
            self._call = None

    def _heartbeats(
        self,
        call: grpc.Future,
        outbox: Outbox,
        ended: threading.Event,
        last_heard: list[float],
    ) -> None:
        # The interval is read afresh each time: an answer may have changed it.
        while not ended.wait(self.heartbeat_seconds):
            if time.monotonic() - last_heard[0] > SILENT_HEARTBEATS * self.heartbeat_seconds:
                log.warning("server %s fell silent; reconnecting", self.target)
                call.cancel()
                return
            message = hub_pb2.ConnectRequest()
            wire.timestamp_to_pb(time.time(), message.heartbeat.send_time)
            outbox.put(message)

    # -- pushes -------------------------------------------------------------------------

    def _collect_loop(self) -> None:
        """Make a complete push every interval, and a push of the processes whose map
        count jumped in between, connected or not."""
        pushed: dict[tuple[int, float], int] = {}
        next_push = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_push:
                    items, denied = self._collect()
                    self._buffer_push(_push(items, complete=True, access_denied_count=denied))
                    self.last_push = tuple(items)
                    pushed = {_key(item): item.summary.map_count for item in items}
                    next_push = now + self.interval_seconds
                elif pushed:
                    items, _ = self._collect()
                    jumped = [
                        item
                        for item in items
                        if _key(item) in pushed
                        and abs(item.summary.map_count - pushed[_key(item)]) >= self.jump_regions
                    ]
                    if jumped:
                        log.info("map count jumped in %d processes", len(jumped))
                        self._buffer_push(_push(jumped, complete=False))
                        for item in jumped:
                            pushed[_key(item)] = item.summary.map_count
            except Exception:
                log.exception("reading process summaries failed")
                next_push = now + self.interval_seconds
            self._stop.wait(max(0.0, min(next_push, time.monotonic() + self.poll_seconds) - now))

    def _buffer_push(self, message: hub_pb2.ConnectRequest) -> None:
        """Number the push and keep it until acknowledged; drop the oldest when full."""
        with self._buffered:
            self.pushes += 1
            message.summaries.sequence = self.pushes
            if len(self._buffer) >= self.buffer_pushes:
                oldest = self._buffer.popleft()
                self.dropped_pushes += 1
                log.warning(
                    "push buffer full (%d): dropped push %d, %d dropped so far",
                    self.buffer_pushes,
                    oldest.summaries.sequence,
                    self.dropped_pushes,
                )
            self._buffer.append(message)
            self._buffered.notify_all()

    def _acknowledged(self, sequence: int) -> None:
        with self._buffered:
            self.acked_sequence = max(self.acked_sequence, sequence)
            while self._buffer and self._buffer[0].summaries.sequence <= self.acked_sequence:
                self._buffer.popleft()
            self._buffered.notify_all()

    def _send_buffered(self, outbox: Outbox, ended: threading.Event) -> None:
        """Send every unacknowledged push on this stream, in order, then each new one
        as it is made, until the stream ends."""
        sent = 0
        while not ended.is_set():
            with self._buffered:
                waiting = [m for m in self._buffer if m.summaries.sequence > sent]
                if not waiting:
                    self._buffered.wait(1.0)
                    continue
                dropped = self.dropped_pushes
            for message in waiting:
                if ended.is_set():
                    return
                # A copy: the buffered original may be sent again on the next stream.
                out = hub_pb2.ConnectRequest()
                out.CopyFrom(message)
                out.summaries.dropped_push_count = dropped
                outbox.put(out)
                sent = message.summaries.sequence

    def _collect(self) -> tuple[list[ProcessSummary], int]:
        items: list[ProcessSummary] = []
        denied = 0
        for item in self.reader.process_summaries():
            if isinstance(item, ProcessSummary):
                items.append(item)
            elif isinstance(item, errors.AccessDenied):
                denied += 1
        return items, denied

    def _answer(self, command: hub_pb2.SnapshotCommand, outbox: Outbox, received: float) -> None:
        outbox.put(self._result(command, received))

    def _result(
        self, command: hub_pb2.SnapshotCommand, received: float
    ) -> hub_pb2.ConnectRequest | wire.Serialized:
        request = command.request
        # A command that waited in the queue past the server's deadline has no caller
        # left: skipping it keeps a burst from delaying every later request too.
        if command.timeout_seconds and time.monotonic() > received + command.timeout_seconds:
            return _failed(command, errors.DeadlineExceeded("the request waited past its deadline"))
        try:
            snapshot: Snapshot = self.servicer.snapshot(
                request.pid, request.include_free, request.include_residency, request.view
            )
            if self.host_id:
                snapshot = replace(snapshot, host=replace(snapshot.host, host_id=self.host_id))
            return wire.snapshot_result_request(command.request_id, *wire.snapshot_parts(snapshot))
        except errors.Error as exc:
            return _failed(command, exc)
        except Exception as exc:
            log.exception("snapshot of pid %d failed", request.pid)
            return _failed(command, errors.Error(f"agent failed: {type(exc).__name__}"))


def _failed(command: hub_pb2.SnapshotCommand, exc: errors.Error) -> hub_pb2.ConnectRequest:
    """The answer to ``command`` that the agent could not take its snapshot."""
    message = hub_pb2.ConnectRequest()
    message.snapshot_result.request_id = command.request_id
    wire.error_to_pb(exc, message.snapshot_result.error)
    return message


def _key(item: ProcessSummary) -> tuple[int, float]:
    return item.process.pid, item.process.start_time


def _push(
    items: list[ProcessSummary], *, complete: bool, access_denied_count: int = 0
) -> hub_pb2.ConnectRequest:
    message = hub_pb2.ConnectRequest()
    message.summaries.complete = complete
    message.summaries.access_denied_count = access_denied_count
    for item in items:
        wire.process_summary_to_pb(item, message.summaries.processes.add())
    return message
