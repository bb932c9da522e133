"""The Windows view's exports (allocation bases and their protections, free and
reserved regions) written from the columns are byte for byte what the first,
row-by-row exporter wrote: on a planted Wine process, read with VirtualQueryEx."""

from __future__ import annotations

import pytest

from tests.test_export import assert_same_exports
from vmatlas.agents.windows import WindowsReader
from vmatlas.agents.windows.wine import WineApi
from vmatlas.model import RegionState

from .planting import Planter


@pytest.mark.parametrize("free", [False, True], ids=["mapped", "free"])
def test_windows_view_exports_unchanged(wine_api: WineApi, planter: Planter, free: bool) -> None:
    snapshot = WindowsReader(wine_api).snapshot(planter.windows_pid, include_free=free)
    assert any(snapshot.regions.allocation_base)
    assert RegionState.RESERVED in snapshot.regions.state
    assert (RegionState.FREE in snapshot.regions.state) == free
    assert_same_exports(snapshot)
