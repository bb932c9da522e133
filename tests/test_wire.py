"""The protobuf boundary: lossless round trips, enum values equal to the schema's."""

from __future__ import annotations

import os
import zlib
from array import array

import pytest

from tests.conftest import Planter, spaced_table
from vmatlas import wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.model import (
    PROCESS_FIELD_TYPES,
    OperatingSystem,
    Process,
    ProcessSummary,
    Protection,
    RegionKind,
    RegionState,
    RegionTable,
    RegionType,
    SnapshotView,
    Summary,
)
from vmatlas.v1 import agent_pb2
from vmatlas.v1 import snapshot_pb2 as pb

# Every test here runs over both capture paths: the C loops and the pure-Python ones.
pytestmark = pytest.mark.usefixtures("capture_path")


@pytest.mark.parametrize(
    ("model_enum", "pb_enum", "prefix"),
    [
        (OperatingSystem, pb.OperatingSystem, "OPERATING_SYSTEM_"),
        (RegionState, pb.RegionState, "REGION_STATE_"),
        (RegionType, pb.RegionType, "REGION_TYPE_"),
        (RegionKind, pb.RegionKind, "REGION_KIND_"),
        (SnapshotView, pb.SnapshotView, "SNAPSHOT_VIEW_"),
    ],
)
def test_model_enums_equal_the_schema(model_enum, pb_enum, prefix) -> None:  # type: ignore[no-untyped-def]
    schema = {name.removeprefix(prefix): value for name, value in pb_enum.items()}
    assert {m.name: int(m) for m in model_enum} == schema


def test_protection_bits_equal_the_schema() -> None:
    schema = {
        name.removeprefix("PROTECTION_FLAG_"): value
        for name, value in pb.ProtectionFlag.items()
        if value
    }
    assert {f.name: int(f) for f in Protection if f} == schema


def test_snapshot_round_trips_through_bytes(planter: Planter) -> None:
    planter.reserve(3)
    base = planter.map(5)
    planter.touch(base, 2)
    for options in ({}, {"include_free": True}, {"include_residency": True}):
        snap = LinuxReader().snapshot(planter.pid, **options)
        data = wire.snapshot_to_pb(snap).SerializeToString()
        back = wire.snapshot_from_pb(pb.Snapshot.FromString(data))
        assert back == snap


def test_snapshot_bytes_read_as_protobuf_reads_them(planter: Planter) -> None:
    """The region table is split out of a serialized snapshot and read on its own; the
    result equals protobuf's reading of the whole, whatever the field order."""
    planter.reserve(3)
    planter.map(5)
    for options in ({}, {"include_free": True}, {"include_residency": True}):
        snap = LinuxReader().snapshot(planter.pid, **options)
        in_order = wire.snapshot_to_pb(snap).SerializeToString()
        joined = wire.join_snapshot(*wire.snapshot_parts(snap))
        for data in (in_order, joined):
            assert wire.snapshot_from_bytes(data) == snap
        response = wire.snapshot_response(snap)
        assert response.parse() == agent_pb2.GetSnapshotResponse(snapshot=wire.snapshot_to_pb(snap))
        assert wire.snapshot_from_response_bytes(response.data) == snap
        assert wire.snapshot_from_response_bytes(response.parse().SerializeToString()) == snap


def test_snapshot_bytes_of_other_shapes_are_read_by_protobuf() -> None:
    """Bytes the splitting does not take (a region table sent in two parts, which
    protobuf merges; a truncated field) are left to protobuf: the same snapshot, or
    the same refusal."""
    snap = LinuxReader().snapshot(os.getpid())
    header, regions = wire.snapshot_parts(snap)
    table = wire.table_to_pb(snap.regions, page_size_bytes=snap.host.page_size_bytes)
    first, second = pb.RegionTable(), pb.RegionTable()
    first.start_delta_pages.extend(table.start_delta_pages)
    second.CopyFrom(table)
    second.ClearField("start_delta_pages")
    twice = wire.join_snapshot(header, first.SerializeToString()) + wire.join_snapshot(
        b"", second.SerializeToString()
    )
    assert wire.snapshot_from_bytes(twice) == snap
    whole = wire.join_snapshot(header, regions)
    with pytest.raises(ValueError, match="not a serialized Snapshot"):
        wire.snapshot_from_bytes(whole[:-1])
    with pytest.raises(ValueError, match="not a serialized GetSnapshotResponse"):
        wire.snapshot_from_response_bytes(wire.snapshot_response(snap).data[:-1])


