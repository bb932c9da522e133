"""The HTTP listener: an aiohttp application on its own event loop in its own thread.

Running apart from gRPC keeps it independent of whether the gRPC server is threaded or
asyncio. The socket is bound by :class:`HttpListener`'s constructor, in the caller's
thread, so a port in use is an error at start-up (and port 0 is known at once).
Handlers that touch the store or the hub call :meth:`HttpServices.blocking`, which runs
the call in a small thread pool so that one slow query never stalls the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from aiohttp import web

from vmatlas import errors
from vmatlas.addresses import join_address, split_address
from vmatlas.security.tokens import TokenStore
from vmatlas.server.http import DEFAULT_HTTP_LISTEN
from vmatlas.server.http.access import TOKENS, access_middleware

log = logging.getLogger(__name__)

# Threads for the handlers' blocking calls (store reads, snapshot requests).
BLOCKING_WORKERS = 8
# How long a stop waits for requests in flight (a fresh snapshot can take seconds).
SHUTDOWN_SECONDS = 5.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: str = DEFAULT_HTTP_LISTEN
    # TLS with the server's certificate; clients authenticate with bearer tokens.
    tls_cert: str | None = None
    tls_key: str | None = None
    # None: every caller is the anonymous admin (loopback, or --insecure).
    tokens: TokenStore | None = None


@dataclass
class HttpServices:
    """What handlers reach the server through (``request.app[SERVICES]``): the server's
    parts as plain calls, never its gRPC servicers."""

    store: Any
    hub: Any = None
    # The server's domain (vmatlas.server.domain): FleetQueries and Analysis. Their
    # coroutines run on the server's own loop: await them with on_server().
    queries: Any = None
    analysis: Any = None
    server_loop: asyncio.AbstractEventLoop | None = None
    # The registry /metrics exposes (vmatlas.server.telemetry and the fleet collector).
    registry: Any = None
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(
            max_workers=BLOCKING_WORKERS, thread_name_prefix="vmatlas-http"
        )
    )

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the worker pool, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def on_server(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """A domain coroutine (``services.queries.hosts()``, ...) run on the server's
        loop, awaited from the HTTP listener's."""
        if self.server_loop is None:
            raise errors.Unavailable("this listener has no server behind it")
        future = asyncio.run_coroutine_threadsafe(coroutine, self.server_loop)
        return await asyncio.wrap_future(future)


SERVICES: Final = web.AppKey("vmatlas_services", HttpServices)

# A route hook registers routes on the application: ``hook(app)``. Handlers must be
# marked with access.requires(role) or access.public, or they are refused.
RouteHook = Callable[[web.Application], None]


def make_app(
    services: HttpServices, routes: Sequence[RouteHook], *, tokens: TokenStore | None = None
) -> web.Application:
    """The one application factory: access control first, then every route hook's routes."""
    app = web.Application(middlewares=[access_middleware], client_max_size=1024 * 1024)
    app[SERVICES] = services
    app[TOKENS] = tokens
    for hook in routes:
        hook(app)
    return app


def _bind(address: str) -> socket.socket:
    host, port = split_address(address, port_zero=True)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family = infos[0][0]
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise errors.Unavailable(f"cannot listen on {address}: {exc.strerror or exc}") from None


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise errors.InvalidArgument(f"cannot use TLS certificate {cert}: {exc}") from None
    return context


class HttpListener:
    """One HTTP(S) listener serving ``make_app(services, routes)``; :meth:`start` and
    :meth:`stop` go with the server's."""

    def __init__(self, config: HttpConfig, services: HttpServices, routes: Sequence[RouteHook]):
        self.config = config
        self.services = services
        self._ssl = (
            tls_context(config.tls_cert, config.tls_key)
            if config.tls_cert and config.tls_key
            else None
        )
        self.app = make_app(services, routes, tokens=config.tokens)
        self._socket = _bind(config.listen)
        self.port: int = self._socket.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="vmatlas-http", daemon=True)

    @property
    def url(self) -> str:
        host = split_address(self.config.listen, port_zero=True)[0]
        return f"{'https' if self._ssl else 'http'}://{join_address(host, self.port)}/"

    def start(self) -> HttpListener:
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise errors.Unavailable(f"the HTTP listener failed to start: {self._failure}")
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start_site())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _start_site(self) -> None:
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_SECONDS
        )
        await self._runner.setup()
        site = web.SockSite(self._runner, self._socket, ssl_context=self._ssl)
        await site.start()

    def stop(self) -> None:
        """Stop accepting, give requests in flight up to ``SHUTDOWN_SECONDS``, close.
        Later calls do nothing."""
        if not self._thread.is_alive():
            self._socket.close()
            return
        runner = self._runner

        async def shutdown() -> None:
            if runner is not None:
                await runner.cleanup()

        future = asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        with contextlib.suppress(Exception):
            future.result(SHUTDOWN_SECONDS + 5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._socket.close()
        self.services.executor.shutdown(wait=False, cancel_futures=True)
