"""validate.py: real snapshots pass; anything malformed is refused with
InvalidArgument and nothing else."""

from __future__ import annotations

import contextlib
import math
import os
import re
from array import array
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmatlas import errors, native, validate, wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.model import (
    ALLOCATION_COLUMNS,
    RESIDENCY_FIELDS,
    OperatingSystem,
    ProcessSummary,
    RegionKind,
    RegionState,
    RegionTable,
    RegionType,
    Snapshot,
    Summary,
)

# The capture_path fixture only chooses the path, for all of a test's examples alike.
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
READER = LinuxReader(host_id="validated")
HOST = READER.host()
PAGE = HOST.page_size_bytes
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


def test_real_snapshots_pass(capture_path: str) -> None:
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


def test_precise_messages(capture_path: str) -> None:
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


def test_the_vsyscall_page_is_allowed_above_the_user_range_on_linux_only(capture_path: str) -> None:
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


def _broken_table(data: st.DataObject, table: RegionTable = SNAPSHOT.regions) -> RegionTable:
    """``table`` with one to four random edits: a value replaced, a column cut short,
    two neighbours swapped, a column replaced by something else; some residency or
    none."""
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
    residency = data.draw(
        st.sampled_from([{}, {"rss_bytes": [1]}, {name: [0] * n for name in RESIDENCY_FIELDS}])
    )
    return RegionTable(**values, residency=residency)


@SETTINGS
@given(st.data())
def test_malformed_tables_are_refused_with_invalid_argument(
    capture_path: str, data: st.DataObject
) -> None:
    broken = _broken_table(data)
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


# -- the C extension's loops and the Python checks decide alike ----------------------------


def _outcome(snapshot: Any, host: Any, *, on_native: bool) -> str:
    """What validate_snapshot says of ``snapshot`` on one path: its refusal, word for
    word, or "accepted"."""
    with native.use(on_native):
        try:
            validate.validate_snapshot(snapshot, host)
        except errors.InvalidArgument as exc:
            return str(exc)
    return "accepted"


def _require_native() -> None:
    if not native.available():
        message = f"the C extension is not built ({native.describe()})"
        if os.environ.get("VMATLAS_REQUIRE_NATIVE"):
            pytest.fail(message)
        pytest.skip(message)


def _both_paths(snapshot: Any, host: Any = HOST) -> str:
    """The outcome on the native path, asserted to be the pure path's."""
    _require_native()
    outcome = _outcome(snapshot, host, on_native=True)
    assert outcome == _outcome(snapshot, host, on_native=False)
    return outcome


# A snapshot as the server has it, decoded from the bytes an agent sent (the reader's
# own tables hold enum members, which the C loops leave to the Python checks).
DECODED = wire.snapshot_from_bytes(wire.snapshot_to_pb(SNAPSHOT).SerializeToString())


class _Int(int):
    """An int subclass: the C loops leave it to the Python checks, which take it."""


def _edited(*edits: tuple[str, int, Any], **columns: Any) -> Snapshot:
    """DECODED with values replaced (column, row, value) and columns replaced."""
    table = DECODED.regions
    values = {name: list(getattr(table, name)) for name in COLUMNS}
    values["residency"] = {name: list(c) for name, c in table.residency.items()}
    values.update(columns)
    for name, row, value in edits:
        values[name][row] = value
    return replace(DECODED, regions=RegionTable(**values))


def _gate_snapshot(size: int = PAGE, kind: int = RegionKind.VSYSCALL) -> Snapshot:
    """DECODED with its last region (the [vsyscall] page, above the user range)
    ``size`` bytes long and of ``kind``."""
    assert DECODED.regions.kind[-1] == RegionKind.VSYSCALL
    end = DECODED.regions.start[-1] + size
    return _edited(("end", -1, end), ("kind", -1, int(kind)))