def test_wire_is_smaller_than_the_maps_text() -> None:
    snap = LinuxReader().snapshot(os.getpid())
    with open(f"/proc/{os.getpid()}/maps", "rb") as f:
        text = f.read()
    assert len(wire.table_to_pb(snap.regions).SerializeToString()) < len(text) / 2


def _windows_like_table() -> RegionTable:
    """Columns the Linux reader never fills: raw protections of their own, allocation
    bases, a kind without a path, a path of two files, no devices or inodes."""
    page = 4096
    return RegionTable(
        start=[0x10000, 0x11000, 0x20000, 0x7FFE0000],
        end=[0x11000, 0x20000, 0x30000, 0x7FFE1000],
        state=[3, 2, 3, 3],
        type=[3, 3, 1, 2],
        protection=[3, 0, 5, 1],
        protection_raw=[0x04, 0x01, 0x20, 0x102],
        kind=[1, 1, 0, 0],
        path=["", "", "C:\\app.exe", "C:\\app.exe"],
        offset=[0, 0, 0, 3 * page],
        device=[0, 0, 0, 0],
        inode=[0, 0, 0, 0],
        deleted=[False, False, False, True],
        allocation_base=[0x10000, 0x10000, 0x20000, 0x7FFE0000],
        allocation_protection=[3, 3, 7, 1],
        allocation_protection_raw=[0x04, 0x04, 0x80, 0x02],
    )


def _round_trip(table: RegionTable, page: int = 4096) -> RegionTable:
    data = wire.table_to_pb(table, page_size_bytes=page).SerializeToString()
    return wire.table_from_pb(pb.RegionTable.FromString(data))


def test_linux_tables_travel_in_pages_with_a_file_table() -> None:
    table = LinuxReader().snapshot(os.getpid()).regions
    message = wire.table_to_pb(table)
    assert message.page_size_bytes == 4096
    sizes = [(end - start) // 4096 for start, end in zip(table.start, table.end, strict=True)]
    assert list(message.size_pages) == sizes
    assert not message.protection_raw  # equal to protection on Linux
    files = message.files
    assert files.path[0] == ""
    # Columns are empty (all zero) or start with entry 0's zero.
    assert all(not c or not c[0] for c in (files.device, files.inode, files.deleted, files.kind))
    columns = (table.path, table.device, table.inode, table.deleted, table.kind)
    distinct = set(zip(*columns, strict=True))
    assert len(files.path) == len(distinct | {("", 0, 0, False, 0)})
    assert [files.path[i] for i in message.file_index] == table.path
    assert _round_trip(table) == table


def test_other_columns_round_trip() -> None:
    table = _windows_like_table()
    message = wire.table_to_pb(table)
    assert list(message.protection_raw) == table.protection_raw
    assert list(message.files.path) == ["", "", "C:\\app.exe", "C:\\app.exe"]
    assert list(message.file_index) == [1, 1, 2, 3]
    assert not message.files.device and not message.files.inode  # all zero
    assert _round_trip(table) == table
    assert _round_trip(table, page=1 << 16 >> 4) == table
    assert _round_trip(RegionTable()) == RegionTable()


# The typed column each decoded column is on the native path, as the native capture
# fills them (path and deleted stay lists of shared objects); raw protections that do
# not travel (they equal the protections) are a copy of those.
TYPECODES = {
    "start": "Q", "end": "Q", "offset": "Q", "device": "Q", "inode": "Q",
    "state": "B", "type": "B", "protection": "B", "kind": "B",
    "protection_raw": "IB", "allocation_base": "Q", "allocation_protection": "B",
    "allocation_protection_raw": "I",
}  # fmt: skip


def test_tables_decode_into_typed_columns_natively(capture_path: str) -> None:
    for table in (LinuxReader().snapshot(os.getpid(), include_residency=True).regions,
                  _windows_like_table()):  # fmt: skip
        back = wire.table_from_bytes(wire.table_to_bytes(table))
        assert back == table
        for name, typecode in TYPECODES.items():
            column = getattr(back, name)
            if not column:
                continue
            if capture_path == "native":
                assert isinstance(column, array) and column.typecode in typecode, name
            else:
                assert type(column) is list, name
        assert type(back.path) is list and type(back.deleted) is list
        for name, column in back.residency.items():
            assert isinstance(column, array if capture_path == "native" else list), name


def test_a_value_too_wide_for_its_typed_column_decodes_as_upb_reads_it() -> None:
    # A state of 300 fits no byte: the native reader leaves the table to upb, whose
    # lists the checks then refuse; nothing is cut to fit.
    message = wire.table_to_pb(_windows_like_table())
    message.state[0] = 300
    back = wire.table_from_bytes(message.SerializeToString())
    assert list(back.state) == [300, 2, 3, 3]


def test_tables_off_the_page_are_refused_not_rounded() -> None:
    table = _windows_like_table()
    table.end[1] += 512
    table.start[2] += 512
    with pytest.raises(ValueError, match=r"region 1 \(0x11000-0x20200\) does not start and end"):
        wire.table_to_pb(table)
    with pytest.raises(ValueError, match=r"region 0 \(0x10000-0x11000\) .* 65536-byte page"):
        wire.table_to_pb(_windows_like_table(), page_size_bytes=65536)
    with pytest.raises(ValueError, match="page size 3000 is not a power of two"):
        wire.table_to_pb(_windows_like_table(), page_size_bytes=3000)
    table = _windows_like_table()
    table.inode.pop()
    with pytest.raises(ValueError, match="region column inode has 3 rows, not 4"):
        wire.table_to_pb(table)


def _break_size(m: pb.RegionTable) -> None:
    m.size_pages.append(1)


def _break_raw(m: pb.RegionTable) -> None:
    del m.protection_raw[-1]


def _break_index(m: pb.RegionTable) -> None:
    m.file_index[2] = 9


def _break_entry_0(m: pb.RegionTable) -> None:
    m.files.path[0] = "C:\\"


def _break_files(m: pb.RegionTable) -> None:
    m.files.deleted.append(True)


def _break_no_files(m: pb.RegionTable) -> None:
    m.ClearField("files")


def _break_page(m: pb.RegionTable) -> None:
    m.page_size_bytes = 3


def _break_overflow(m: pb.RegionTable) -> None:
    m.page_size_bytes = 1 << 62


def _break_sum(m: pb.RegionTable) -> None:
    # Each value fits 64 bits in bytes; the first end does not.
    m.start_delta_pages[0] = (1 << 64) // m.page_size_bytes - 1


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_break_size, "column start_delta_pages has 4 entries, not 5"),
        (_break_raw, "column protection_raw has 3 entries, not 0 or 4"),
        (_break_index, r"file_index 9 is out of range \(4 files\)"),
        (_break_entry_0, "file entry 0 is .*, not no file"),
        (_break_files, "column files.deleted has 5 entries, not 0 or 4"),
        (_break_no_files, "no files.path"),
        (_break_page, "page_size_bytes 3 is not a power of two"),
        (_break_overflow, "beyond the 64-bit address space"),
        (_break_sum, "beyond the 64-bit address space"),
    ],
)
def test_malformed_tables_are_refused(damage, message) -> None:  # type: ignore[no-untyped-def]
    table = wire.table_to_pb(_windows_like_table())
    damage(table)
    with pytest.raises(ValueError, match=message):
        wire.table_from_pb(table)


