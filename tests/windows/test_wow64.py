"""32-bit (WOW64) programs: real i686 MinGW builds of the planter, without and with
large-address-aware, run by Wine's 32-bit loader in the session's 64-bit prefix and read
by the 64-bit helper, as a 64-bit agent reads them on Windows.

Each is read over its own range, the one its GetSystemInfo reports (2 GiB, or 4 GiB with
the bit, less 64 KiB at either end), and compared with its own VirtualQuery walk. The
32-bit tests need Debian's wine32:i386; they skip without it, unless
VMATLAS_REQUIRE_WINE32 is set (CI sets it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vmatlas.agents.windows.reader import WindowsReader, _large_address_aware
from vmatlas.agents.windows.win32 import MEM_FREE
from vmatlas.agents.windows.wine import WineApi, WineView
from vmatlas.audit import Check, Severity, audit
from vmatlas.model import ProcessSummary, Snapshot

from .planting import Planter, Region, assert_matches_walk, start_planter

MIB = 1 << 20
GIB = 1 << 30
# (lowest, highest + 1) address of a 32-bit process on 64-bit Windows.
RANGES = {False: (0x10000, 0x7FFF0000), True: (0x10000, 0xFFFF0000)}
LARGE = pytest.mark.parametrize("large", [False, True], ids=["2GiB", "4GiB-large-address-aware"])


def test_the_large_address_aware_bit_of_real_32_bit_builds(wow64_exes: dict[bool, Path]) -> None:
    assert _large_address_aware(str(wow64_exes[True])) is True
    assert _large_address_aware(str(wow64_exes[False])) is False
    # A 32-bit image, not a 64-bit one: its PE machine is i386.
    header = wow64_exes[True].read_bytes()[:4096]
    pe = int.from_bytes(header[60:64], "little")
    assert header[pe + 4 : pe + 6] == (0x14C).to_bytes(2, "little")


def test_not_a_pe_file(tmp_path: Path) -> None:
    text = tmp_path / "x.exe"
    text.write_bytes(b"MZ" + b"\0" * 100)
    assert _large_address_aware(str(text)) is False
    assert _large_address_aware(str(tmp_path / "missing.exe")) is False


def free_sizes(walk: list[Region]) -> list[int]:
    return [own.size for own in walk if own.state == MEM_FREE]


def planter_name(large: bool) -> str:
    return f"wow64{'-laa' if large else ''}.exe"


def read(api: WineApi, planter: Planter) -> tuple[Snapshot, list[Region]]:
    """A snapshot with free regions, and the program's own walk around it. Wine's own
    threads in the process may take and give back a block while it is read (seen: 128
    KiB, once in many runs, with equal walks before and after): such a read is taken
    again, at most three times, so a reader that disagrees with the walk still fails."""
    for _ in range(3):
        before = planter.walk()
        snapshot = WindowsReader(api).snapshot(planter.windows_pid, include_free=True)
        after = planter.walk()
        if after == before and snapshot.summary.free_bytes == sum(free_sizes(before)):
            break
    assert after == before, "the planter's layout moved while it was read"
    return snapshot, before


@LARGE
def test_a_32_bit_program_is_read_over_its_own_range(
    wine_api: WineApi, wow64_planters: dict[bool, Planter], large: bool
) -> None:
    planter = wow64_planters[large]
    _, _, low, high = planter.system_info()
    assert (low, high + 1) == RANGES[large]
    snapshot, walk = read(wine_api, planter)
    process = snapshot.process
    assert process.pointer_bits == 32
    assert (process.user_address_min, process.user_address_max) == RANGES[large]
    # The host's range is the 64-bit one; the process's summary is over its own.
    assert snapshot.host.user_address_max > 1 << 32
    assert_matches_walk(snapshot, walk)
    assert snapshot.regions.start[0] == low and snapshot.regions.end[-1] == high + 1
    summary = snapshot.summary
    assert summary.free_bytes == sum(free_sizes(walk))
    assert summary.largest_free_bytes == max(free_sizes(walk))
    assert summary.free_bytes + summary.committed_bytes + summary.reserved_bytes == (high + 1 - low)
    exe = [r for r in snapshot.regions.rows() if r.allocation_base == planter.plants["exe"]]
    assert {r.path.rsplit("\\", 1)[-1] for r in exe} == {planter_name(large)}


def test_the_windows_view_finds_a_32_bit_wine_process_by_its_linux_pid(
    wine_env: dict[str, str], wow64_planters: dict[bool, Planter]
) -> None:
    planter = wow64_planters[False]
    view = WineView(wine_env["WINEPREFIX"], cache_dir=wine_env["XDG_CACHE_HOME"])
    try:
        by_linux = view(planter.process.pid, True, False)
    finally:
        view.close()
    assert by_linux.process.pid == planter.windows_pid
    assert by_linux.process.name == planter_name(False)
    assert (by_linux.process.pointer_bits, by_linux.process.user_address_max) == (32, 0x7FFF0000)


@pytest.fixture
def carved(
    request: pytest.FixtureRequest,
    wine32_env: dict[str, str],
    wow64_exes: dict[bool, Path],
    wine_api: WineApi,
    tmp_path: Path,
) -> Iterator[Planter]:
    """A 32-bit planter of its own whose free space is carved into pieces."""
    exe = wow64_exes[request.param]
    planted = start_planter(wine32_env["WINELOADER"], exe, wine32_env, tmp_path / "view.bin")
    try:
        assert planted.carve() > 0
        yield planted
    finally:
        planted.exit()


@pytest.mark.parametrize(
    "carved", [False, True], ids=["2GiB", "4GiB-large-address-aware"], indirect=True
)
def test_the_audit_flags_a_carved_32_bit_address_space(wine_api: WineApi, carved: Planter) -> None:
    snapshot, walk = read(wine_api, carved)
    summary = snapshot.summary
    largest = max(free_sizes(walk))
    # No free block of 32 MiB is left (see planter.c), though hundreds of MiB are free.
    assert summary.largest_free_bytes == largest < 32 * MIB
    assert summary.free_bytes == sum(free_sizes(walk)) > 4 * largest
    item = ProcessSummary(
        process=snapshot.process, summary=summary, capture_time=snapshot.capture_time
    )
    report = audit([snapshot.host], {snapshot.host.host_id: [item]})
    findings = {f.check: f for f in report.findings if f.pid == carved.windows_pid}
    block = findings[Check.LARGEST_FREE_BLOCK]
    assert block.severity is Severity.CRITICAL  # below the default 64 MiB
    assert (block.value, block.limit, block.pointer_bits) == (largest, summary.free_bytes, 32)
    assert "(32-bit)" in block.message
    # Wine reserves over a GiB of a 32-bit process, and commits little of it: a warning
    # for a 32-bit process (its address space runs out), where a 64-bit one gets a note.
    reserved = findings[Check.RESERVED_VS_COMMITTED]
    assert summary.reserved_bytes > GIB
    assert (reserved.severity, reserved.pointer_bits) == (Severity.WARNING, 32)