STARTS, ENDS = DECODED.regions.start, DECODED.regions.end
N = len(STARTS)
UINT_BOUNDS = dict(validate._UINT_COLUMNS)  # the bounds both paths apply
# (what, snapshot, host or None for HOST, the refusal as a pattern, or "accepted")
CASES: list[tuple[str, Any, Any, str]] = [
    ("as read", DECODED, None, "accepted"),
    ("overlap", _edited(("start", 2, STARTS[1])), None, r"region 2 starts at .* before region 1"),
    (
        "unsorted",
        _edited(start=[STARTS[1], STARTS[0], *STARTS[2:]], end=[ENDS[1], ENDS[0], *ENDS[2:]]),
        None,
        r"region 1 starts at .* before region 0 ends",
    ),
    ("empty", _edited(("end", 1, STARTS[1])), None, "region 1 is empty or reversed"),
    ("reversed", _edited(("end", 1, STARTS[1] - PAGE)), None, "region 1 is empty or reversed"),
    (
        "free without free regions",
        replace(DECODED, includes_free=False),
        None,
        r"region \d+ is FREE but the snapshot does not include free regions",
    ),
    (
        "below the user range",
        DECODED,
        replace(HOST, user_address_min=STARTS[1]),
        r"region 0 \(.*\) lies outside the host's user address range",
    ),
    (
        "above the user range",
        replace(DECODED, process=replace(DECODED.process, user_address_max=ENDS[N // 2])),
        replace(HOST, user_address_max=ENDS[N // 2]),
        rf"region {N // 2 + 1} \(.*\) lies outside the host's user address range",
    ),
    ("a gate page", _gate_snapshot(), None, "accepted"),
    (
        "a gate page too large",
        _gate_snapshot(validate.VSYSCALL_MAX_BYTES + PAGE),
        None,
        rf"region {N - 1} \(.*\) lies outside",
    ),
    (
        "a gate page of another kind",
        _gate_snapshot(kind=RegionKind.OTHER_PSEUDO),
        None,
        rf"region {N - 1} \(.*\) lies outside",
    ),
    (
        "a gate page on Windows",
        replace(DECODED, host=replace(HOST, os=OperatingSystem.WINDOWS)),
        replace(HOST, os=OperatingSystem.WINDOWS),
        rf"region {N - 1} \(.*\) lies outside",
    ),
    (
        "a start off its page",
        _edited(("start", 1, STARTS[1] + 512)),
        None,
        r"region 1 \(.*\) does not start and end on a \d+-byte page boundary",
    ),
    (
        "an end off its page",
        _edited(("end", 1, ENDS[1] - 8)),
        None,
        r"region 1 \(.*\) does not start and end on a \d+-byte page boundary",
    ),
    (
        "a region count that is not the table's",
        replace(
            DECODED,
            summary=replace(DECODED.summary, region_count=DECODED.summary.region_count + 1),
        ),
        None,
        "snapshot.summary.region_count is .* but the table holds",
    ),
    ("a boolean type", _edited(("type", 0, True)), None, "accepted"),
    ("an int subclass of a start", _edited(("start", 1, _Int(STARTS[1]))), None, "accepted"),
    (
        "an int subclass of a state",
        _edited(("state", 1, _Int(DECODED.regions.state[1]))),
        None,
        "accepted",
    ),
    ("a boolean offset", _edited(("offset", 1, True)), None, "accepted"),
    ("deleted as 0 and 1", _edited(("deleted", 1, 1), ("deleted", 2, 0)), None, "accepted"),
    (
        "deleted 2",
        _edited(("deleted", 1, 2)),
        None,
        "column deleted holds a value that is not a bool",
    ),
    ("deleted text", _edited(("deleted", 1, "x")), None, "column deleted holds"),
    (
        "path not text",
        _edited(("path", 1, b"/x")),
        None,
        "column path holds a value that is not text",
    ),
    ("path with a NUL", _edited(("path", 1, "/a\0b")), None, "a region path contains a NUL"),
    (
        "path too long",
        _edited(("path", 1, "/" * (validate.MAX_PATH_CHARS + 1))),
        None,
        "a region path is 8193 characters long",
    ),
    (
        "path of a str subclass",
        _edited(("path", 1, type("S", (str,), {})("/x"))),
        None,
        "column path holds",
    ),
    (
        "residency",
        _edited(residency={name: [PAGE] * N for name in RESIDENCY_FIELDS}),
        None,
        "accepted",
    ),
    (
        "residency without a column",
        _edited(residency={name: [0] * N for name in RESIDENCY_FIELDS[1:]}),
        None,
        "residency must have exactly the columns",
    ),
    (
        "residency column short",
        _edited(residency={name: [0] * (N - (i == 0)) for i, name in enumerate(RESIDENCY_FIELDS)}),
        None,
        f"residency column {RESIDENCY_FIELDS[0]} does not have {N} rows",
    ),
    (
        "residency value negative",
        _edited(residency={name: [-i] * N for i, name in enumerate(RESIDENCY_FIELDS)}),
        None,
        f"region column residency {RESIDENCY_FIELDS[1]} holds -1",
    ),
    ("residency not a dict", _edited(residency=[]), None, "residency is not a table of columns"),
    *(
        (
            f"{name} one short",
            _edited(**{name: list(getattr(DECODED.regions, name))[:-1]}),
            None,
            f"region column {name} has {N - 1} rows, not {N}$",
        )
        for name in COLUMNS
        if name not in (*ALLOCATION_COLUMNS, "start")
    ),
    (
        "start one short",
        _edited(start=STARTS[:-1]),
        None,
        f"region column end has {N} rows, not {N - 1}$",
    ),
    *(
        (
            f"{name} of one row",
            _edited(**{name: [0]}),
            None,
            f"region column {name} has 1 rows, not 0 or {N}$",
        )
        for name in ALLOCATION_COLUMNS
    ),
    *(
        (f"{name} {how}", _edited(**{name: [value] * N}), None, match)
        for name, bound in UINT_BOUNDS.items()
        for how, value, match in (
            ("negative", -1, rf"region column {name} holds -1, outside \[0, {bound:#x}\)"),
            ("at its bound", bound, rf"region column {name} holds {bound}, outside"),
            ("a float", 1.0, f"region column {name} holds a value that is not an integer"),
            ("None", None, f"region column {name} holds a value that is not an integer"),
        )
    ),
    *(
        (f"{name} {value!r}", _edited((name, N // 2, value)), None, match)
        for name in ("state", "type", "kind")
        for value, match in (
            (99, f"region column {name} holds unknown value 99$"),
            (-1, f"region column {name} holds unknown value -1$"),
            (1 << 70, f"region column {name} holds unknown value {1 << 70}$"),
            ("1", f"region column {name} holds a value that is not an integer"),
        )
    ),
]


@pytest.mark.parametrize(("what", "snapshot", "host", "match"), CASES, ids=[c[0] for c in CASES])
def test_the_native_checks_decide_as_the_python_ones(
    what: str, snapshot: Any, host: Any, match: str
) -> None:
    outcome = _both_paths(snapshot, HOST if host is None else host)
    if match == "accepted":
        assert outcome == "accepted"
    else:
        assert re.search(match, outcome), outcome


def test_the_native_loops_decide_a_decoded_table_alone() -> None:
    _require_native()
    table = DECODED.regions
    mapped = len(table) - table.state.count(RegionState.FREE)
    assert validate._checked_natively(native._built, table, HOST, True, PAGE) == mapped
    assert validate._checked_natively(native._built, table, HOST, False, PAGE) is None


def _typed(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` with each integer column typed as the native reader decodes it."""
    table = snapshot.regions
    columns = {
        name: array(DECODED_TYPECODES[name], getattr(table, name))
        for name in DECODED_TYPECODES
        if getattr(table, name)
    }
    residency = {name: array("Q", column) for name, column in table.residency.items()}
    return replace(snapshot, regions=replace(table, residency=residency, **columns))


DECODED_TYPECODES = {
    name: getattr(DECODED.regions, name).typecode
    for name in COLUMNS
    if isinstance(getattr(DECODED.regions, name), array)
}


@pytest.mark.parametrize(
    ("edits", "match"),
    [
        ((), "accepted"),
        ((("state", 3, 63),), "region column state holds unknown value 63$"),
        ((("kind", 0, 255),), "region column kind holds unknown value 255$"),
        ((("end", 0, 0),), "^region 0 is empty or reversed"),
        ((("start", 5, 0),), "^region 5 starts at 0x0, before region 4 ends"),
        ((("offset", 2, (1 << 64) - 1),), "accepted"),
    ],
)
def test_typed_columns_are_decided_as_lists_are(edits: Any, match: str) -> None:
    _require_native()
    assert DECODED_TYPECODES, "the native reader decodes into typed columns"
    listed = _edited(*edits)
    outcome = _both_paths(_typed(listed))
    assert outcome == _both_paths(listed)
    assert re.search(match, outcome), outcome


def test_the_paths_total_is_counted_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    distinct = {p for p in DECODED.regions.path}
    total = sum(map(len, distinct))
    monkeypatch.setattr(validate, "MAX_STRINGS_TOTAL_CHARS", total)
    assert _both_paths(DECODED) == "accepted"
    # Each distinct path counts once, however many regions it names and whichever
    # object holds it.
    copies = [str(p + " ")[:-1] for p in DECODED.regions.path]
    assert _both_paths(_edited(path=copies)) == "accepted"
    monkeypatch.setattr(validate, "MAX_STRINGS_TOTAL_CHARS", total - 1)
    assert _both_paths(DECODED) == f"region paths total {total} characters (at most {total - 1})"


@SETTINGS
@given(st.data())
def test_random_table_edits_are_decided_alike_on_both_paths(data: st.DataObject) -> None:
    _both_paths(replace(DECODED, regions=_broken_table(data, DECODED.regions)))


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
def test_malformed_snapshot_bytes_are_refused_with_invalid_argument(
    capture_path: str, data: st.DataObject
) -> None:
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
    capture_path: str, header: bytes, regions: bytes
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
def test_malformed_wire_tables_are_refused_naming_the_fault(
    capture_path: str, data: st.DataObject
) -> None:
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
    with pytest.raises(errors.InvalidArgument, match=match) as whole:
        validate.validate_snapshot(message, HOST)
    # Sent as agents send it, a header and the table's bytes: the same refusal.
    regions = message.regions.SerializeToString()
    message.ClearField("regions")
    with pytest.raises(errors.InvalidArgument) as parts:
        validate.validate_snapshot_parts(message.SerializeToString(), regions, HOST)
    assert str(parts.value) == str(whole.value)


@SETTINGS
@given(st.data())
def test_arbitrary_wire_table_edits_never_raise_anything_but_invalid_argument(
    capture_path: str, data: st.DataObject
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