def test_small_tables_travel_deflated_and_plain_ones_still_read() -> None:
    table = LinuxReader().snapshot(os.getpid()).regions
    plain = wire.table_to_pb(table).SerializeToString()
    assert len(plain) <= wire.DEFLATE_MAX_BYTES
    data = wire.table_to_bytes(table)
    message = pb.RegionTable.FromString(data)
    assert [f.name for f, _ in message.ListFields()] == ["deflated"]
    assert zlib.decompress(message.deflated) == plain
    assert len(data) < len(plain) / 2  # paths are most of it, and they compress
    assert wire.table_from_bytes(data) == table
    assert wire.table_from_bytes(plain) == table  # as older writers send it


def test_large_tables_travel_plain() -> None:
    table = spaced_table(20_000)  # about 5 bytes a region: past DEFLATE_MAX_BYTES
    data = wire.table_to_bytes(table)
    assert data == wire.table_to_pb(table).SerializeToString()
    assert len(data) > wire.DEFLATE_MAX_BYTES
    assert wire.table_from_bytes(data) == table


def _deflated(plain: bytes) -> pb.RegionTable:
    return pb.RegionTable(deflated=zlib.compress(plain))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda plain: pb.RegionTable(deflated=b"not zlib"), "do not inflate"),
        (lambda plain: pb.RegionTable(deflated=zlib.compress(plain)[:-5]), "cut short"),
        (lambda plain: pb.RegionTable(deflated=zlib.compress(plain) + b"x"), "run on"),
        (lambda plain: pb.RegionTable(deflated=zlib.compress(b"\xff\xff")), "not a RegionTable"),
        (
            lambda plain: pb.RegionTable(
                deflated=zlib.compress(_deflated(plain).SerializeToString())
            ),
            "holds another deflated one",
        ),
        (
            lambda plain: pb.RegionTable(deflated=zlib.compress(plain), page_size_bytes=4096),
            "both deflated bytes and plain columns",
        ),
    ],
)
def test_malformed_deflated_tables_are_refused(make, message) -> None:  # type: ignore[no-untyped-def]
    plain = wire.table_to_pb(_windows_like_table()).SerializeToString()
    with pytest.raises(ValueError, match=message):
        wire.table_from_bytes(make(plain).SerializeToString())


