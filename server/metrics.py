"""What the server's ``/metrics`` shows besides :mod:`vmatlas.server.telemetry`'s
counters: the fleet (:mod:`vmatlas.metrics`, read from the store at each scrape) and
the agents connected now."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from vmatlas.fleet import FleetProcess, HostStatus
from vmatlas.metrics import DEFAULT_SETTINGS, FleetCollector, MetricsSettings


def register_server_metrics(
    registry: CollectorRegistry,
    store: Any,
    hub: Any,
    settings: MetricsSettings = DEFAULT_SETTINGS,
) -> None:
    connected = Gauge(
        "vmatlas_server_agents_connected",
        "Agents holding a stream to this server now.",
        registry=registry,
    )
    connected.set_function(lambda: float(len(hub.online())))

    def read() -> tuple[list[HostStatus], list[FleetProcess]]:
        return store.hosts(), store.latest_summaries_all_hosts()

    registry.register(FleetCollector(read, settings))
