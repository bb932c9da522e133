"""Per-host readers and the agent service.

:func:`default_reader` picks the reader for the running OS once; everything above it
works on the :class:`~vmatlas.agents.base.Reader` protocol.
"""

from __future__ import annotations

import sys

from vmatlas.agents.base import Reader
from vmatlas.agents.service import WindowsView


def default_reader(host_id: str | None = None) -> Reader:
    """The reader for this OS: /proc on Linux, VirtualQueryEx on Windows."""
    if sys.platform.startswith("linux"):
        from vmatlas.agents.linux import LinuxReader

        return LinuxReader(host_id=host_id)
    if sys.platform == "win32":
        from vmatlas.agents.windows import WindowsReader, ctypes_api

        return WindowsReader(ctypes_api(), host_id=host_id)
    raise NotImplementedError(f"vmatlas has no reader for {sys.platform}")


def windows_view(host_id: str | None = None) -> WindowsView | None:
    """The Win32 view of Wine processes, on a Linux host (None elsewhere: on Windows
    the native view is the Windows view). It starts Wine only when first asked, and
    answers FailedPrecondition then if Wine or MinGW-w64 is missing."""
    if not sys.platform.startswith("linux"):
        return None
    from vmatlas.agents.windows.wine import WineView

    return WineView(host_id=host_id)


__all__ = ["Reader", "default_reader", "windows_view"]
