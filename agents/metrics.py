"""``vmatlas agent --metrics HOST:PORT``: this host's metrics (:mod:`vmatlas.metrics`) for
Prometheus, for people who scrape every node and run no server.

Imported only when ``--metrics`` is given: the agent at rest loads neither
prometheus_client nor an HTTP server otherwise. The listener is the standard library's
threading HTTP server (a scrape every few seconds needs nothing more), with the agent's
TLS certificate and tokens when it has them; a token needs the ``scrape`` role or above.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from vmatlas import errors
from vmatlas.agents.base import Reader
from vmatlas.fleet import FleetProcess, HostStatus
from vmatlas.metrics import DEFAULT_SETTINGS, FleetCollector, MetricsSettings
from vmatlas.security.tokens import Role, TokenStore

log = logging.getLogger(__name__)

# A sweep of every process costs about 2 ms a process; scrapes closer together than
# this share one.
SWEEP_CACHE_SECONDS = 5.0


class HostSource:
    """This host as the metrics see a fleet of one: a sweep of the reader, reused for
    ``SWEEP_CACHE_SECONDS``."""

    def __init__(self, reader: Reader, cache_seconds: float = SWEEP_CACHE_SECONDS):
        self.reader = reader
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._taken = -float("inf")
        self._value: tuple[list[HostStatus], list[FleetProcess]] = ([], [])
        self._started = time.time()

    def __call__(self) -> tuple[list[HostStatus], list[FleetProcess]]:
        with self._lock:
            if time.monotonic() - self._taken >= self.cache_seconds:
                self._value = self._sweep()
                self._taken = time.monotonic()
            return self._value

    def _sweep(self) -> tuple[list[HostStatus], list[FleetProcess]]:
        host = self.reader.host()
        items: list[FleetProcess] = []
        denied = 0
        for result in self.reader.process_summaries():
            if isinstance(result, errors.AccessDenied):
                denied += 1
            elif not isinstance(result, errors.Error):
                items.append(FleetProcess(host.host_id, result))
        now = time.time()
        status = HostStatus(
            host,
            online=True,
            first_seen_time=self._started,
            last_seen_time=now,
            process_count=len(items),
            access_denied_count=denied,
        )
        return [status], items


def _handler(
    registry: CollectorRegistry, tokens: TokenStore | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vmatlas-agent"

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self._plain(404, "not found: only /metrics is served here\n")
                return
            if tokens is not None:
                header = self.headers.get("Authorization", "")
                token = header[7:].strip() if header[:7].lower() == "bearer " else ""
                entry = tokens.lookup(token) if token else None
                if entry is None:
                    self._plain(401, "a bearer token is required\n")
                    return
                if entry.role < Role.SCRAPE:
                    self._plain(403, f"role {entry.role} may not read /metrics\n")
                    return
            try:
                body = generate_latest(registry)
            except Exception:
                log.exception("collecting metrics failed")
                self._plain(500, "internal error\n")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _plain(self, status: int, text: str) -> None:
            body = text.encode()
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="vmatlas"')
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics: " + format, *args)

    return Handler


class AgentMetricsServer:
    """``/metrics`` for this host on ``address``, in a thread of its own."""

    def __init__(
        self,
        reader: Reader,
        address: str,
        *,
        settings: MetricsSettings = DEFAULT_SETTINGS,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tokens: TokenStore | None = None,
    ):
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise errors.InvalidArgument(f"bad --metrics address {address!r}: expected HOST:PORT")
        self.registry = CollectorRegistry()
        self.registry.register(FleetCollector(HostSource(reader), settings))
        handler = _handler(self.registry, tokens)
        server_class = type(
            "MetricsHTTPServer",
            (ThreadingHTTPServer,),
            {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET},
        )
        try:
            self.httpd = server_class((host, int(port)), handler)
        except OSError as exc:
            raise errors.Unavailable(f"cannot listen on {address}: {exc.strerror or exc}") from None
        self.tls = bool(tls_cert and tls_key)
        if tls_cert and tls_key:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(tls_cert, tls_key)
            # The handshake happens in each request's thread, not in the accepting one,
            # so a client that never finishes it holds up nobody else.
            self.httpd.socket = context.wrap_socket(
                self.httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self.host = host
        self.port: int = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="vmatlas-metrics", daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/metrics"

    def start(self) -> AgentMetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
