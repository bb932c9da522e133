"""The server's own health, counted where it happens and exposed on ``/metrics``.

The domain (hub, store calls, fresh snapshots) reports events to one
:class:`Telemetry` object through plain method calls; only this module knows that the
figures end up as Prometheus counters and histograms. Each server has its own registry,
so two servers in one process (tests, ``vmatlas up``) never share a figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from vmatlas import __version__

# A fresh snapshot is a round trip to an agent plus a durable commit: from a few
# milliseconds for a small process to tens of seconds for 65K regions over a slow link.
FRESH_SNAPSHOT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Store calls are local commits and reads: sub-millisecond to about a second.
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# The outcomes a summary push can have; a fixed set keeps the label bounded.
PUSH_STORED = "stored"
PUSH_DUPLICATE = "duplicate"
PUSH_REFUSED = "refused"


class Telemetry:
    """Counters and histograms of one server, on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._pushes = Counter(
            "vmatlas_server_summary_pushes",
            "Summary pushes received from agents, by outcome: stored, duplicate (a replay "
            "already stored) or refused (failed validation; nothing of it stored).",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in (PUSH_STORED, PUSH_DUPLICATE, PUSH_REFUSED):
            self._pushes.labels(outcome)
        self._fresh = Histogram(
            "vmatlas_server_fresh_snapshot_duration_seconds",
            "Time to answer a fresh snapshot through an agent, stored included, by "
            "outcome (ok or error).",
            ["outcome"],
            buckets=FRESH_SNAPSHOT_BUCKETS,
            registry=self.registry,
        )
        for outcome in ("ok", "error"):
            self._fresh.labels(outcome)
        self._store = Histogram(
            "vmatlas_server_store_operation_duration_seconds",
            "Time spent in each store operation (reads and durable writes).",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=self.registry,
        )
        self._store_errors = Counter(
            "vmatlas_server_store_errors",
            "Store operations that raised, by operation.",
            ["operation"],
            registry=self.registry,
        )
        build = Gauge(
            "vmatlas_build_info",
            "Always 1; the labels say which vmatlas build is running.",
            ["version", "python"],
            registry=self.registry,
        )
        import platform

        build.labels(__version__, platform.python_version()).set(1)
        started = Gauge(
            "vmatlas_server_start_time_seconds",
            "When this server started, in seconds since the epoch.",
            registry=self.registry,
        )
        started.set(time.time())

    def push(self, outcome: str) -> None:
        self._pushes.labels(outcome).inc()

    @contextmanager
    def fresh_snapshot(self) -> Iterator[None]:
        """Times one fresh snapshot; an exception counts it as an error."""
        start = time.perf_counter()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        finally:
            self._fresh.labels(outcome).observe(time.perf_counter() - start)

    def store_call(self, operation: str, seconds: float, *, failed: bool = False) -> None:
        self._store.labels(operation).observe(seconds)
        if failed:
            self._store_errors.labels(operation).inc()


# The store methods worth timing: every read and write of the protocol. Anything else
# (attributes, backend-specific helpers) passes through untimed.
_TIMED = frozenset(
    {
        "put_host",
        "renew_hosts",
        "mark_offline",
        "put_summaries",
        "put_snapshot",
        "get_snapshot",
        "latest_snapshot",
        "history",
        "map_count_series",
        "trend_series",
        "hosts",
        "host",
        "processes",
        "latest_summaries_all_hosts",
        "prune",
    }
)


class TimedStore:
    """A store that reports how long each of its operations takes. It delegates
    everything to the store it wraps, so it is that store to every caller."""

    def __init__(self, store: Any, telemetry: Telemetry):
        self._inner = store
        self._telemetry = telemetry

    @property
    def inner(self) -> Any:
        return self._inner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name not in _TIMED or not callable(value):
            return value
        method = cast(Callable[..., Any], value)
        telemetry = self._telemetry

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            failed = True
            try:
                result = method(*args, **kwargs)
                failed = False
                return result
            finally:
                telemetry.store_call(name, time.perf_counter() - start, failed=failed)

        return timed
