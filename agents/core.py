"""What an agent answers, apart from how it is asked.

The gRPC service (:class:`vmatlas.agents.service.AgentServicer`) and the command
line's ``--local`` source both answer through :class:`Agent`; only the service loads
grpc and the wire schema.
"""

from __future__ import annotations

from collections.abc import Callable

from vmatlas import errors
from vmatlas.agents.base import Reader
from vmatlas.model import OperatingSystem, ProcessOrder, ProcessSummary, Snapshot, SnapshotView

# (pid, include_free, include_residency) -> the Win32 view of a Wine process.
WindowsView = Callable[[int, bool, bool], Snapshot]


class Agent:
    """One host's processes and snapshots, read by ``reader``; the Windows view of
    Wine processes through ``windows_view`` where there is one."""

    def __init__(self, reader: Reader, windows_view: WindowsView | None = None):
        self.reader = reader
        self.windows_view = windows_view

    def process_list(
        self, order: ProcessOrder, limit: int, name: str
    ) -> tuple[list[ProcessSummary], int]:
        """Summaries of the processes whose name contains ``name``, in ``order``, at
        most ``limit`` (0: all); and how many processes could not be read."""
        items: list[ProcessSummary] = []
        denied = 0
        for item in self.reader.process_summaries():
            if isinstance(item, errors.AccessDenied):
                denied += 1
            elif isinstance(item, ProcessSummary) and (not name or name in item.process.name):
                items.append(item)
        return order.sort(items, limit), denied

    def snapshot(
        self, pid: int, include_free: bool, include_residency: bool, view: int
    ) -> Snapshot:
        if pid == 0:
            raise errors.InvalidArgument("pid must be given (pid 0 is not a process)")
        if view == SnapshotView.WINDOWS and self.reader.os != OperatingSystem.WINDOWS:
            if self.windows_view is None:
                raise errors.FailedPrecondition(
                    "the Windows view needs Wine and the vmatlas Wine helper on this host"
                )
            return self.windows_view(pid, include_free, include_residency)
        if view not in (SnapshotView.UNSPECIFIED, SnapshotView.NATIVE, SnapshotView.WINDOWS):
            raise errors.InvalidArgument(f"unknown snapshot view {view}")
        return self.reader.snapshot(
            pid, include_free=include_free, include_residency=include_residency
        )
