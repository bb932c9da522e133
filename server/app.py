"""Assembling the fleet server: store, domain, gRPC front end, singleton jobs
(retention, offline marking, partition upkeep); started and stopped as one thing by
``vmatlas server`` and ``vmatlas up``.

The server runs on ``grpc.aio`` in one event loop on a thread of its own (so an idle
agent stream costs a queue, not a thread); store calls and other blocking work run on
a thread pool beside it. :class:`FleetServer`'s own methods are plain blocking calls
for the thread that made it (the command line, tests); the domain objects it holds
(``hub``, ``queries``, ``analysis``) document which of their calls suit which thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc
from grpc_health.v1._async import HealthServicer

from vmatlas import defaults, errors
from vmatlas.addresses import join_address, split_address
from vmatlas.grpcutil import DEFAULT_GRACE_SECONDS, StopSignals, build_aio_server
from vmatlas.metrics import DEFAULT_SETTINGS, MetricsSettings
from vmatlas.security.auth import AsyncAuthInterceptor, AuthInterceptor
from vmatlas.security.policy import SERVER_POLICY
from vmatlas.server.domain.analysis import Analysis
from vmatlas.server.domain.fleet import DEFAULT_AGENT_TIMEOUT_SECONDS, FleetQueries
from vmatlas.server.domain.hub import (
    DEFAULT_HEARTBEAT_BUDGET,
    DEFAULT_HEARTBEAT_SECONDS,
    Hub,
    Replica,
)
from vmatlas.server.domain.jobs import JobScheduler, SingletonJobs, server_jobs
from vmatlas.server.rpc.analysis import SERVICE_NAME as ANALYSIS_SERVICE
from vmatlas.server.rpc.analysis import AnalysisServicer
from vmatlas.server.rpc.fleet import SERVICE_NAME as FLEET_SERVICE
from vmatlas.server.rpc.fleet import FleetServicer
from vmatlas.server.rpc.fleet import add_to_server as add_fleet_service
from vmatlas.server.rpc.hub import SERVICE_NAME as HUB_SERVICE
from vmatlas.server.rpc.hub import AgentHubServicer
from vmatlas.server.rpc.replica import SERVICE_NAME as REPLICA_SERVICE
from vmatlas.server.rpc.replica import ReplicaLinks, ReplicaServicer
from vmatlas.server.store import Store, open_store, sqlite_url
from vmatlas.server.telemetry import Telemetry, TimedStore
from vmatlas.v1 import analysis_pb2_grpc, hub_pb2_grpc, replica_pb2_grpc

if TYPE_CHECKING:
    from vmatlas.server.http.listener import HttpConfig, HttpListener

log = logging.getLogger(__name__)

DEFAULT_LISTEN = defaults.SERVER_LISTEN
DEFAULT_RETAIN_SECONDS = 30 * 86400.0
DEFAULT_MAX_AGENTS = defaults.MAX_AGENTS
# How long the loop's leftover tasks get to end once cancelled, when the server closes.
TASKS_END_SECONDS = 5.0

# Threads for blocking work (store calls, building large responses) beside the loop.
BLOCKING_WORKERS = 32
# Threads for servicers that are plain functions (`vmatlas up`'s local agent service).
SYNC_WORKERS = 16

T = TypeVar("T")


default_data_dir = defaults.data_dir


@dataclass
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    data_dir: str = field(default_factory=default_data_dir)
    # The store's URL (vmatlas.server.store.open_store); empty: SQLite in data_dir.
    store_url: str = ""
    # History older than this is pruned; 0 keeps everything.
    retain_seconds: float = DEFAULT_RETAIN_SECONDS
    # The shortest heartbeat interval agents are told; longer when this server holds
    # more agents than heartbeat_budget heartbeats a second allow (0: no limit).
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    heartbeat_budget: float = DEFAULT_HEARTBEAT_BUDGET
    # 0 means six heartbeat intervals (the shortest, --heartbeat).
    offline_after_seconds: float = 0.0
    agent_timeout_seconds: float = DEFAULT_AGENT_TIMEOUT_SECONDS
    max_agents: int = DEFAULT_MAX_AGENTS
    # HOST:PORT where the other replicas on the same store reach this one; it also
    # names this replica in ownership records. Empty: the listening address (this
    # machine's name for a wildcard host), with the bound port for port 0.
    advertise: str = ""
    # TLS and authentication (vmatlas.security.options.server_security). Without them
    # the access policy still holds and every caller is the anonymous admin: for
    # loopback and tests only, which the command line enforces.
    credentials: grpc.ServerCredentials | None = None
    # This server's side of the link to the other replicas (mutual TLS with its
    # replica certificate); None: plain text, for loopback.
    replica_credentials: grpc.ChannelCredentials | None = None
    # Auth interceptors made for a thread-pool server are turned into their grpc.aio
    # twins (the same decisions, tokens and rate-limit buckets).
    interceptors: Sequence[grpc.aio.ServerInterceptor | AuthInterceptor] = field(
        default_factory=lambda: [AsyncAuthInterceptor(SERVER_POLICY, tokens=None)]
    )
    # The HTTP listener (/metrics and the routes of vmatlas.server.http.routes); None
    # serves none. The command line turns it on by default.
    http: HttpConfig | None = None
    # Which processes and groups /metrics shows (vmatlas.metrics).
    metrics: MetricsSettings = DEFAULT_SETTINGS


def advertised_parts(advertise: str, listen: str) -> tuple[str, int]:
    """The host and port (0: the one bound) of where other replicas reach a server
    listening on ``listen``: ``advertise`` when given, otherwise the listening
    address, with this machine's name for a wildcard host. InvalidArgument when the
    address is not HOST:PORT."""
    try:
        host, port = split_address(advertise or listen, port_zero=True)
    except errors.InvalidArgument:
        flag, value = ("--advertise", advertise) if advertise else ("--listen", listen)
        raise errors.InvalidArgument(f"{flag} {value!r}: use HOST:PORT") from None
    if not advertise and host in ("0.0.0.0", "::"):
        host = socket.getfqdn()
    return host, port


def advertised_address(advertise: str, listen: str, port: int) -> str:
    """:func:`advertised_parts` as HOST:PORT for a server bound to ``port``."""
    host, wanted = advertised_parts(advertise, listen)
    return join_address(host, wanted or port)


def keepalive_for(offline_after_seconds: float) -> tuple[float, float]:
    """The server's transport keepalive (ping after, wait for the answer) that finds an
    agent whose connection went silent (network gone, machine off) within the offline
    window: its stream is cancelled, and its host recorded offline, at once. gRPC's C
    core does the pinging, whatever the heartbeat interval agents were told."""
    return offline_after_seconds * 2 / 3, offline_after_seconds / 3


class FleetServer:
    """The server: its store, its domain (``hub``, ``queries``, ``analysis``: see
    :mod:`vmatlas.server.domain`) and the gRPC front end over it. ``extra_services``
    are more ``(add_fn, servicer, name)`` triples for the same port (``vmatlas up``
    adds the local agent's service, whose plain methods run on a thread pool)."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        store: Store | None = None,
        extra_services: Sequence[tuple[Any, Any, str]] = (),
    ):
        self.config = config
        # InvalidArgument before anything starts.
        advertised_host, advertised_port = advertised_parts(config.advertise, config.listen)
        owned = store is None
        self.telemetry = Telemetry()
        inner: Store = (
            store
            if store is not None
            else open_store(config.store_url or sqlite_url(config.data_dir))
        )
        self.store: Store = cast(Store, TimedStore(inner, self.telemetry))
        self.http: HttpListener | None = None
        self.executor = ThreadPoolExecutor(BLOCKING_WORKERS, thread_name_prefix="vmatlas-store")
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._run_loop, name="vmatlas-server-loop", daemon=True
        )
        self._loop_thread.start()
        try:
            self.server, self.port, self.health = self._on_loop(self._build(extra_services))
            address = join_address(advertised_host, advertised_port or self.port)
            self.hub.replica = Replica(replica_id=address, address=address)
            if config.http is not None:
                try:
                    self.http = self._build_http(config.http)
                except BaseException:
                    # Releases the bound gRPC port and the agents' hub.
                    self._on_loop(self.server.stop(None))
                    self._on_loop(self.hub.stop())
                    raise
        except BaseException:
            # A server that never started leaves nothing open (the port may be taken).
            self._close_loop()
            if owned:
                inner.close()
            raise
        self._stopped = False
        self._stopping = threading.Lock()
        # Retention, offline marking and partition upkeep: on one server of those
        # sharing the store at a time, under leases as long as the hosts' own.
        self.jobs = SingletonJobs(
            self.store,
            self.hub.replica.replica_id,
            server_jobs(
                self.store,
                retain_seconds=config.retain_seconds,
                offline_after_seconds=self.hub.offline_after_seconds,
            ),
            lease_seconds=self.hub.lease_seconds,
        )
        self._scheduler = JobScheduler(self.jobs)

    # -- the loop -------------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _on_loop(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def _close_loop(self) -> None:
        # A task still pending when the loop closes is destroyed unfinished (asyncio
        # warns, and its finally blocks never run): end each first, as asyncio.run does.
        with contextlib.suppress(TimeoutError):
            self._on_loop(self._end_tasks(), timeout=TASKS_END_SECONDS + 1)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join()
        self.loop.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    async def _end_tasks() -> None:
        """Cancel the tasks left on the loop (a stream's reader whose call ended, say)
        and wait for them, then close the asynchronous generators."""
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=TASKS_END_SECONDS)
        await asyncio.get_running_loop().shutdown_asyncgens()

    async def _build(
        self, extra_services: Sequence[tuple[Any, Any, str]]
    ) -> tuple[grpc.aio.Server, int, HealthServicer]:
        config = self.config
        self.peers = ReplicaLinks(lambda: self.hub.replica, config.replica_credentials)
        self.hub = Hub(
            self.store,
            self.executor,
            heartbeat_seconds=config.heartbeat_seconds,
            heartbeat_budget=config.heartbeat_budget,
            offline_after_seconds=config.offline_after_seconds,
            max_agents=config.max_agents,
            telemetry=self.telemetry,
            fencer=self.peers,
        )
        self.queries = FleetQueries(
            self.store,
            self.hub,
            agent_timeout_seconds=config.agent_timeout_seconds,
            peers=self.peers,
        )
        self.analysis = Analysis(self.store)
        services = [
            (
                add_fleet_service,
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
                AnalysisServicer(self.analysis, self.hub.blocking),
                ANALYSIS_SERVICE,
            ),
            (
                replica_pb2_grpc.add_ReplicaServiceServicer_to_server,
                ReplicaServicer(self.queries),
                REPLICA_SERVICE,
            ),
            *extra_services,
        ]
        try:
            return await build_aio_server(
                services=services,
                address=config.listen,
                interceptors=[
                    AsyncAuthInterceptor.of(i) if isinstance(i, AuthInterceptor) else i
                    for i in config.interceptors
                ],
                credentials=config.credentials,
                sync_workers=SYNC_WORKERS,
                keepalive=keepalive_for(self.hub.offline_after_seconds),
            )
        except BaseException:
            await self.hub.stop()
            raise

    # -- running --------------------------------------------------------------------------

    def _build_http(self, config: HttpConfig) -> HttpListener:
        from vmatlas.server.http.listener import HttpListener, HttpServices
        from vmatlas.server.http.routes import ROUTES
        from vmatlas.server.metrics import register_server_metrics

        register_server_metrics(self.telemetry.registry, self.store, self.hub, self.config.metrics)
        services = HttpServices(
            store=self.store,
            hub=self.hub,
            queries=self.queries,
            analysis=self.analysis,
            registry=self.telemetry.registry,
            server_loop=self.loop,
        )
        return HttpListener(config, services, ROUTES)

    @property
    def address(self) -> str:
        host, _ = split_address(self.config.listen, port_zero=True)
        return join_address(host, self.port)

    @property
    def replica(self) -> Replica:
        """This server among the replicas on its store: its id and the address the
        others reach it at (``--advertise``)."""
        return self.hub.replica

    @property
    def http_url(self) -> str | None:
        """Where the HTTP listener serves, or None when it is off."""
        return self.http.url if self.http is not None else None

    def start(self) -> FleetServer:
        self._on_loop(self.server.start())
        self._scheduler.start()
        if self.http is not None:
            self.http.start()
        return self

    def stop(
        self,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        *,
        on_draining: Callable[[], None] | None = None,
    ) -> None:
        """The one way the server stops (tests, ``vmatlas server`` and ``vmatlas up``):
        report NOT_SERVING and refuse new calls; run ``on_draining`` (``up`` stops its
        local agent there); let calls in flight finish within the grace, fresh
        snapshots included, so the agents' streams stay open for them; stop the
        singleton jobs and give their leases up; close the agents' streams (they
        reconnect to the next server); wait for the calls still running to end
        (cancelled once the grace is over); close the store. Later calls do nothing."""
        with self._stopping:
            if self._stopped:
                return
            self._stopped = True
            self._on_loop(self.health.enter_graceful_shutdown())
            if self.http is not None:
                self.http.stop()
            stopped = asyncio.run_coroutine_threadsafe(self.server.stop(grace_seconds), self.loop)
            try:
                if on_draining is not None:
                    on_draining()
            finally:
                self._scheduler.stop()
                self._on_loop(self.hub.stop(grace_seconds))
                stopped.result()
                self._on_loop(self.peers.close())
                # A store write still running (a stream's release, shielded from its
                # cancelled call) commits before the store closes, not beside whatever
                # comes after the server.
                self.executor.shutdown(wait=True, cancel_futures=True)
                self.store.close()
                self._close_loop()

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
