"""This host read directly (``--local``): the agent's answers without gRPC, so that
neither grpc nor the wire schema is loaded."""

from __future__ import annotations

from typing import Any

from vmatlas.agents import default_reader, windows_view
from vmatlas.agents.core import Agent
from vmatlas.model import ProcessOrder, Snapshot, SnapshotView


class LocalSource:
    """This host read directly, with the same calls as :class:`Client`."""

    def __init__(self) -> None:
        self._view = windows_view()
        self.agent = Agent(default_reader(), windows_view=self._view)

    def processes(self, *, order: str = "regions", limit: int = 0, name: str = "") -> Any:
        # The client's result type, without connecting anywhere.
        from vmatlas.client import ProcessList

        items, denied = self.agent.process_list(ProcessOrder.parse(order), limit, name)
        return ProcessList(items, self.agent.reader.host(), denied)

    def snapshot(
        self,
        pid: int,
        *,
        include_free: bool = False,
        include_residency: bool = False,
        view: SnapshotView = SnapshotView.NATIVE,
    ) -> Snapshot:
        return self.agent.snapshot(pid, include_free, include_residency, int(view))

    def close(self) -> None:
        close = getattr(self._view, "close", None)
        if close is not None:
            close()
