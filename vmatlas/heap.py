"""The heap of a resident vmatlas process: an agent or a server.

A capture of a large process, or the decode of its region table, allocates a few MiB of
columns and frees them once the answer is sent. glibc gives blocks that size back to
the kernel as soon as they are freed (its mmap and trim thresholds), so the next
capture takes a page fault on every page again: about 1,200 faults, 2 to 3 ms of a
45 ms snapshot of 65,500 regions, paid on every call by the agent and again by the
server. A resident process therefore keeps what it frees while it is working, and
gives it back once it has been quiet for a while, so that an agent at rest stays small.

Only glibc is tuned; elsewhere (musl, Windows) :func:`keep_freed` does nothing. Limits
the operator set through glibc's own environment (``MALLOC_*_``, ``GLIBC_TUNABLES``)
are left as they are.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Blocks up to this size come from the heap and stay there when freed (glibc's own
# ceiling for the mmap threshold on 64-bit); at most this much free memory is kept at
# the top of each arena.
KEEP_BYTES = 32 * 1024 * 1024

# Heaps for threads: each keeps up to KEEP_BYTES free, and the Python code of a process
# runs one thread at a time anyway (the GIL), so a few are enough.
ARENAS = 2

# Quiet: at most this share of a core over IDLE_SECONDS, after at least WORK_SECONDS
# of CPU since memory was last given back.
IDLE_SECONDS = 5.0
QUIET_SHARE = 0.02
WORK_SECONDS = 0.05

_libc: Any = None


def _glibc() -> Any:
    """glibc's mallopt and malloc_trim (ctypes), or None when this is not glibc."""
    global _libc
    if _libc is None:
        try:
            version = os.confstr("CS_GNU_LIBC_VERSION")
        except (AttributeError, ValueError, OSError):
            version = None
        if not version:
            _libc = False
            return None
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        libc.malloc_trim.restype = ctypes.c_int
        _libc = libc
    return _libc or None


def _operator_set() -> bool:
    return any(
        name.startswith("MALLOC_") and name.endswith("_") for name in os.environ
    ) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def keep_freed() -> bool:
    """Keep freed blocks up to :data:`KEEP_BYTES` in the heap for the next capture
    instead of handing them back to the kernel at once. Whether it was applied."""
    libc = _glibc()
    if libc is None or _operator_set():
        return False
    # The trim threshold first: setting the mmap threshold also stops glibc from
    # moving either threshold on its own.
    applied = all(
        libc.mallopt(parameter, value)
        for parameter, value in (
            (_M_TRIM_THRESHOLD, KEEP_BYTES),
            (_M_MMAP_THRESHOLD, KEEP_BYTES),
            (_M_ARENA_MAX, ARENAS),
        )
    )
    if not applied:
        log.debug("malloc thresholds not set: glibc refused them")
    return applied


def give_back() -> bool:
    """Hand the heap's free memory back to the kernel now (``malloc_trim``). Whether
    any was given back."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


class IdleRelease:
    """Gives the heap's free memory back at the first tick (start-up is over), then
    whenever the process has been quiet for :data:`IDLE_SECONDS` after doing some work.
    :meth:`tick` is called every so often (the main thread's wait for a stop signal);
    the clocks are injected for tests."""

    def __init__(
        self,
        *,
        idle_seconds: float = IDLE_SECONDS,
        quiet_share: float = QUIET_SHARE,
        work_seconds: float = WORK_SECONDS,
        cpu: Any = time.process_time,
        clock: Any = time.monotonic,
        release: Any = give_back,
    ) -> None:
        self.idle_seconds = idle_seconds
        self.quiet_share = quiet_share
        self.work_seconds = work_seconds
        self._cpu, self._clock, self._release = cpu, clock, release
        self._work = 0.0
        self._mark = (self._clock(), self._cpu())
        self._started = False

    def tick(self) -> None:
        now, cpu = self._clock(), self._cpu()
        if not self._started:
            # The first tick comes once the process is up: what its start-up freed
            # (imports, the server's set-up) goes back before it settles at rest.
            self._started = True
            self._mark = (now, cpu)
            self._release()
            return
        since, cpu_then = self._mark
        if now - since < self.idle_seconds:
            return
        used = cpu - cpu_then
        self._work += used
        self._mark = (now, cpu)
        if self._work >= self.work_seconds and used <= self.quiet_share * (now - since):
            self._release()
            self._work = 0.0


def resident() -> Callable[[], None] | None:
    """What a resident process calls as it starts, before its threads: :func:`keep_freed`,
    and the tick of an :class:`IdleRelease` to call while it runs (None where nothing
    was changed)."""
    return IdleRelease().tick if keep_freed() else None
