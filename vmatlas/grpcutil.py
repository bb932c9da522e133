"""gRPC plumbing shared by the agent and the server: the one mapping between
:mod:`vmatlas.errors` and status codes, and the server factories (health and
reflection on, message sizes bounded, SIGTERM draining): :func:`build_server` for
the agent's thread-pool server, :func:`build_aio_server` for the fleet server on
``grpc.aio``."""

from __future__ import annotations

import asyncio
import functools
import inspect
import ipaddress
import logging
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vmatlas import defaults, errors
from vmatlas.addresses import is_ip, split_address

log = logging.getLogger(__name__)

# A 1M-region snapshot packs into well under this; anything larger is refused.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
DEFAULT_GRACE_SECONDS = defaults.GRACE_SECONDS

_TO_STATUS: tuple[tuple[type[errors.Error], grpc.StatusCode], ...] = (
    (errors.NoSuchProcess, grpc.StatusCode.NOT_FOUND),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AccessDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
)

_FROM_STATUS: dict[grpc.StatusCode, type[errors.Error]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.PERMISSION_DENIED: errors.AccessDenied,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.ABORTED: errors.Aborted,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
}

# Metadata keys that carry the pid of a process error across the wire, so that the
# client raises NoSuchProcess(pid=...) rather than a bare NotFound.
_ERROR_KIND_KEY = "vmatlas-error"
_ERROR_PID_KEY = "vmatlas-pid"


def status_of(exc: errors.Error) -> grpc.StatusCode:
    """The status code for a vmatlas error (the one place this mapping lives)."""
    for cls, code in _TO_STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _error_trailer(exc: errors.Error) -> tuple[tuple[str, str], ...]:
    trailing = [(_ERROR_KIND_KEY, type(exc).__name__)]
    if exc.pid is not None:
        trailing.append((_ERROR_PID_KEY, str(exc.pid)))
    return tuple(trailing)


def abort_with(context: grpc.ServicerContext, exc: errors.Error) -> None:
    """End the RPC with the status for ``exc``; never returns."""
    context.set_trailing_metadata(_error_trailer(exc))
    context.abort(status_of(exc), str(exc))


async def abort_with_async(context: grpc.aio.ServicerContext[Any, Any], exc: errors.Error) -> None:
    """:func:`abort_with` in a ``grpc.aio`` handler; never returns."""
    context.set_trailing_metadata(_error_trailer(exc))
    await context.abort(status_of(exc), str(exc))


def error_from_rpc(exc: grpc.RpcError) -> errors.Error:
    """The vmatlas error a failed call stands for (the client side of status_of)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    message = exc.details() if hasattr(exc, "details") else str(exc)
    kind = pid = None
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == _ERROR_KIND_KEY:
            kind = value
        elif key == _ERROR_PID_KEY:
            pid = int(value)
    cls = getattr(errors, kind, None) if kind else None
    if not (isinstance(cls, type) and issubclass(cls, errors.Error)):
        cls = _FROM_STATUS.get(code, errors.Error)
    return cls(message or code.name, pid=pid)


F = TypeVar("F", bound=Callable[..., Any])


def maps_errors(method: F) -> F:
    """Decorate a servicer method: vmatlas errors become their status; anything else
    is logged and becomes INTERNAL without leaking internals to the caller. Works on
    plain methods and on ``grpc.aio``'s coroutine methods alike."""
    if inspect.iscoroutinefunction(method):
        return _maps_async_errors(method)

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except errors.Error as exc:
            abort_with(context, exc)
        except grpc.RpcError:
            raise
        except Exception:
            if context.code() is not None:  # already aborted deliberately
                raise
            log.exception("internal error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}")

    return unary  # type: ignore[return-value]


def _maps_async_errors(method: F) -> F:
    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except errors.Error as exc:
            await abort_with_async(context, exc)
        except (grpc.RpcError, asyncio.CancelledError):
            raise
        except Exception:
            if context.code() is not None:  # already aborted deliberately
                raise
            log.exception("internal error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}")

    return unary  # type: ignore[return-value]


