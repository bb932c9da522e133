"""The C loops against the pure-Python ones: the same input gives the same table, the
same summary, the same wire bytes, or the same refusal, on real processes and on
generated text (malformed lines included)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.conftest import PAGE, Planter
from vmatlas import diff, errors, native, summary, wire
from vmatlas.agents.linux import (
    _SCAN_DECISIONS,
    _SMAPS_KEYS_BYTES,
    LinuxReader,
    parse_maps,
    parse_smaps,
)
from vmatlas.model import (
    ALLOCATION_COLUMNS,
    RESIDENCY_FIELDS,
    ROW_COLUMNS,
    Host,
    OperatingSystem,
    Process,
    RegionTable,
    Snapshot,
    Summary,
)
from vmatlas.summary import (
    free_gaps,
    guard_count,
    guard_indices,
    insert_free,
    summarize_process,
)
from vmatlas.v1 import agent_pb2
from vmatlas.v1 import snapshot_pb2 as pb

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def built() -> None:
    if not native.available():
        message = (
            f"the C extension vmatlas._native is not in use ({native.describe()}): "
            "`make install-dev` builds it"
        )
        if os.environ.get("VMATLAS_REQUIRE_NATIVE"):
            pytest.fail(message)
        pytest.skip(message)


def test_an_extension_built_from_other_source_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The one in use was built from the source beside it; an edit to that source
    # without a rebuild sets it aside rather than calling it with other arguments.
    assert native._load() == (native._built, False)
    edited = tmp_path / "_native.c"
    edited.write_bytes(native._SOURCE.read_bytes() + b"\n/* edited */\n")
    monkeypatch.setattr(native, "_SOURCE", edited)
    assert native._load() == (None, True)
    # An installed package carries no source: the extension is taken as built.
    monkeypatch.setattr(native, "_SOURCE", tmp_path / "absent.c")
    assert native._load() == (native._built, False)


def outcome(work: Callable[[], Any]) -> Any:
    """What ``work`` returns, or the type and text of what it raises."""
    try:
        return work()
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))


def same_on_both(work: Callable[[], Any]) -> Any:
    with native.use(False):
        pure = outcome(work)
    with native.use(True):
        accelerated = outcome(work)
    assert accelerated == pure
    return pure


def test_version_names_the_active_path() -> None:
    def version(**env: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "vmatlas", "--version"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **env},
        ).stdout

    assert "native capture (C extension)" in version()
    assert "pure-Python capture (VMATLAS_NO_NATIVE set)" in version(VMATLAS_NO_NATIVE="1")


def test_every_process_on_the_host_reads_the_same() -> None:
    reader = LinuxReader()
    host = reader.host()
    compared = 0
    for pid in reader.pids():
        try:
            process = reader.process(pid, host)
            maps = Path(f"/proc/{pid}/maps").read_bytes()
            smaps = Path(f"/proc/{pid}/smaps").read_bytes()
        except (OSError, errors.Error):
            continue  # gone, or not ours to read
        table = same_on_both(lambda m=maps: parse_maps(m))
        same_on_both(lambda s=smaps: parse_smaps(s))
        same_on_both(lambda t=table, p=process: summarize_process(t, host, p))
        same_on_both(lambda t=table: wire.table_to_bytes(t, page_size_bytes=PAGE))
        compared += 1
    assert compared >= 3


# What a file page's residency owes to the other processes mapping the file: whether
# it counts as shared or private moves with them too (a page of libc is private while
# no other process maps it).
_SHARED_WITH_OTHERS = (
    "shared_clean_bytes",
    "shared_dirty_bytes",
    "private_clean_bytes",
    "private_dirty_bytes",
)


def _settled(snapshot: Snapshot) -> Snapshot:
    """What two live reads of an idle process must agree on: not the capture time, nor
    the proportional shares (PSS), which change whenever another process maps or
    unmaps the same files, nor for a file's pages the split into shared and private
    (the same text parses the same: the fixture tests)."""
    regions = snapshot.regions
    if regions.residency:
        shares = {name: [0] * len(regions) for name in ("pss_bytes", "swap_pss_bytes")}
        for name in _SHARED_WITH_OTHERS:
            column = regions.residency[name]
            shares[name] = [0 if path else n for n, path in zip(column, regions.path, strict=True)]
        regions = dataclasses.replace(regions, residency={**regions.residency, **shares})
    return dataclasses.replace(snapshot, capture_time=0.0, regions=regions)


def test_planted_anonymous_and_file_layouts_read_the_same(planter: Planter, tmp_path: Path) -> None:
    planter.grow(4000)  # read-only and no-access pages alternating: guards everywhere
    base = planter.map(64)
    planter.touch(base, 64)
    planter.mapfile(tmp_path / "a file with spaces", 8)
    os.unlink(tmp_path / "a file with spaces")
    reader = LinuxReader()
    for residency in (False, True):
        # The capture time differs from one reading to the next; the rest must not.
        snap = same_on_both(
            lambda r=residency: _settled(reader.snapshot(planter.pid, include_residency=r))
        )
        assert not isinstance(snap, tuple)
        assert snap.summary.guard_region_count >= 2000
        same_on_both(lambda s=snap: wire.snapshot_parts(s))
        same_on_both(lambda s=snap: insert_free(s.regions, 1 << 16, 1 << 47))
    assert len(snap.regions) > 4000


def test_every_prefix_of_real_text_reads_the_same(planter: Planter) -> None:
    """Text cut anywhere (a line in half, a number in half): same table or refusal."""
    planter.map(4)
    maps = Path(f"/proc/{planter.pid}/maps").read_bytes()
    smaps = Path(f"/proc/{planter.pid}/smaps").read_bytes()
    for cut in range(0, len(maps), 7):
        same_on_both(lambda c=cut: parse_maps(maps[:c]))
    block = smaps.index(b"\n", smaps.index(b"VmFlags")) + 1
    for cut in range(0, 3 * block, 5):
        same_on_both(lambda c=cut: parse_smaps(smaps[:c]))


# -- generated text ----------------------------------------------------------------------

HEX = st.integers(0, (1 << 72) - 1).map(lambda v: f"{v:x}")
# Pieces of maps lines, right and wrong: the parsers must agree on every mix.
FIELD = st.one_of(
    HEX,
    st.sampled_from(["", "0", "00", "-", ":", " ", "  ", "\t", "\r", "G", "ff", "FF", "x"]),
    st.sampled_from(["r-xp", "rw-s", "---p", "rwxs", "r-x", "rwxq", "Rw-p", "----"]),
    st.sampled_from(["[heap]", "[stack]", "[vsyscall]", "[anon:x]", "/memfd:y (deleted)"]),
    st.text(max_size=12),
)


@st.composite
def maps_line(draw: st.DrawFn) -> str:
    start = draw(st.integers(0, (1 << 64) - 1))
    size = draw(st.integers(1, 1 << 20))
    perms = draw(
        st.sampled_from([r + w + x + s for r in "-r" for w in "-w" for x in "-x" for s in "ps"])
    )
    dev = f"{draw(st.integers(0, 0x1FF)):02x}:{draw(st.integers(0, 0x1FF)):02x}"
    inode = draw(st.sampled_from([0, 7, 1234, (1 << 64) - 1, 1 << 70]))
    path = draw(st.sampled_from(["", "/lib/libc.so.6", "/a b (deleted)", "[heap]", "[stack]"]))
    line = f"{start:x}-{start + size:x} {perms} {draw(HEX)} {dev} {inode}"
    return (line.ljust(73) + path) if path else line + " "


@st.composite
def damaged(draw: st.DrawFn, line: str) -> str:
    """``line``, or ``line`` with a piece replaced, cut, or doubled."""
    how = draw(st.sampled_from(["keep", "keep", "replace", "cut", "insert"]))
    if how == "keep":
        return line
    at = draw(st.integers(0, len(line)))
    if how == "cut":
        return line[:at]
    piece = draw(FIELD)
    if how == "insert":
        return line[:at] + piece + line[at:]
    return line[:at] + piece + line[at + draw(st.integers(0, 4)) :]


MAPS_TEXT = st.lists(maps_line().flatmap(damaged), max_size=12).map(
    lambda lines: "\n".join(lines)
) | st.binary(max_size=200)


def streamed_maps(text: str | bytes, procfs: Path) -> Any:
    """The reader's table of ``text`` as the maps file of pid 1 under ``procfs`` (the
    native path scans it as it reads it)."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    (procfs / "1").mkdir(exist_ok=True)
    (procfs / "1" / "stat").write_text("1 (x) S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 0\n")
    (procfs / "1" / "maps").write_bytes(data)
    return LinuxReader(str(procfs)).regions(1)


