"""Per-host readers and the agent service.

:func:`default_reader` picks the reader for the running OS once; everything above it
works on the :class:`~vmatlas.agents.base.Reader` protocol.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING

from vmatlas.agents.base import Reader
from vmatlas.agents.core import WindowsView
from vmatlas.model import Snapshot

if TYPE_CHECKING:
    from vmatlas.agents.windows.wine import WineView


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
    the native view is the Windows view). It loads the Windows reader and starts Wine
    only when first asked, and answers FailedPrecondition then if Wine or MinGW-w64 is
    missing."""
    if not sys.platform.startswith("linux"):
        return None
    return _WineViewOnFirstUse(host_id)


class _WineViewOnFirstUse:
    """:class:`~vmatlas.agents.windows.wine.WineView`, imported and made on the first
    call: an agent or a command that is never asked for the Windows view does not load
    the Windows reader, ctypes and the helper's tooling."""

    def __init__(self, host_id: str | None):
        self._host_id = host_id
        self._view: WineView | None = None
        self._lock = threading.Lock()

    def __call__(self, pid: int, include_free: bool, include_residency: bool) -> Snapshot:
        with self._lock:
            if self._view is None:
                from vmatlas.agents.windows.wine import WineView

                self._view = WineView(host_id=self._host_id)
            view = self._view
        return view(pid, include_free, include_residency)

    def close(self) -> None:
        with self._lock:
            view, self._view = self._view, None
        if view is not None:
            view.close()


__all__ = ["Reader", "default_reader", "windows_view"]
