"""validate.py: real snapshots pass; anything malformed is refused with
InvalidArgument and nothing else."""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmatlas import errors, validate, wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.model import (
    ProcessSummary,
    RegionKind,
    RegionState,
    RegionTable,
    RegionType,
    Snapshot,
    Summary,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
READER = LinuxReader(host_id="validated")
HOST = READER.host()
SNAPSHOT = READER.snapshot(os.getpid(), include_free=True)
# Read once: hypothesis replays draws whose bounds come from it.
SUMMARY = READER.process_summary(os.getpid())

COLUMNS = [name for name in RegionTable.__dataclass_fields__ if name != "residency"]
ANY_VALUE = st.one_of(
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.floats(allow_nan=True),
)


def test_real_snapshots_pass() -> None:
    assert validate.validate_snapshot(SNAPSHOT, HOST) is SNAPSHOT
    message = wire.snapshot_to_pb(SNAPSHOT)
    validate.validate_snapshot(message, wire.host_to_pb(HOST))
    regions = message.regions.SerializeToString()
    message.ClearField("regions")
    validate.validate_snapshot_parts(message.SerializeToString(), regions, HOST)
    validate.validate_summaries(
        [READER.process_summary(os.getpid()), READER.process_summary(os.getppid())], HOST
    )


def _refused(snapshot: Any, host: Any = HOST, match: str = "") -> None:
    with pytest.raises(errors.InvalidArgument, match=match):
        validate.validate_snapshot(snapshot, host)


def _with_regions(**columns: list[Any]) -> Snapshot:
    table = SNAPSHOT.regions
    values = {name: list(getattr(table, name)) for name in COLUMNS}
    values.update(columns)
    return replace(SNAPSHOT, regions=RegionTable(**values, residency=dict(table.residency)))


def test_precise_messages() -> None:
    starts, ends = SNAPSHOT.regions.start, SNAPSHOT.regions.end
    _refused(
        _with_regions(start=[starts[0], starts[0], *starts[2:]]),
        match="region 1 starts at .* before region 0 ends",
    )
    _refused(_with_regions(end=[starts[0], *ends[1:]]), match="region 0 is empty or reversed")
    _refused(_with_regions(kind=SNAPSHOT.regions.kind[:-1]), match="column kind has")
    _refused(_with_regions(state=[99] * len(starts)), match="column state holds unknown value 99")
    _refused(
        _with_regions(start=[starts[0] + 512, *starts[1:]]),
        match=r"region 0 \(.*\) does not start and end on a 4096-byte page boundary",
    )
    small = replace(HOST, user_address_max=ends[0] + 4096)
    _refused(SNAPSHOT, small, match="user address range ends at .* beyond the host's")
    process = replace(SNAPSHOT.process, user_address_max=small.user_address_max)
    _refused(
        replace(SNAPSHOT, process=process),
        small,
        match=r"region \d+ \(.*\) lies outside the host's user address range",
    )
    other = replace(HOST, host_id="another-host")
    _refused(SNAPSHOT, other, match="is for host 'validated', not 'another-host'")


def test_the_vsyscall_page_is_allowed_above_the_user_range_on_linux_only() -> None:
    gate = 0xFFFFFFFFFF600000
    table = RegionTable()
    for name in COLUMNS:
        getattr(table, name).extend(getattr(SNAPSHOT.regions, name)[:1])
    rows = {name: getattr(table, name) for name in COLUMNS}
    rows["start"].append(gate)
    rows["end"].append(gate + 4096)
    rows["state"].append(int(RegionState.COMMITTED))
    rows["kind"].append(int(RegionKind.VSYSCALL))
    for name in ("type", "protection", "protection_raw", "offset", "device", "inode"):
        rows[name].append(0)
    rows["path"].append("[vsyscall]")
    rows["deleted"].append(False)
    first_state = table.state[0]
    mapped = int(first_state != RegionState.FREE) + 1
    summary = replace(SNAPSHOT.summary, region_count=mapped, map_count=mapped - 1)
    snapshot = replace(SNAPSHOT, regions=table, summary=summary)
    validate.validate_snapshot(snapshot, HOST)
    rows["kind"][-1] = int(RegionKind.UNSPECIFIED)
    _refused(snapshot, match="outside the host's user address range")


@SETTINGS
@given(st.data())
def test_malformed_tables_are_refused_with_invalid_argument(data: st.DataObject) -> None:
    table = SNAPSHOT.regions
    n = len(table)
    values = {name: list(getattr(table, name)) for name in COLUMNS}
    for _ in range(data.draw(st.integers(1, 4))):
        name = data.draw(st.sampled_from(COLUMNS))
        how = data.draw(st.sampled_from(["value", "length", "swap", "type"]))
        column = values[name]
        if not isinstance(column, list):
            continue
        if how == "value" and column:
            column[data.draw(st.integers(0, len(column) - 1))] = data.draw(ANY_VALUE)
        elif how == "length":
            values[name] = column[: data.draw(st.integers(0, max(n - 1, 0)))]
        elif how == "swap" and len(column) > 1:
            i = data.draw(st.integers(0, len(column) - 2))
            column[i], column[i + 1] = column[i + 1], column[i]
        else:
            values[name] = data.draw(st.one_of(st.none(), st.text(max_size=3), st.just((1, 2))))
    broken = RegionTable(**values, residency=data.draw(st.sampled_from([{}, {"rss_bytes": [1]}])))
    snapshot = replace(SNAPSHOT, regions=broken)
    try:
        validate.validate_snapshot(snapshot, HOST)
    except errors.InvalidArgument:
        return
    # Some edits leave a valid table (a value replaced by an equal one, a swap of equal
    # rows); whatever passed must hold the invariants.
    assert all(len(broken.start) == len(getattr(broken, c)) for c in ("end", "state", "path"))
    assert all(s < e for s, e in zip(broken.start, broken.end, strict=True))
    assert all(e <= s for e, s in zip(broken.end, broken.start[1:], strict=False))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return bytes([*out, low])
        out.append(low | 0x80)


def _tag(field_number: int, wire_type: int) -> bytes:
    return _varint(field_number << 3 | wire_type)


def _cut_short(data: st.DataObject) -> bytes:
    """A tail no parser can read to its end: a varint that never ends, or a
    length-delimited field longer than what follows it."""
    if data.draw(st.booleans()):
        return b"\x80" * data.draw(st.integers(1, 9))
    length = data.draw(st.integers(1, 1 << 20))
    field_number = data.draw(st.integers(1, (1 << 29) - 1))
    return _tag(field_number, 2) + _varint(length) + b"\0" * data.draw(st.integers(0, length - 1))


def _bad_wire_type(data: st.DataObject) -> bytes:
    """A tag of wire type 6 or 7, which protobuf does not define."""
    field_number = data.draw(st.integers(1, (1 << 29) - 1))
    return _tag(field_number, data.draw(st.sampled_from([6, 7])))


@SETTINGS
@given(st.data())
def test_malformed_snapshot_bytes_are_refused_with_invalid_argument(data: st.DataObject) -> None:
    header, regions = wire.snapshot_parts(SNAPSHOT)
    validate.validate_snapshot_parts(header, regions, HOST)
    how = data.draw(st.sampled_from(["cut short", "bad wire type", "regions in header"]))
    if how == "regions in header":
        # The header is a Snapshot; field 5 is its regions, which travel apart.
        header += _tag(5, 2) + _varint(len(regions)) + regions
        match = "snapshot header must not carry regions"
    else:
        tail = _cut_short(data) if how == "cut short" else _bad_wire_type(data)
        if data.draw(st.booleans()):
            header += tail
        else:
            regions += tail
        match = "snapshot does not decode"
    with pytest.raises(errors.InvalidArgument, match=match):
        validate.validate_snapshot_parts(header, regions, HOST)


@SETTINGS
@given(st.binary(max_size=400), st.binary(max_size=400))
def test_arbitrary_bytes_never_raise_anything_but_invalid_argument(
    header: bytes, regions: bytes
) -> None:
    # Random bytes may decode to a valid (say, empty) snapshot: only what escapes is
    # checked here; the refusals are above.
    with contextlib.suppress(errors.InvalidArgument):
        validate.validate_snapshot_parts(header, regions, HOST)


REQUIRED_WIRE_COLUMNS = ("start_delta_pages", "state", "type", "protection")
OPTIONAL_WIRE_COLUMNS = (
    "protection_raw",
    "offset_bytes",
    "file_index",
    "allocation_base",
    "allocation_protection",
    "allocation_protection_raw",
)
STATE_VALUES = frozenset(int(v) for v in RegionState)
TYPE_VALUES = frozenset(int(v) for v in RegionType)


def _resize(column: Any, length: int, fill: int) -> None:
    del column[length:]
    column.extend([fill] * (length - len(column)))


@SETTINGS
@given(st.data())
def test_malformed_wire_tables_are_refused_naming_the_fault(data: st.DataObject) -> None:
    message = wire.snapshot_to_pb(SNAPSHOT)
    validate.validate_snapshot(message, HOST)
    table = message.regions
    n = len(table.size_pages)
    row = data.draw(st.integers(0, n - 1))
    how = data.draw(
        st.sampled_from(
            [
                "required length",
                "optional length",
                "page size",
                "file index",
                "state",
                "type",
                "protection",
                "empty region",
                "beyond 64 bits",
            ]
        )
    )
    if how == "required length":
        name = data.draw(st.sampled_from(REQUIRED_WIRE_COLUMNS))
        length = data.draw(st.integers(0, n + 3).filter(lambda k: k != n))
        _resize(getattr(table, name), length, 0)
        match = f"region table column {name} has {length} entries, not {n}$"
    elif how == "optional length":
        name = data.draw(st.sampled_from(OPTIONAL_WIRE_COLUMNS))
        length = data.draw(st.integers(1, n + 3).filter(lambda k: k != n))
        _resize(getattr(table, name), length, 0)
        match = f"region table column {name} has {length} entries, not 0 or {n}$"
    elif how == "page size":
        page = data.draw(st.integers(0, (1 << 64) - 1).filter(lambda p: not p or p & (p - 1)))
        table.page_size_bytes = page
        match = f"region table page_size_bytes {page} is not a power of two"
    elif how == "file index":
        index = data.draw(st.integers(len(table.files.path), (1 << 32) - 1))
        table.file_index[row] = index
        match = f"region table file_index {index} is out of range"
    elif how in ("state", "type"):
        known = STATE_VALUES if how == "state" else TYPE_VALUES
        value = data.draw(st.integers(0, (1 << 31) - 1).filter(lambda v: v not in known))
        getattr(table, how)[row] = value
        match = f"region column {how} holds unknown value {value}$"
    elif how == "protection":
        value = data.draw(st.integers(validate.PROTECTION_BITS + 1, (1 << 32) - 1))
        table.protection[row] = value
        match = f"region column protection holds {value}, outside"
    elif how == "empty region":
        table.size_pages[row] = 0
        match = f"region {row} is empty or reversed"
    else:
        table.start_delta_pages[row] = (1 << 64) - 1
        match = "region table extends beyond the 64-bit address space"
    with pytest.raises(errors.InvalidArgument, match=match):
        validate.validate_snapshot(message, HOST)


@SETTINGS
@given(st.data())
def test_arbitrary_wire_table_edits_never_raise_anything_but_invalid_argument(
    data: st.DataObject,
) -> None:
    message = wire.snapshot_to_pb(SNAPSHOT)
    columns = [
        (owner, f.name)
        for owner in (message.regions, message.regions.files)
        for f in owner.DESCRIPTOR.fields
        if f.is_repeated
    ]
    for _ in range(data.draw(st.integers(1, 3))):
        owner, name = data.draw(st.sampled_from([*columns, (message.regions, "page_size_bytes")]))
        if name == "page_size_bytes":
            message.regions.page_size_bytes = data.draw(st.integers(0, (1 << 64) - 1))
            continue
        column = getattr(owner, name)
        if name == "path":
            column.append(data.draw(st.text(max_size=10)))
        elif name == "deleted":
            column.append(True)
        elif column and data.draw(st.booleans()):
            del column[data.draw(st.integers(0, len(column) - 1))]
        else:
            wide = name.endswith(("pages", "bytes", "device", "inode", "base"))
            column.append(data.draw(st.integers(0, (1 << 64) - 1 if wide else 99)))
    # Some edits leave a valid table (an unused file entry appended): only what
    # escapes is checked here; the refusals are above.
    with contextlib.suppress(errors.InvalidArgument):
        validate.validate_snapshot(message, HOST)


NOT_AN_INT = st.one_of(st.none(), st.text(max_size=3), st.floats(), st.booleans())
NOT_A_TEXT = st.one_of(st.none(), st.integers(), st.binary(max_size=3))
BAD_SECONDS = st.one_of(
    st.floats(max_value=-1e-9),
    st.sampled_from([math.nan, math.inf, float(1 << 40)]),
    st.none(),
    st.text(max_size=3),
)
SUMMARY_UINTS = [name for name in Summary.__dataclass_fields__ if name != "headroom_fraction"]


def _break_summary(data: st.DataObject, item: ProcessSummary, i: int) -> tuple[Any, str]:
    """``item`` with one field made malformed in a known way, and the message (a
    pattern) that must refuse it. ``i`` is the item's place in the push."""
    process, summary = item.process, item.summary
    at = rf"processes\[{i}\]"
    how = data.draw(
        st.sampled_from(
            [
                "pid",
                "parent_pid",
                "text",
                "command_line",
                "start_time",
                "pointer_bits",
                "empty range",
                "range beyond host",
                "summary uint",
                "region_count",
                "map_count",
                "largest_free_bytes",
                "headroom_fraction",
                "capture_time",
            ]
        )
    )
    if how == "pid":
        pid = data.draw(st.one_of(st.integers(max_value=0), st.integers(min_value=1 << 32)))
        return replace(item, process=replace(process, pid=pid)), rf"{at}\.process\.pid "
    if how == "parent_pid":
        value = data.draw(
            st.one_of(st.integers(max_value=-1), st.integers(min_value=1 << 32), NOT_AN_INT)
        )
        process = replace(process, parent_pid=value)
        return replace(item, process=process), rf"{at}\.process\.parent_pid "
    if how == "text":
        name = data.draw(st.sampled_from(["name", "executable", "user"]))
        value = data.draw(
            st.one_of(
                NOT_A_TEXT,
                st.text(max_size=5).map(lambda t: t + "\0"),
                st.just("x" * (validate.MAX_PATH_CHARS + 1)),
            )
        )
        process = replace(process, **{name: value})
        return replace(item, process=process), rf"{at}\.process\.{name} "
    if how == "command_line":
        value = data.draw(
            st.one_of(
                st.just(("ok", "nul\0inside")),
                st.tuples(NOT_A_TEXT),
                st.text(max_size=5),
                st.none(),
            )
        )
        process = replace(process, command_line=value)
        return replace(item, process=process), rf"{at}\.process\.command_line"
    if how == "start_time":
        process = replace(process, start_time=data.draw(BAD_SECONDS))
        return replace(item, process=process), rf"{at}\.process\.start_time "
    if how == "pointer_bits":
        bits = data.draw(st.integers().filter(lambda b: b not in (32, 64)))
        process = replace(process, pointer_bits=bits)
        return replace(item, process=process), rf"{at}\.process\.pointer_bits "
    if how == "empty range":
        low = data.draw(st.integers(process.user_address_max, (1 << 64) - 1))
        process = replace(process, user_address_min=low)
        return replace(item, process=process), rf"{at}\.process user address range is empty"
    if how == "range beyond host":
        high = data.draw(st.integers(HOST.user_address_max + 1, (1 << 64) - 1))
        process = replace(process, user_address_max=high)
        return replace(item, process=process), rf"{at}\.process user address range ends at "
    if how == "summary uint":
        name = data.draw(st.sampled_from(SUMMARY_UINTS))
        value = data.draw(
            st.one_of(
                st.integers(max_value=-1),
                st.integers(min_value=validate.STORED_INT),
                NOT_AN_INT,
            )
        )
        summary = replace(summary, **{name: value})
        return replace(item, summary=summary), rf"{at}\.summary\.{name} must be an integer"
    if how == "region_count":
        count = data.draw(st.integers(validate.MAX_REGIONS + 1, validate.STORED_INT - 1))
        summary = replace(summary, region_count=count, map_count=0)
        return replace(item, summary=summary), rf"{at}\.summary\.region_count {count} exceeds"
    if how == "map_count":
        count = data.draw(st.integers(summary.region_count + 1, validate.STORED_INT - 1))
        summary = replace(summary, map_count=count)
        return replace(item, summary=summary), rf"{at}\.summary\.map_count exceeds"
    if how == "largest_free_bytes":
        largest = data.draw(st.integers(summary.free_bytes + 1, validate.STORED_INT - 1))
        summary = replace(summary, largest_free_bytes=largest)
        return replace(item, summary=summary), rf"{at}\.summary\.largest_free_bytes exceeds"
    if how == "headroom_fraction":
        value = data.draw(
            st.one_of(
                st.booleans(),
                st.floats(max_value=-1e-9),
                st.floats(min_value=1.0, exclude_min=True),
                st.just(math.nan),
                st.integers().filter(lambda v: v not in (0, 1)),
                st.none(),
                st.text(max_size=3),
            )
        )
        summary = replace(summary, headroom_fraction=value)
        return replace(item, summary=summary), rf"{at}\.summary\.headroom_fraction "
    return replace(item, capture_time=data.draw(BAD_SECONDS)), rf"{at}\.capture_time "


@SETTINGS
@given(st.data())
def test_malformed_summaries_are_refused_naming_the_field(data: st.DataObject) -> None:
    base = SUMMARY
    pids = data.draw(st.lists(st.integers(1, (1 << 32) - 1), min_size=1, max_size=5, unique=True))
    items = [replace(base, process=replace(base.process, pid=pid)) for pid in pids]
    assert validate.validate_summaries(items, HOST) == items
    i = data.draw(st.integers(0, len(items) - 1))
    items[i], match = _break_summary(data, items[i], i)
    # Only the broken item is malformed, wherever it stands in the push.
    with pytest.raises(errors.InvalidArgument, match=match):
        validate.validate_summaries(items, HOST)


@SETTINGS
@given(st.data())
def test_a_pid_twice_in_one_push_is_refused(data: st.DataObject) -> None:
    base = SUMMARY
    pids = data.draw(st.lists(st.integers(1, (1 << 32) - 1), min_size=2, max_size=5, unique=True))
    first, second = sorted(
        data.draw(st.lists(st.integers(0, len(pids) - 1), min_size=2, max_size=2, unique=True))
    )
    pids[second] = pids[first]
    items = [replace(base, process=replace(base.process, pid=pid)) for pid in pids]
    with pytest.raises(
        errors.InvalidArgument, match=f"pid {pids[first]} appears twice in one push"
    ):
        validate.validate_summaries(items, HOST)


@SETTINGS
@given(st.lists(st.tuples(st.integers(-5, 1 << 33), ANY_VALUE, ANY_VALUE), max_size=5))
def test_arbitrary_summaries_never_raise_anything_but_invalid_argument(rows: list[Any]) -> None:
    item = SUMMARY
    items = []
    for pid, region_count, headroom in rows:
        process = replace(item.process, pid=pid)
        summary = replace(item.summary, region_count=region_count, headroom_fraction=headroom)
        items.append(replace(item, process=process, summary=summary))
    with contextlib.suppress(errors.InvalidArgument):
        validate.validate_summaries(items, HOST)