def maps_stream_errors(method: F) -> F:
    """:func:`maps_errors` for server-streaming methods."""

    @functools.wraps(method)
    def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            yield from method(self, request, context)
        except errors.Error as exc:
            abort_with(context, exc)
        except grpc.RpcError:
            raise
        except Exception:
            if context.code() is not None:
                raise
            log.exception("internal error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}")

    return stream  # type: ignore[return-value]


def method_path(module: Any, service: str, method: str) -> str:
    """The path a call of ``service``'s ``method``, defined in the generated ``module``,
    goes to: for a multi-callable made with serializers of one's own."""
    full_name = module.DESCRIPTOR.services_by_name[service].methods_by_name[method].full_name
    return "/{}/{}".format(*full_name.rsplit(".", 1))


def channel_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


# The most often a server lets a peer ping it while it sends nothing back; a peer
# pinging more often is sent away (GOAWAY "too_many_pings"). Below every agent's
# keepalive, and few enough pings that a misbehaving peer costs little.
MIN_PEER_PING_SECONDS = 1.0


# How much a peer may send on one stream before the server reads it: enough for a
# snapshot upload to run at 80 MB/s over a 50 ms round trip.
RECEIVE_WINDOW_BYTES = 4 * 1024 * 1024


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def keepalive_options(seconds: float, timeout_seconds: float) -> list[tuple[str, Any]]:
    """Transport keepalive for a channel or a server: an HTTP/2 ping after ``seconds``
    of quiet, and the connection dropped (its calls failing, or cancelled on a server)
    when no answer came within ``timeout_seconds``. gRPC's C core sends and answers
    these pings, so a peer whose network silently died is found without a message of
    ours, and an idle stream costs no Python to watch. Pings go on however long the
    stream stays silent (by default gRPC stops after two without data). The wait is
    also the pings' own timeout: gRPC's core (1.85) ends a connection whose keepalive
    ping went unanswered only once that one (a minute by default) runs out."""
    return [
        ("grpc.keepalive_time_ms", _ms(seconds)),
        ("grpc.keepalive_timeout_ms", _ms(timeout_seconds)),
        ("grpc.http2.ping_timeout_ms", _ms(timeout_seconds)),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def agent_channel_options(
    keepalive_seconds: float = defaults.AGENT_KEEPALIVE_SECONDS,
    keepalive_timeout_seconds: float = defaults.AGENT_KEEPALIVE_TIMEOUT_SECONDS,
) -> list[tuple[str, Any]]:
    """An agent's channel to its server: a connection of its own (gRPC's process-wide
    subchannel pool would hand a new stream the old connection, still in gRPC's own
    reconnect backoff, up to two minutes after a long outage), with keepalive, so the
    agent finds a server gone silent and moves on."""
    return [
        *channel_options(),
        ("grpc.use_local_subchannel_pool", 1),
        *keepalive_options(keepalive_seconds, keepalive_timeout_seconds),
    ]


def _server_options(keepalive: tuple[float, float] | None) -> list[tuple[str, Any]]:
    options = [*channel_options(), ("grpc.so_reuseport", 0)]
    if keepalive is not None:
        options += keepalive_options(*keepalive)
    # Peers' keepalive pings are welcome (down to MIN_PEER_PING_SECONDS apart) on a
    # stream that carries nothing for minutes; gRPC's default refuses more than one
    # ping in five minutes without data and then drops the connection.
    options.append(("grpc.http2.min_ping_interval_without_data_ms", _ms(MIN_PEER_PING_SECONDS)))
    # No bandwidth-estimating pings: gRPC sends one after data it reads, so every
    # agent's heartbeat cost a ping and its answer too (at 1,000 heartbeats a second,
    # 26% of a core with them, 12 to 19% without). The windows they would have grown
    # for a large upload (a snapshot) start large instead.
    options += [
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", RECEIVE_WINDOW_BYTES),
    ]
    return options


def build_server(
    *,
    services: Iterable[tuple[Callable[[Any, grpc.Server], None], Any, str]],
    address: str,
    max_workers: int = 16,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """The one server factory: registers ``services`` (``(add_fn, servicer,
    full_service_name)``), the standard health and reflection services, and binds
    ``address``. Returns the unstarted server, the bound port and the health servicer.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="vmatlas-rpc"),
        interceptors=list(interceptors),
        options=_server_options(None),
    )
    names = [reflection.SERVICE_NAME, health.SERVICE_NAME]
    health_servicer = health.HealthServicer()
    for add, servicer, name in services:
        add(servicer, server)
        names.append(name)
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(names, server)
    return server, _bind(server, address, credentials), health_servicer


def _bind(server: Any, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind a sync or aio server to ``address``; the port it got. Unavailable when the
    address is taken or not on this host."""
    try:
        if credentials is None:
            port: int = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpc's way of saying the bind failed
        port = 0
    if port == 0:
        raise errors.Unavailable(
            f"cannot listen on {address}: the address is in use or not on this host"
        )
    return port


async def build_aio_server(
    *,
    services: Iterable[tuple[Callable[[Any, Any], None], Any, str]],
    address: str,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
    sync_workers: int = 16,
    keepalive: tuple[float, float] | None = None,
) -> tuple[grpc.aio.Server, int, health_aio.HealthServicer]:
    """:func:`build_server` on ``grpc.aio``: one event loop serves every call, so an
    idle stream costs no thread. Await it on the loop that will run the server.
    Servicers whose methods are plain functions (not coroutines) still work: they run
    on a pool of ``sync_workers`` threads. ``keepalive`` is ``(seconds,
    timeout_seconds)`` for :func:`keepalive_options`: the server pings its peers, and
    a call whose connection stops answering is cancelled. Returns the unstarted server,
    the bound port and the (asyncio) health servicer, every service already SERVING."""
    server = grpc.aio.server(
        migration_thread_pool=futures.ThreadPoolExecutor(
            max_workers=sync_workers, thread_name_prefix="vmatlas-rpc"
        ),
        interceptors=list(interceptors),
        options=_server_options(keepalive),
    )
    names = [reflection.SERVICE_NAME, health.SERVICE_NAME]
    health_servicer = health_aio.HealthServicer()
    for add, servicer, name in services:
        add(servicer, server)
        names.append(name)
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(names, server)
    return server, _bind(server, address, credentials), health_servicer


class StopSignals:
    """SIGTERM and SIGINT caught from the moment this is made. Make it before the server
    starts, so that a signal arriving just after the "listening" line still drains."""

    def __init__(self, every: Callable[[], object] | None = None) -> None:
        self.event = threading.Event()
        self._every = every
        self._previous = {
            s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)
        }

    def _handle(self, signum: int, _frame: Any) -> None:
        log.info("signal %d: draining", signum)
        self.event.set()

    def wait(self) -> None:
        """Until a signal; meanwhile ``every`` (given when made) runs every half second
        in this thread."""
        while not self.event.wait(0.5):
            if self._every is not None:
                self._every()

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


def serve_until_signalled(
    server: grpc.Server,
    health_servicer: health.HealthServicer,
    *,
    signals: StopSignals | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Block until SIGTERM or SIGINT, then drain: report NOT_SERVING, refuse new calls,
    run ``on_stop`` (which may wait for work in flight, within the grace) and let calls
    in flight finish within ``grace_seconds``; those still running then are cancelled.
    """
    signals = signals or StopSignals()
    try:
        signals.wait()
    finally:
        signals.restore()
        health_servicer.enter_graceful_shutdown()
        stopped = server.stop(grace_seconds)
        if on_stop is not None:
            on_stop()
        stopped.wait()


def is_loopback(address: str) -> bool:
    """Whether a ``host:port`` address stays on this machine: ``localhost`` or a
    loopback IP (127.0.0.0/8, ::1), never a name that merely starts like one."""
    host = address.strip("[]")
    if not is_ip(host) and host != "localhost":  # else HOST:PORT
        try:
            host = split_address(address, port_zero=True)[0]
        except errors.InvalidArgument:
            return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
