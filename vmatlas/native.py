"""The optional C accelerator, chosen once: ``vmatlas._native`` when it was built and
``VMATLAS_NO_NATIVE`` is not set, otherwise the pure-Python loops.

The accelerator holds loops only (scanning procfs text into columns, gathering values
by index, the summary's sums, the packed-column encode, the checks of a received region
table); every rule those loops serve (what a perms text means, how a path is
classified, what a guard is, which values a column may hold) is decided in Python,
once, and handed to it as tables. Tests switch paths with :func:`use`.
"""

from __future__ import annotations

import importlib
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

_SOURCE = Path(__file__).with_name("_native.c")


def _load() -> tuple[ModuleType | None, bool]:
    """The built extension, or None; and whether one was found built from another
    version of its source (a checkout updated without rebuilding: its calls would not
    match their callers here). An installed package ships no source: nothing to check."""
    try:
        module = importlib.import_module("vmatlas._native")
    except ImportError:
        return None, False
    try:
        source = _SOURCE.read_bytes()
    except OSError:
        return module, False
    if getattr(module, "SOURCE_CRC32", None) != f"{zlib.crc32(source):08x}":
        return None, True
    return module, False


_built, _stale = _load()

# The active accelerator, or None for the pure path; read at each call, not imported.
accel: ModuleType | None = None if os.environ.get("VMATLAS_NO_NATIVE") else _built


def available() -> bool:
    """Whether the C extension was built and imports."""
    return _built is not None


def describe() -> str:
    """One line naming the active capture path, for ``vmatlas --version``."""
    if accel is not None:
        return "native capture (C extension)"
    if _stale:
        return "pure-Python capture (C extension out of date: rebuild it with make install-dev)"
    if _built is None:
        return "pure-Python capture (C extension not built)"
    return "pure-Python capture (VMATLAS_NO_NATIVE set)"


@contextmanager
def use(native: bool) -> Iterator[None]:
    """Run the body on the native path (it must be built) or on the pure one."""
    global accel
    if native and _built is None:
        state = "out of date (make install-dev rebuilds it)" if _stale else "not built"
        raise RuntimeError(f"the vmatlas C extension is {state}")
    saved = accel
    accel = _built if native else None
    try:
        yield
    finally:
        accel = saved