@SETTINGS
@given(MAPS_TEXT, st.booleans())
def test_generated_maps_text_reads_the_same(text: str | bytes, newline: bool) -> None:
    if newline:
        text = text + (b"\n" if isinstance(text, bytes) else "\n")
    whole = same_on_both(lambda: parse_maps(text))
    with tempfile.TemporaryDirectory() as procfs:
        assert same_on_both(lambda: streamed_maps(text, Path(procfs))) == whole


@st.composite
def maps_run(draw: st.DrawFn) -> str:
    """Lines as a large process has them: each region mostly starting where the one
    before ends, with the perms, offset and rest of a line before; some damaged. The
    scan reads such lines by what it kept of the lines before them."""
    start = draw(st.integers(0, (1 << draw(st.sampled_from([36, 48, 60]))) - 1))
    offsets = ["0", "00000000", "00001000", "fffffffffffffff", "1" * 17]
    rests = ["00:00 0 ", "00:00 0", "fe:00 267723" + " " * 19 + "/usr/lib/x.so", "00:00 0  "]
    lines = []
    for _ in range(draw(st.integers(2, 60))):
        start += draw(st.sampled_from([0, 0, 0, 4096, 1 << 40]))
        end = start + draw(st.sampled_from([4096, 8192, 1 << 44]))
        width = draw(st.sampled_from([0, 0, 12, 16, 17]))
        perms = draw(st.sampled_from(["---p", "rw-p", "rw-p", "r-xp", "rw-s", "rwxq"]))
        offset = draw(st.sampled_from(offsets))
        line = f"{start:0{width}x}-{end:x} {perms} {offset} {draw(st.sampled_from(rests))}"
        lines.append(draw(damaged(line)) if draw(st.integers(0, 7)) == 0 else line)
        start = end
    return "\n".join(lines)


