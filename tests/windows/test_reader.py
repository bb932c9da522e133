"""The Windows reader against real Win32 (Wine): a planted layout, read from outside."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vmatlas import errors
from vmatlas.agents.windows import WindowsReader
from vmatlas.agents.windows.win32 import Win32Api
from vmatlas.agents.windows.wine import WINE_LOADERS, WineApi, WineView
from vmatlas.model import (
    OperatingSystem,
    Protection,
    Region,
    RegionState,
    RegionType,
    Snapshot,
    SnapshotView,
)

from .planting import Planter, assert_matches_walk

KIB = 1024
PAGE = 4 * KIB
GRANULARITY = 64 * KIB


@pytest.fixture(scope="module")
def reader(wine_api: WineApi) -> WindowsReader:
    return WindowsReader(wine_api)


@pytest.fixture(scope="module")
def snapshot(reader: WindowsReader, planter: Planter) -> Snapshot:
    return reader.snapshot(planter.windows_pid, include_free=True)


def region_at(snapshot: Snapshot, address: int) -> Region:
    for region in snapshot.regions.rows():
        if region.start <= address < region.end:
            return region
    raise AssertionError(f"no region holds {address:#x}")


def regions_of(snapshot: Snapshot, allocation_base: int) -> list[Region]:
    return [r for r in snapshot.regions.rows() if r.allocation_base == allocation_base]


def test_host_facts(reader: WindowsReader) -> None:
    host = reader.host()
    assert host.os == OperatingSystem.WINDOWS
    assert host.page_size_bytes == PAGE
    assert host.allocation_granularity_bytes == GRANULARITY
    assert host.user_address_min == 0x10000
    assert host.user_address_max == 0x7FFFFFFF0000
    assert host.max_map_count == 0


def test_process_identity(reader: WindowsReader, planter: Planter, snapshot: Snapshot) -> None:
    assert planter.windows_pid in reader.pids()
    process = reader.process(planter.windows_pid)
    assert process == snapshot.process
    assert process.name == "planter.exe"
    assert process.executable.endswith("\\planter.exe")
    assert process.pointer_bits == 64
    assert abs(process.start_time - time.time()) < 600
    assert (process.user_address_min, process.user_address_max) == (0x10000, 0x7FFFFFFF0000)


def test_reserve_then_commit_second_page(snapshot: Snapshot, planter: Planter) -> None:
    base = planter.plants["reserved"]
    rows = regions_of(snapshot, base)
    assert [(r.start - base, r.size, r.state) for r in rows] == [
        (0, PAGE, RegionState.RESERVED),
        (PAGE, PAGE, RegionState.COMMITTED),
        (2 * PAGE, 2 * PAGE, RegionState.RESERVED),
    ]
    assert {r.type for r in rows} == {RegionType.PRIVATE}
    assert rows[1].protection == Protection.READ | Protection.WRITE
    assert rows[0].protection == rows[2].protection == Protection.NONE
    assert {r.allocation_protection for r in rows} == {Protection.READ | Protection.WRITE}


def test_small_allocations_waste_the_rest_of_their_granule(
    snapshot: Snapshot, planter: Planter
) -> None:
    first, second = planter.plants["small1"], planter.plants["small2"]
    assert first % GRANULARITY == second % GRANULARITY == 0
    assert abs(second - first) == GRANULARITY
    for base in (first, second):
        (row,) = regions_of(snapshot, base)
        assert (row.start, row.size, row.state) == (base, PAGE, RegionState.COMMITTED)
        after = region_at(snapshot, base + PAGE)
        assert after.state == RegionState.FREE
        assert after.start == base + PAGE and after.end >= base + GRANULARITY
    # Unusable bytes: the free space up to the next 64 KiB boundary after every
    # allocation, worked out here from the rows the reader listed.
    free = [r for r in snapshot.regions.rows() if r.state == RegionState.FREE]
    expected = sum(min(r.size, -r.start % GRANULARITY) for r in free)
    assert snapshot.summary.unusable_bytes == expected
    assert expected >= 2 * (GRANULARITY - PAGE)


def test_protection_modifiers(snapshot: Snapshot, planter: Planter) -> None:
    guard = region_at(snapshot, planter.plants["guard"])
    assert guard.protection == Protection.READ | Protection.WRITE | Protection.GUARD
    assert guard.protection_raw == 0x104
    nocache = region_at(snapshot, planter.plants["nocache"])
    assert nocache.protection == Protection.READ | Protection.WRITE | Protection.NO_CACHE
    assert nocache.protection_raw == 0x204
    executable = region_at(snapshot, planter.plants["executable"])
    assert executable.protection == Protection.READ | Protection.WRITE | Protection.EXECUTE
    assert snapshot.summary.guard_region_count >= 1


def test_decommit_and_split(snapshot: Snapshot, planter: Planter) -> None:
    base = planter.plants["decommitted"]
    assert [(r.start - base, r.state) for r in regions_of(snapshot, base)] == [
        (0, RegionState.COMMITTED),
        (PAGE, RegionState.RESERVED),
        (2 * PAGE, RegionState.COMMITTED),
    ]
    base = planter.plants["split"]
    rw, ro = Protection.READ | Protection.WRITE, Protection.READ
    assert [(r.start - base, r.protection) for r in regions_of(snapshot, base)] == [
        (0, rw),
        (PAGE, ro),
        (2 * PAGE, rw),
    ]


def test_file_views(snapshot: Snapshot, planter: Planter) -> None:
    shared = region_at(snapshot, planter.plants["view"])
    private = region_at(snapshot, planter.plants["cowview"])
    for view in (shared, private):
        assert view.type == RegionType.MAPPED
        assert view.path.endswith("\\view.bin") and view.path[1] == ":"
    assert shared.protection == Protection.READ | Protection.WRITE | Protection.SHARED
    assert private.protection == Protection.READ | Protection.WRITE | Protection.COPY_ON_WRITE


def test_images(snapshot: Snapshot, planter: Planter) -> None:
    exe = regions_of(snapshot, planter.plants["exe"])
    kernel32 = regions_of(snapshot, planter.plants["kernel32"])
    assert exe and kernel32
    assert {r.type for r in exe + kernel32} == {RegionType.IMAGE}
    assert {r.path.lower().rsplit("\\", 1)[-1] for r in exe} == {"planter.exe"}
    assert {r.path.lower().rsplit("\\", 1)[-1] for r in kernel32} == {"kernel32.dll"}
    code = [r for r in exe if r.protection & Protection.EXECUTE]
    assert code and all(r.protection & Protection.SHARED for r in code)
    # Writable image sections are copy-on-write, never shared.
    for region in exe + kernel32:
        if region.protection & Protection.WRITE:
            assert region.protection & Protection.COPY_ON_WRITE
            assert not region.protection & Protection.SHARED


def test_every_region_equals_the_programs_own_walk(reader: WindowsReader, planter: Planter) -> None:
    before = planter.walk()
    snapshot = reader.snapshot(planter.windows_pid, include_free=True)
    after = planter.walk()
    assert before == after, "the planter's layout moved while it was read"
    assert_matches_walk(snapshot, before)


def test_free_regions_only_when_asked(
    reader: WindowsReader, planter: Planter, snapshot: Snapshot
) -> None:
    plain = reader.snapshot(planter.windows_pid)
    assert not plain.includes_free
    assert RegionState.FREE not in plain.regions.state
    assert len(plain.regions) == snapshot.summary.region_count
    assert plain.summary == reader.process_summary(planter.windows_pid).summary


def test_nonexistent_pid(reader: WindowsReader) -> None:
    missing = 0x7FFFFFF0
    with pytest.raises(errors.NoSuchProcess):
        reader.snapshot(missing)
    with pytest.raises(errors.NoSuchProcess):
        reader.process(missing)


def test_exited_process(reader: WindowsReader, short_planter: Planter) -> None:
    pid = short_planter.windows_pid
    short_planter.exit()
    with pytest.raises(errors.NoSuchProcess):
        reader.snapshot(pid)


class _ExitOnWalk:
    """The real API, with the target made to exit just as its walk begins."""

    def __init__(self, api: WineApi, planter: Planter):
        self._api, self._planter = api, planter

    def __getattr__(self, name: str) -> object:
        return getattr(self._api, name)

    def virtual_query_walk(self, handle: int, start: int, end: int) -> list[bytes]:
        self._planter.exit()
        return self._api.virtual_query_walk(handle, start, end)


def test_process_exits_mid_walk(wine_api: WineApi, short_planter: Planter) -> None:
    api: Win32Api = _ExitOnWalk(wine_api, short_planter)  # type: ignore[assignment]
    with pytest.raises(errors.NoSuchProcess):
        WindowsReader(api).snapshot(short_planter.windows_pid)


def test_wine_view_maps_a_linux_pid(
    planter: Planter, wine_env: dict[str, str], snapshot: Snapshot
) -> None:
    view = WineView(wine_env["WINEPREFIX"], cache_dir=wine_env["XDG_CACHE_HOME"])
    try:
        linux_pid = planter.process.pid
        assert view.resolve(linux_pid) == (
            str(Path(wine_env["WINEPREFIX"]).resolve()),
            planter.windows_pid,
        )
        by_linux = view(linux_pid, True, False)
        by_windows = view(planter.windows_pid, True, False)
    finally:
        view.close()
    assert by_linux.view == by_windows.view == SnapshotView.WINDOWS
    assert by_linux.process.pid == planter.windows_pid
    assert by_linux.regions == by_windows.regions == snapshot.regions


@pytest.mark.skipif(
    not os.access(WINE_LOADERS[0], os.X_OK), reason=f"no {WINE_LOADERS[0]} on this system"
)
def test_the_distribution_loader_serves_without_a_wine_command(
    wine_env: dict[str, str], reader: WindowsReader
) -> None:
    """Debian's wine64 alone puts no `wine` on PATH: the reader then runs the loader."""
    with WineApi(wine_env["WINEPREFIX"], wine="no-wine-command-here", env=wine_env) as api:
        assert api.loader == WINE_LOADERS[0]
        assert WindowsReader(api).host() == reader.host()
