"""Assembling the fleet server: store, hub, services, retention; started and stopped
as one thing by ``vmatlas server`` and ``vmatlas up``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1.health import HealthServicer

from vmatlas import defaults
from vmatlas.grpcutil import DEFAULT_GRACE_SECONDS, StopSignals, build_server
from vmatlas.security.auth import AuthInterceptor
from vmatlas.security.policy import SERVER_POLICY
from vmatlas.server.domain.analysis import Analysis
from vmatlas.server.domain.fleet import DEFAULT_AGENT_TIMEOUT_SECONDS, FleetQueries
from vmatlas.server.domain.hub import DEFAULT_HEARTBEAT_SECONDS, Hub
from vmatlas.server.rpc.analysis import SERVICE_NAME as ANALYSIS_SERVICE
from vmatlas.server.rpc.analysis import AnalysisServicer
from vmatlas.server.rpc.fleet import SERVICE_NAME as FLEET_SERVICE
from vmatlas.server.rpc.fleet import FleetServicer
from vmatlas.server.rpc.hub import SERVICE_NAME as HUB_SERVICE
from vmatlas.server.rpc.hub import AgentHubServicer
from vmatlas.server.store import Store, open_store, sqlite_url
from vmatlas.v1 import analysis_pb2_grpc, fleet_pb2_grpc, hub_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_LISTEN = defaults.SERVER_LISTEN
DEFAULT_RETAIN_SECONDS = 30 * 86400.0
# Threads beside the agents' streams for clients' calls.
QUERY_WORKERS = 32


default_data_dir = defaults.data_dir


@dataclass
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    data_dir: str = field(default_factory=default_data_dir)
    # The store's URL (vmatlas.server.store.open_store); empty: SQLite in data_dir.
    store_url: str = ""
    # History older than this is pruned; 0 keeps everything.
    retain_seconds: float = DEFAULT_RETAIN_SECONDS
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    # 0 means three heartbeat intervals.
    offline_after_seconds: float = 0.0
    agent_timeout_seconds: float = DEFAULT_AGENT_TIMEOUT_SECONDS
    max_agents: int = 1000
    # TLS and authentication (vmatlas.security.options.server_security). Without them
    # the access policy still holds and every caller is the anonymous admin: for
    # loopback and tests only, which the command line enforces.
    credentials: grpc.ServerCredentials | None = None
    interceptors: Sequence[grpc.ServerInterceptor] = field(
        default_factory=lambda: [AuthInterceptor(SERVER_POLICY, tokens=None)]
    )


class FleetServer:
    """The server: its store, its domain (``hub``, ``queries``, ``analysis``: see
    :mod:`vmatlas.server.domain`) and the gRPC front end over it. ``extra_services``
    are more ``(add_fn, servicer, name)`` triples for the same port (``vmatlas up``
    adds the local agent's service)."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        store: Store | None = None,
        extra_services: Sequence[tuple[Any, Any, str]] = (),
    ):
        self.config = config
        owned = store is None
        self.store: Store = (
            store
            if store is not None
            else open_store(config.store_url or sqlite_url(config.data_dir))
        )
        try:
            self.hub = Hub(
                self.store,
                heartbeat_seconds=config.heartbeat_seconds,
                offline_after_seconds=config.offline_after_seconds,
                max_agents=config.max_agents,
            )
            self.queries = FleetQueries(
                self.store, self.hub, agent_timeout_seconds=config.agent_timeout_seconds
            )
            self.analysis = Analysis(self.store)
            try:
                self.server, self.port, self.health = self._build(extra_services)
            except BaseException:
                self.hub.stop()
                raise
        except BaseException:
            # A server that never started leaves nothing open (the port may be taken).
            if owned:
                self.store.close()
            raise
        self._stop = threading.Event()
        self._stopped = False
        self._stopping = threading.Lock()
        self._pruner = threading.Thread(target=self._prune_loop, name="vmatlas-prune", daemon=True)

    def _build(
        self, extra_services: Sequence[tuple[Any, Any, str]]
    ) -> tuple[grpc.Server, int, HealthServicer]:
        config = self.config
        services = [
            (
                fleet_pb2_grpc.add_FleetServiceServicer_to_server,
                FleetServicer(self.queries),
                FLEET_SERVICE,
            ),
            (
                hub_pb2_grpc.add_AgentHubServiceServicer_to_server,
                AgentHubServicer(self.hub),
                HUB_SERVICE,
            ),
            (
                analysis_pb2_grpc.add_AnalysisServiceServicer_to_server,
                AnalysisServicer(self.analysis),
                ANALYSIS_SERVICE,
            ),
            *extra_services,
        ]
        return build_server(
            services=services,
            address=config.listen,
            max_workers=config.max_agents + QUERY_WORKERS,
            interceptors=config.interceptors,
            credentials=config.credentials,
        )

    @property
    def address(self) -> str:
        return f"{self.config.listen.rsplit(':', 1)[0]}:{self.port}"

    def start(self) -> FleetServer:
        self.server.start()
        self._pruner.start()
        return self

    def prune(self) -> int:
        if not self.config.retain_seconds:
            return 0
        removed = self.store.prune(time.time() - self.config.retain_seconds)
        if removed:
            log.info("pruned %d history rows older than the retention", removed)
        return removed

    def _prune_loop(self) -> None:
        period = min(3600.0, max(1.0, self.config.retain_seconds / 10))
        while True:
            try:
                self.prune()
            except Exception:
                log.exception("pruning failed")
            if self._stop.wait(period):
                return

    def stop(
        self,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        *,
        on_draining: Callable[[], None] | None = None,
    ) -> None:
        """The one way the server stops (tests, ``vmatlas server`` and ``vmatlas up``):
        report NOT_SERVING and refuse new calls; run ``on_draining`` (``up`` stops its
        local agent there); let calls in flight finish within the grace, fresh
        snapshots included, so the agents' streams stay open for them; stop pruning
        and close the agents' streams (they reconnect to the next server); wait for
        the calls still running to end (cancelled once the grace is over); close the
        store. Later calls do nothing."""
        with self._stopping:
            if self._stopped:
                return
            self._stopped = True
            self.health.enter_graceful_shutdown()
            stopped = self.server.stop(grace_seconds)
            try:
                if on_draining is not None:
                    on_draining()
            finally:
                self._stop.set()
                self.hub.stop(grace_seconds)
                stopped.wait()
                self.store.close()

    def serve_until_signalled(
        self,
        signals: StopSignals,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        *,
        on_draining: Callable[[], None] | None = None,
    ) -> None:
        """Serve until SIGTERM or SIGINT (caught by ``signals`` since before the server
        started), then :meth:`stop`."""
        try:
            signals.wait()
        finally:
            signals.restore()
            self.stop(grace_seconds, on_draining=on_draining)