@SETTINGS
@given(maps_run(), st.booleans())
def test_runs_of_like_lines_read_the_same(text: str, newline: bool) -> None:
    if newline:
        text += "\n"
    whole = same_on_both(lambda: parse_maps(text))
    with tempfile.TemporaryDirectory() as procfs:
        assert same_on_both(lambda: streamed_maps(text, Path(procfs))) == whole


def test_a_decision_that_raises_stops_the_scan_as_read(planter: Planter) -> None:
    """An exception from the caller's facts (here on the first rest, with the rest of
    a large maps still unread) ends the scan with that exception, and the next scan
    reads the whole file."""
    planter.grow(3000)
    path = f"/proc/{planter.pid}/maps"

    def refuse(rest: bytes) -> tuple[Any, ...]:
        raise LookupError(rest)

    _, count = _SCAN_DECISIONS
    for facts_of, error in ((refuse, LookupError), (lambda rest: (1,), TypeError)):
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(error):
                native._built.scan_maps_fd(fd, facts_of, count)  # type: ignore[union-attr]
        finally:
            os.close(fd)
    with native.use(True):
        assert len(LinuxReader().regions(planter.pid)) > 3000


def test_maps_scanned_as_read_reads_the_same(planter: Planter, tmp_path: Path) -> None:
    """A large process's maps (read and scanned a chunk at a time), a line longer than
    what it reads at once, and the text cut anywhere near the seams: the table of the
    whole text, on both paths."""
    planter.grow(3000)
    maps = Path(f"/proc/{planter.pid}/maps").read_bytes()
    assert len(maps) > 2 * 64 * 1024  # several of the scan's reads
    whole = same_on_both(lambda: parse_maps(maps))
    assert same_on_both(lambda: streamed_maps(maps, tmp_path)) == whole
    assert len(whole) > 3000
    seam = 64 * 1024
    long_line = maps[: seam - 10] + b"/a" * seam + maps[seam - 10 :]
    assert same_on_both(lambda: streamed_maps(long_line, tmp_path)) == outcome(
        lambda: parse_maps(long_line)
    )
    for cut in (1, 2, seam - 1, seam, seam + 1, len(maps) // 2, len(maps) - seam):
        for text in (maps[:cut], maps[:-cut]):
            assert same_on_both(lambda t=text: streamed_maps(t, tmp_path)) == outcome(
                lambda t=text: parse_maps(t)
            )


SMAPS_FIELDS = ["Size", "Rss", "Pss", "Shared_Clean", "Private_Dirty", "Swap", "Locked"]


@st.composite
def smaps_text(draw: st.DrawFn) -> str:
    blocks = []
    for _ in range(draw(st.integers(1, 4))):
        lines = [draw(maps_line())]
        for name in SMAPS_FIELDS:
            value = draw(st.sampled_from(["0", "4", "132", "99999999999999999999"]))
            lines.append(f"{name}:{draw(st.sampled_from([' ', '  ', chr(9)]))}{value} kB")
        lines.append("VmFlags: rd wr mr mw me ac")
        blocks.append(
            [draw(damaged(line)) if draw(st.integers(0, 9)) == 0 else line for line in lines]
        )
    if draw(st.booleans()):
        blocks[-1] = blocks[-1][: draw(st.integers(0, len(blocks[-1])))]  # a short block
    if draw(st.booleans()) and len(blocks[0]) > 2:
        blocks[0].insert(2, blocks[0][1])  # a field twice
    return "\n".join(line for block in blocks for line in block) + draw(st.sampled_from(["", "\n"]))


def streamed(text: str | bytes, procfs: Path) -> Any:
    """The reader's residency table of ``text`` as the smaps file of pid 1 under
    ``procfs`` (the native path scans it as it reads it)."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    (procfs / "1").mkdir(exist_ok=True)
    (procfs / "1" / "stat").write_text("1 (x) S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 0\n")
    (procfs / "1" / "smaps").write_bytes(data)
    return LinuxReader(str(procfs)).regions(1, residency=True)


def scanned_as_read(data: bytes, tmp_path: Path) -> bool:
    """Whether the native scan takes ``data`` as it reads it (not leaving it to the
    whole-text parse, which would give the same table)."""
    path = tmp_path / "scanned"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        scan = native._built.scan_smaps_fd(fd, _SMAPS_KEYS_BYTES, *_SCAN_DECISIONS)  # type: ignore[union-attr]
        return isinstance(scan, tuple)
    finally:
        os.close(fd)


@SETTINGS
@given(smaps_text())
def test_generated_smaps_text_reads_the_same(text: str) -> None:
    whole = same_on_both(lambda: parse_smaps(text))
    with tempfile.TemporaryDirectory() as procfs:
        assert same_on_both(lambda: streamed(text, Path(procfs))) == whole


def test_smaps_streamed_through_the_buffer_reads_the_same(planter: Planter, tmp_path: Path) -> None:
    """A large process's smaps (megabytes, many buffer refills) and a line longer than
    the reading buffer: the streamed scan gives the whole-text table."""
    planter.grow(3000)
    smaps = Path(f"/proc/{planter.pid}/smaps").read_bytes()
    assert len(smaps) > 1 << 20  # four times the reading buffer and more
    whole = same_on_both(lambda: parse_smaps(smaps))
    assert same_on_both(lambda: streamed(smaps, tmp_path)) == whole
    assert scanned_as_read(smaps, tmp_path)
    long_line = smaps.replace(b"VmFlags:", b"VmFlags:" + b" rd" * 200_000, 1)
    assert scanned_as_read(long_line, tmp_path)
    long_whole = same_on_both(lambda: parse_smaps(long_line))
    assert len(long_whole) == len(whole)
    assert same_on_both(lambda: streamed(long_line, tmp_path)) == long_whole
    for cut in (1, 100, len(smaps) // 2):
        assert same_on_both(lambda c=cut: streamed(smaps[:-c], tmp_path)) == outcome(
            lambda c=cut: parse_smaps(smaps[:-c])
        )


# Paths whose opens are counted (by an audit hook: the reader's own os.open and open
# calls, seen as they happen).
_COUNTED_OPENS: dict[str, int] = {}


def _count_opens(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and isinstance(args[0], str) and args[0] in _COUNTED_OPENS:
        _COUNTED_OPENS[args[0]] += 1


sys.addaudithook(_count_opens)


def read_counted(text: bytes, procfs: Path) -> tuple[Any, int]:
    """The reader's residency table (or what it raises) of ``text`` as the smaps file of
    pid 1 under ``procfs``, and how many times the reader opened that file."""
    (procfs / "1").mkdir(exist_ok=True)
    (procfs / "1" / "stat").write_text("1 (x) S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 0\n")
    (procfs / "1" / "smaps").write_bytes(text)
    path = str(procfs / "1" / "smaps")
    _COUNTED_OPENS[path] = 0
    try:
        table = outcome(lambda: LinuxReader(str(procfs)).regions(1, residency=True))
        return table, _COUNTED_OPENS[path]
    finally:
        del _COUNTED_OPENS[path]


def test_smaps_the_streamed_scan_leaves_to_the_whole_text_parse_is_read_once(
    planter: Planter, tmp_path: Path
) -> None:
    """Text the native scan does not take (empty, a number longer than it reads, a
    short block) is parsed as it was read, not read again: smaps walks the target's
    page tables, and a second read may not even say the same."""
    planter.grow(3000)
    smaps = Path(f"/proc/{planter.pid}/smaps").read_bytes()
    assert len(smaps) > 1 << 20  # four times the reading buffer and more
    long_rss = re.sub(
        rb"^Rss:( +)\d+ kB$", rb"Rss:\g<1>123456789012345678 kB", smaps, count=1, flags=re.M
    )
    assert long_rss != smaps
    vmflags = smaps.index(b"\nVmFlags")
    short_block = smaps[:vmflags] + smaps[smaps.index(b"\n", vmflags + 1) :]
    assert same_on_both(lambda: parse_smaps(long_rss)).residency["rss_bytes"][0] == (
        123456789012345678 * 1024
    )
    assert same_on_both(lambda: parse_smaps(short_block))[0] == "raised"
    for text in (b"", long_rss, long_rss[:200_000], short_block, short_block[:200_000]):
        assert not scanned_as_read(text, tmp_path)
        whole = same_on_both(lambda t=text: parse_smaps(t))
        for path in (False, True):
            with native.use(path):
                assert read_counted(text, tmp_path) == (whole, 1)


# -- generated tables: summary and encode ------------------------------------------------


@st.composite
def tables(draw: st.DrawFn) -> RegionTable:
    n = draw(st.integers(0, 40))
    cursor = draw(st.integers(0, 1 << 40)) * PAGE
    starts, ends = [], []
    for _ in range(n):
        cursor += draw(st.sampled_from([0, 0, PAGE, 1 << 20, 3, -PAGE]))
        size = draw(st.sampled_from([PAGE, PAGE, 16 * PAGE, 64 * 1024 + PAGE, 5, 0]))
        starts.append(cursor)
        ends.append(cursor + size)
        cursor += size
    small = lambda values: st.lists(st.sampled_from(values), min_size=n, max_size=n)  # noqa: E731
    table = RegionTable(
        start=starts,
        end=ends,
        state=draw(small([1, 2, 3, 3, 3])),
        type=draw(small([0, 1, 2, 3, 3])),
        protection=draw(small([0, 1, 3, 5, 9, 16, 17])),
        kind=draw(small([0, 0, 1, 5, 7])),
        path=draw(
            st.lists(
                st.sampled_from(["", "", "/lib/a.so", "[heap]", "x\udcff"]), min_size=n, max_size=n
            )
        ),
        offset=draw(small([0, 0, PAGE, 1 << 63, 1 << 64])),
        device=draw(small([0, 0, 2049])),
        inode=draw(small([0, 0, 77, -1])),
        deleted=draw(st.lists(st.sampled_from([False, False, True, 1]), min_size=n, max_size=n)),
    )
    table.protection_raw = draw(
        st.sampled_from([list(table.protection), draw(small([0, 4, 1 << 33]))])
    )
    if draw(st.booleans()):
        table.allocation_base = draw(small([0, 1 << 16, 1 << 20]))
        table.allocation_protection = draw(small([0, 4]))
        table.allocation_protection_raw = draw(small([0, 0x40]))
    if draw(st.booleans()):
        table.residency = {name: draw(small([0, 4096, 1 << 40])) for name in RESIDENCY_FIELDS}
    return table


HOST = Host(
    host_id="h",
    hostname="h",
    os=OperatingSystem.WINDOWS,
    page_size_bytes=PAGE,
    allocation_granularity_bytes=65536,
    user_address_min=1 << 16,
    user_address_max=1 << 47,
    max_map_count=0,
)
# A granularity of a page: the summary's free totals come from its one pass.
LINUX_HOST = dataclasses.replace(
    HOST, os=OperatingSystem.LINUX, allocation_granularity_bytes=PAGE, max_map_count=65530
)
SNAPSHOT = Snapshot(
    host=HOST, process=Process(pid=1, name="p"), capture_time=1.5, summary=Summary(),
    regions=RegionTable(),
)  # fmt: skip


@SETTINGS
@given(tables(), st.sampled_from([PAGE, 4096, 3, 1 << 16]))
def test_generated_tables_summarize_and_encode_the_same(table: RegionTable, page: int) -> None:
    same_on_both(lambda: summarize_process(table, HOST, Process(pid=1)))
    guards = same_on_both(lambda: guard_indices(table))
    if not isinstance(guards, tuple):  # what a summary counts is what the diff lists
        assert same_on_both(lambda: guard_count(table)) == len(guards)
    gaps = same_on_both(lambda: free_gaps(table, 1 << 16, 1 << 47))
    if not isinstance(gaps, tuple):  # the totals a summary keeps are those of the gaps
        sizes = [end - start for start, end in gaps]
        totals = same_on_both(lambda: summary._free_totals(table, 1 << 16, 1 << 47))
        assert totals == (sum(sizes), max(sizes, default=0))
    same_on_both(lambda: free_gaps(table, -1, 1 << 70))
    data = same_on_both(lambda: wire.table_to_bytes(table, page_size_bytes=page))
    if isinstance(data, bytes):
        assert same_on_both(lambda: wire.table_from_bytes(data)) == table
    same_on_both(lambda: wire.table_to_pb(table, page_size_bytes=page).SerializeToString())
    # The agent's answer: written into its own bytes natively, joined on the pure path.
    snap = dataclasses.replace(SNAPSHOT, host=dataclasses.replace(HOST, page_size_bytes=page))
    full = dataclasses.replace(snap, regions=table)
    response = same_on_both(lambda: wire.snapshot_response(full).data)
    if isinstance(response, bytes):
        header = wire.snapshot_header_bytes(snap)
        plain = wire.table_to_pb(table, page_size_bytes=page).SerializeToString()
        cls = agent_pb2.GetSnapshotResponse
        assert response == wire.snapshot_bytes_response(cls, header, plain).data


def test_page_columns_made_bounds_in_place_are_put_back_when_refused() -> None:
    """Typed page columns become the boundaries themselves; where a boundary passes
    2**64 they hold their page values again for the pure path to judge."""
    with native.use(True):
        accel = native.accel
    if accel is None:
        pytest.skip("no native extension")
    deltas, sizes = array("Q", [1, 2, 1 << 51]), array("Q", [1, 3, 1 << 50])
    starts, ends = accel.bounds(deltas, sizes, 12, True)
    assert (starts, ends) == (array("Q", [4096, 16384, 28672 + (1 << 63)]),
                              array("Q", [8192, 28672, 28672 + (1 << 63) + (1 << 62)]))  # fmt: skip
    assert starts is deltas and ends is sizes
    deltas, sizes = array("Q", [1, 2, 1 << 51, 5]), array("Q", [1, 3, 1 << 51, 1])
    assert accel.bounds(deltas, sizes, 12, True) is None
    assert (deltas, sizes) == (array("Q", [1, 2, 1 << 51, 5]), array("Q", [1, 3, 1 << 51, 1]))
    listed = accel.bounds([1, 2], [1, 3], 12, True)  # lists are read into new arrays
    assert listed == (array("Q", [4096, 16384]), array("Q", [8192, 28672]))


def typed(table: RegionTable) -> RegionTable:
    """``table`` with every integer column that fits one as a typed array, as the
    native maps scan gives them ('B' where the values fit a byte, 'Q' otherwise)."""
    out = dataclasses.replace(table)
    for name in (*ROW_COLUMNS, *ALLOCATION_COLUMNS):
        column = getattr(table, name)
        if name in ("path", "deleted") or not all(type(v) is int for v in column):
            continue
        for code in ("B", "Q"):
            try:
                setattr(out, name, array(code, column))
                break
            except OverflowError:
                continue
    return out


@SETTINGS
@given(tables(), st.sampled_from([PAGE, 4096, 1 << 16]))
def test_typed_columns_summarize_and_encode_as_lists_do(table: RegionTable, page: int) -> None:
    """The loops read typed columns (the native scan's) as they read lists: the same
    summary, guards, gaps and wire bytes, or the same refusal, on both paths."""
    as_arrays = typed(table)
    assert as_arrays == table
    for work in (
        lambda t: summarize_process(t, HOST, Process(pid=1)),
        lambda t: summarize_process(t, LINUX_HOST, Process(pid=1)),
        lambda t: summarize_process(t, LINUX_HOST, Process(pid=1, user_address_max=1 << 70)),
        guard_indices,
        lambda t: free_gaps(t, 1 << 16, 1 << 47),
        lambda t: summary._free_totals(t, 1 << 16, 1 << 47),
        lambda t: wire.table_to_bytes(t, page_size_bytes=page),
        lambda t: insert_free(t, 1 << 16, 1 << 47),
    ):
        assert same_on_both(lambda w=work: w(as_arrays)) == same_on_both(lambda w=work: w(table))


def test_tables_are_equal_by_values_whatever_their_columns() -> None:
    listed = RegionTable(
        start=[0x1000, 0x3000], end=[0x2000, 0x4000], state=[3, 2], type=[3, 3],
        protection=[1, 0], protection_raw=[1, 0], kind=[0, 0], path=["", ""],
        offset=[0, 0], device=[0, 0], inode=[0, 0], deleted=[False, False],
    )  # fmt: skip
    mixed = typed(listed)
    assert isinstance(mixed.start, array) and isinstance(mixed.state, array)
    assert mixed == listed and listed == mixed
    assert mixed.row(1) == listed.row(1)
    for name, other in (("end", [0x2000, 0x5000]), ("state", [3, 3]), ("path", ["", "x"])):
        changed = dataclasses.replace(mixed, **{name: other})
        assert changed != listed and listed != changed
    shorter = dataclasses.replace(mixed, start=array("Q", [0x1000]))
    assert shorter != listed
    assert dataclasses.replace(mixed, residency={"rss_bytes": [0, 0]}) != listed


def test_the_native_scan_fills_typed_columns(planter: Planter) -> None:
    planter.grow(100)
    with native.use(True):
        table = LinuxReader().regions(planter.pid)
    for name in ("start", "end", "offset", "device", "inode"):
        assert isinstance(getattr(table, name), array) and getattr(table, name).typecode == "Q"
    for name in ("state", "type", "protection", "protection_raw", "kind"):
        assert isinstance(getattr(table, name), array) and getattr(table, name).typecode == "B"
    with native.use(False):
        assert LinuxReader().regions(planter.pid) == table


@st.composite
def damaged_tables(draw: st.DrawFn) -> bytes:
    """A serialized table (plain or deflated), then bytes cut, changed or inserted."""
    try:
        data = bytearray(wire.table_to_pb(draw(tables()), page_size_bytes=1).SerializeToString())
    except ValueError:  # a generated table the wire cannot carry
        assume(False)
    if draw(st.booleans()):
        data = bytearray(wire.deflate_table(bytes(data)))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["cut", "change", "insert"]))
        if how == "cut":
            del data[at:]
        elif how == "change" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=11))
    return bytes(data)


@SETTINGS
@given(st.one_of(damaged_tables(), st.binary(max_size=200)))
def test_serialized_tables_damaged_or_not_decode_the_same(data: bytes) -> None:
    """The native reader gives upb's table or leaves the bytes to it: the same table or
    the same refusal, whatever the bytes."""
    same_on_both(lambda: wire.table_from_bytes(data))
    message = pb.RegionTable()
    try:
        message.ParseFromString(data)
    except Exception:  # not a message at all: table_from_bytes said so above
        return
    same_on_both(lambda: wire.table_from_pb(message))


@pytest.mark.parametrize("typed", [False, True], ids=["list", "typed"])
@pytest.mark.parametrize("index", [[0, 3], [2**31], [2**32 - 1]])
def test_an_index_past_the_end_is_refused_alike(index: list[int], typed: bool) -> None:
    # A wire table's file index is a uint32 from the agent: any of them may be past
    # the end, and both paths must say so the same way, as a list or as the typed
    # column the native reader decodes it into, and whether the values taken are typed.
    column: list[Any] = [0, 1, 2] if typed else ["a", "b", "c"]
    found = array("I", index) if typed else index
    assert same_on_both(lambda: wire._take(column, found, "Q" if typed else None)) == (
        "raised",
        "IndexError",
        "list index out of range",
    )


# The numeric columns a table may hold as typed arrays instead of lists.
NUMERIC_COLUMNS = (
    "start", "end", "state", "type", "protection", "protection_raw", "kind",
    "offset", "device", "inode", "deleted",
)  # fmt: skip


@st.composite
def later_tables(draw: st.DrawFn, table: RegionTable) -> RegionTable:
    """``table`` a moment later: some regions gone, some changed in one column (range,
    protection, state, backing), some added beside another."""
    n = len(table)
    kept = draw(st.lists(st.sampled_from([True, True, True, False]), min_size=n, max_size=n))
    later = table.take([i for i in range(n) if kept[i]])
    for _ in range(draw(st.integers(0, 4))):
        if not len(later):
            break
        i = draw(st.integers(0, len(later) - 1))
        name = draw(st.sampled_from(["start", "end", "protection", "state", "path", "inode"]))
        value = draw(
            st.sampled_from(["", "/lib/b.so", "[stack]"])
            if name == "path"
            else st.sampled_from([0, 1, 3, 16, -PAGE, PAGE, later.end[i] + PAGE, 1 << 64])
        )
        getattr(later, name)[i] = value
    for _ in range(draw(st.integers(0, 2))):
        if not len(later):
            break
        i = draw(st.integers(0, len(later) - 1))
        rows = list(range(len(later)))
        later = later.take([*rows[: i + 1], i, *rows[i + 1 :]])
        later.start[i + 1] = later.end[i]
        later.end[i + 1] = later.end[i] + PAGE
    return later


def as_arrays(draw: st.DrawFn, table: RegionTable) -> RegionTable:
    """A copy of ``table`` with some numeric columns typed arrays, where they fit."""
    copy = table.take(range(len(table)))
    for name in NUMERIC_COLUMNS:
        typecode = draw(st.sampled_from([None, "q", "Q", "b", "B", "l"]))
        if typecode is not None:
            with contextlib.suppress(OverflowError, TypeError):
                setattr(copy, name, array(typecode, getattr(copy, name)))
    return copy


@st.composite
def table_pairs(draw: st.DrawFn) -> tuple[RegionTable, RegionTable, RegionTable, RegionTable]:
    """Two tables of one process at two times, as lists, then with some columns typed
    arrays of any integer type (the native loops leave signed ones to Python)."""
    before = draw(tables())
    after = draw(later_tables(before))
    return before, after, as_arrays(draw, before), as_arrays(draw, after)


@SETTINGS
@given(table_pairs())
def test_generated_tables_diff_the_same(pair: tuple[RegionTable, ...]) -> None:
    """Both paths find the same changed rows and the same diff, whether the columns are
    lists or typed arrays; a region's guard status asked alone is what the list of all
    guards says."""
    before, after, before_typed, after_typed = pair

    def diffs(a: RegionTable, b: RegionTable) -> Any:
        return (
            outcome(lambda: diff.changed_rows(a, b)),
            outcome(lambda: diff.diff_by_address(a, b)),
            outcome(lambda: diff.diff_by_identity(a, b)),
        )

    as_lists = same_on_both(lambda: diffs(before, after))
    assert same_on_both(lambda: diffs(typed(before), typed(after))) == as_lists
    assert same_on_both(lambda: diffs(before_typed, after_typed)) == as_lists
    assert same_on_both(lambda: diffs(before, after_typed)) == as_lists
    for table in (before, after):
        every = same_on_both(lambda t=table: diff.stack_guard_indices(t))
        if isinstance(every, set):
            alone = {i for i in range(len(table)) if diff.is_stack_guard(table, i)}
            assert alone == every