def test_a_table_that_inflates_past_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = wire.table_to_pb(_windows_like_table()).SerializeToString()
    monkeypatch.setattr(wire, "INFLATE_MAX_BYTES", len(plain) - 1)
    with pytest.raises(ValueError, match="inflates beyond"):
        wire.table_from_bytes(_deflated(plain).SerializeToString())
    monkeypatch.setattr(wire, "INFLATE_MAX_BYTES", len(plain))
    assert wire.table_from_bytes(_deflated(plain).SerializeToString()) == _windows_like_table()


def test_process_order_is_one_enum_with_the_schema_s_values() -> None:
    from vmatlas import errors
    from vmatlas.model import ProcessOrder
    from vmatlas.v1 import agent_pb2

    names = {ProcessOrder.REGIONS: "PROCESS_ORDER_REGION_COUNT"}
    for order in ProcessOrder:
        expected = names.get(order, f"PROCESS_ORDER_{order.name}")
        assert agent_pb2.ProcessOrder.Name(wire.process_order_to_pb(order)) == expected
        assert wire.process_order_from_pb(wire.process_order_to_pb(order)) is order
        assert ProcessOrder.parse(order.keyword) is order
    assert {int(o) for o in ProcessOrder} | {0} == set(agent_pb2.ProcessOrder.values())
    assert wire.process_order_from_pb(agent_pb2.PROCESS_ORDER_UNSPECIFIED) is ProcessOrder.REGIONS
    with pytest.raises(errors.InvalidArgument):
        wire.process_order_from_pb(99)
    with pytest.raises(errors.InvalidArgument, match="regions, headroom, pid"):
        ProcessOrder.parse("largest")


@pytest.mark.parametrize("request_id", [0, 1, 300, 2**64 - 1])
def test_an_agent_s_snapshot_answer_is_written_as_protobuf_writes_it(request_id: int) -> None:
    from vmatlas.v1 import hub_pb2

    header, regions = wire.snapshot_parts(LinuxReader().snapshot(os.getpid()))
    for parts in ((header, regions), (header, b""), (b"", regions), (b"", b"")):
        answer = wire.snapshot_result_request(request_id, *parts)
        expected = hub_pb2.ConnectRequest()
        result = expected.snapshot_result
        result.request_id, result.snapshot_header, result.regions = request_id, *parts
        assert answer.message_class is hub_pb2.ConnectRequest
        assert wire.serialize_response(answer) == expected.SerializeToString()
        assert answer.parse() == expected


@pytest.mark.parametrize("fields", [{"snapshot_id": "17"}, {"snapshot_id": ""}])
def test_fleet_snapshot_responses_are_written_as_protobuf_writes_them(
    fields: dict[str, str],
) -> None:
    from vmatlas.v1 import fleet_pb2

    snap = LinuxReader().snapshot(os.getpid())
    header, regions = wire.snapshot_parts(snap)
    cls = fleet_pb2.GetHostSnapshotResponse
    data = wire.snapshot_bytes_response(cls, header, regions, **fields).data
    assert data == cls(snapshot=wire.join_snapshot(header, regions), **fields).SerializeToString()
    back, message = wire.snapshot_from_message_bytes(data, cls)
    assert back == snap and message.snapshot_id == fields["snapshot_id"]
    # Another writer's field order, or the field twice (the last one counts): upb reads it.
    again = cls(snapshot=b"", **fields).SerializeToString() + data
    assert wire.snapshot_from_message_bytes(again, cls)[0] == snap
    with pytest.raises(ValueError, match="not a serialized GetHostSnapshotResponse"):
        wire.snapshot_from_message_bytes(data[:-3] + b"\xff", cls)


def test_a_decoded_process_has_the_plain_field_types() -> None:
    # The server's per-summary fast paths take a process of exactly these types.
    process = Process(
        pid=7,
        parent_pid=1,
        name="n",
        command_line=("a", "b"),
        start_time=12.5,
        user_address_max=1 << 47,
        address_space_empty=True,
    )
    message = wire.process_summary_to_pb(ProcessSummary(process, Summary(), 3.25))
    decoded = wire.process_summary_from_pb(message)
    assert decoded == ProcessSummary(process, Summary(), 3.25)
    values = tuple(getattr(decoded.process, name) for name in Process.__dataclass_fields__)
    assert tuple(map(type, values)) == PROCESS_FIELD_TYPES
