"""validate.py: real snapshots pass; anything malformed is refused with
InvalidArgument and nothing else."""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmatlas import errors, validate, wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.model import RegionKind, RegionState, RegionTable, Snapshot

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
READER = LinuxReader(host_id="validated")
HOST = READER.host()
SNAPSHOT = READER.snapshot(os.getpid(), include_free=True)

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


@SETTINGS
@given(st.binary(max_size=400), st.binary(max_size=400))
def test_arbitrary_bytes_are_refused_with_invalid_argument(header: bytes, regions: bytes) -> None:
    with contextlib.suppress(errors.InvalidArgument):
        validate.validate_snapshot_parts(header, regions, HOST)


@SETTINGS
@given(st.data())
def test_arbitrary_wire_tables_are_refused_with_invalid_argument(data: st.DataObject) -> None:
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
    with contextlib.suppress(errors.InvalidArgument):
        validate.validate_snapshot(message, HOST)


@SETTINGS
@given(st.lists(st.tuples(st.integers(-5, 1 << 33), ANY_VALUE, ANY_VALUE), max_size=5))
def test_malformed_summaries_are_refused_with_invalid_argument(rows: list[Any]) -> None:
    item = READER.process_summary(os.getpid())
    items = []
    for pid, region_count, headroom in rows:
        process = replace(item.process, pid=pid)
        summary = replace(item.summary, region_count=region_count, headroom_fraction=headroom)
        items.append(replace(item, process=process, summary=summary))
    with contextlib.suppress(errors.InvalidArgument):
        validate.validate_summaries(items, HOST)
