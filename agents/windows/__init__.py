"""The Windows reader, and the Windows view of Wine processes on Linux.

:class:`WindowsReader` works through a :class:`~.win32.Win32Api`: :func:`ctypes_api` on
Windows, :class:`~.wine.WineApi` (a helper program under Wine) on Linux.
"""

from __future__ import annotations

from vmatlas.agents.windows.reader import WindowsReader
from vmatlas.agents.windows.win32 import Win32Api


def ctypes_api() -> Win32Api:
    """kernel32 and psapi in this process (64-bit Windows only)."""
    from vmatlas.agents.windows.ctypes_win32 import CtypesApi

    return CtypesApi()


__all__ = ["Win32Api", "WindowsReader", "ctypes_api"]
