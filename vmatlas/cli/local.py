"""This host read directly (``--local``): the agent's service without gRPC around it."""

from __future__ import annotations

from typing import Any

from vmatlas.agents import default_reader, windows_view
from vmatlas.agents.service import AgentServicer
from vmatlas.model import ProcessOrder, Snapshot, SnapshotView


class LocalSource:
    """This host read directly, with the same calls as :class:`Client`: the agent's
    service without the gRPC around it."""

    def __init__(self) -> None:
        self._view = windows_view()
        self.agent = AgentServicer(default_reader(), windows_view=self._view)

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
