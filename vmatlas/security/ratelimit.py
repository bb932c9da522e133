"""Per-client token buckets: each caller may make ``burst`` calls at once, refilled at
``rate_per_second``. Buckets are kept for a bounded number of callers."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from vmatlas import defaults

MAX_TRACKED_CALLERS = 10_000


@dataclass(frozen=True, slots=True)
class RateLimit:
    rate_per_second: float
    burst: int

    def __post_init__(self) -> None:
        if self.rate_per_second <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")

    def __str__(self) -> str:
        return f"{self.rate_per_second:g} calls/s, burst {self.burst}"


DEFAULT_RATE_LIMIT = RateLimit(rate_per_second=defaults.RATE_PER_SECOND, burst=defaults.RATE_BURST)


class RateLimiter:
    """Token buckets keyed by caller. :meth:`allow` takes one token or says no."""

    def __init__(
        self,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_callers: int = MAX_TRACKED_CALLERS,
    ):
        self.limit = limit
        self._clock = clock
        self._max_callers = max_callers
        self._lock = threading.Lock()
        # key -> (tokens left, time they were counted), least recently used first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str) -> bool:
        now = self._clock()
        rate, burst = self.limit.rate_per_second, float(self.limit.burst)
        with self._lock:
            tokens, then = self._buckets.pop(key, (burst, now))
            tokens = min(burst, tokens + (now - then) * rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self._max_callers:
                # The least recently seen caller has been idle longest: its bucket
                # would be (nearly) full again anyway.
                self._buckets.popitem(last=False)
            return allowed
