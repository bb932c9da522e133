"""The protobuf boundary: the only module that converts between :mod:`vmatlas.model`
and the ``vmatlas.v1`` wire schema. Everything else works on the plain model."""

from __future__ import annotations

import math
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import replace
from itertools import accumulate, chain, repeat
from operator import add, attrgetter, lshift, rshift, sub
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from vmatlas import errors, native
from vmatlas.fleet import FleetProcess, HostStatus, StoredSnapshotInfo
from vmatlas.model import (
    ALLOCATION_COLUMNS,
    RESIDENCY_FIELDS,
    ROW_COLUMNS,
    Host,
    IntColumn,
    OperatingSystem,
    Process,
    ProcessOrder,
    ProcessSummary,
    RegionTable,
    Snapshot,
    SnapshotView,
    Summary,
)
from vmatlas.v1 import agent_pb2, fleet_pb2, hub_pb2
from vmatlas.v1 import snapshot_pb2 as pb


class UndecodableBytes(ValueError):
    """Bytes that do not parse as the message they should hold at all (as opposed to
    a message that parses but whose contents are malformed: a plain ValueError)."""


_SUMMARY_FIELDS = tuple(Summary.__dataclass_fields__)
# The wire Summary's fields in the model's order, read in one call.
_summary_pb_values = attrgetter(*_SUMMARY_FIELDS)
_HOST_FIELDS = tuple(name for name in Host.__dataclass_fields__ if name != "os")
# The wire Process's fields in the model's order (the names are the same).
_process_pb_values = attrgetter(*Process.__dataclass_fields__)


def timestamp_to_pb(seconds: float, message: Timestamp) -> None:
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * 1e9)
    if nanos == 1_000_000_000:  # rounded up into the next second
        whole, nanos = whole + 1, 0
    message.seconds = whole
    message.nanos = nanos


def timestamp_from_pb(message: Timestamp) -> float:
    return message.seconds + message.nanos / 1e9


def host_to_pb(host: Host, message: pb.Host | None = None) -> pb.Host:
    message = pb.Host() if message is None else message
    for name in _HOST_FIELDS:
        setattr(message, name, getattr(host, name))
    message.os = int(host.os)  # type: ignore[assignment]
    return message


def host_from_pb(message: pb.Host) -> Host:
    """Raises ValueError for an ``os`` this version does not know."""
    values: dict[str, Any] = {name: getattr(message, name) for name in _HOST_FIELDS}
    return Host(os=OperatingSystem(message.os), **values)


def registered_host_from_pb(message: pb.Host) -> Host:
    """The host an agent registers as: :func:`host_from_pb`, but what this version
    cannot read is InvalidArgument (the agent's fault), named without internals."""
    try:
        return host_from_pb(message)
    except ValueError:
        raise errors.InvalidArgument(
            f"the registration's host.os ({message.os}) is not a known operating system"
        ) from None


def process_to_pb(process: Process, message: pb.Process | None = None) -> pb.Process:
    message = pb.Process() if message is None else message
    message.pid = process.pid
    message.parent_pid = process.parent_pid
    message.name = process.name
    message.executable = process.executable
    message.command_line[:] = process.command_line
    message.user = process.user
    if process.start_time:
        timestamp_to_pb(process.start_time, message.start_time)
    message.pointer_bits = process.pointer_bits
    message.user_address_min = process.user_address_min
    message.user_address_max = process.user_address_max
    message.address_space_empty = process.address_space_empty
    message.container_id = process.container_id
    message.pod_uid = process.pod_uid
    return message


def process_from_pb(message: pb.Process) -> Process:
    # Every field in one call (a server decodes one per summary it stores), in the
    # model's order: command_line and start_time are converted, the rest are as read.
    (
        pid, parent_pid, name, executable, command_line, user, start_time, *rest
    ) = _process_pb_values(message)  # fmt: skip
    return Process(
        pid,
        parent_pid,
        name,
        executable,
        tuple(command_line),
        user,
        timestamp_from_pb(start_time),
        *rest,
    )


def summary_to_pb(summary: Summary, message: pb.Summary | None = None) -> pb.Summary:
    message = pb.Summary() if message is None else message
    for name in _SUMMARY_FIELDS:
        setattr(message, name, getattr(summary, name))
    return message


def summary_from_pb(message: pb.Summary) -> Summary:
    return Summary(*_summary_pb_values(message))


# The wire RegionTable's unit when the caller names no page size: the page of x86-64
# Linux and of Windows. Snapshots always pass their host's page size.
DEFAULT_PAGE_SIZE_BYTES = 4096

# RegionFiles entry 0, "no file": path, then _FILE_COLUMNS.
_NO_FILE = ("", 0, 0, False, 0)
_FILE_COLUMNS = ("device", "inode", "deleted", "kind")
_FILE_ZEROS = dict(zip(_FILE_COLUMNS, _NO_FILE[1:], strict=True))


def _misaligned(table: RegionTable, page: int) -> ValueError:
    for i, (start, end) in enumerate(zip(table.start, table.end, strict=True)):
        if (start | end) % page:
            return ValueError(
                f"region {i} ({start:#x}-{end:#x}) does not start and end on a "
                f"{page}-byte page boundary"
            )
    return ValueError(f"region table does not start and end on {page}-byte page boundaries")


def table_to_pb(
    table: RegionTable,
    message: pb.RegionTable | None = None,
    *,
    page_size_bytes: int = DEFAULT_PAGE_SIZE_BYTES,
) -> pb.RegionTable:
    """Columns out: boundaries in pages, starts as deltas from the previous end, and
    what regions share (path, device, inode, deleted, kind) as an index into a table of
    the distinct files, so a large address space packs into a few bytes a row.

    Raises ValueError when a start or end is not a multiple of ``page_size_bytes``, or
    that is not a power of two, or the columns differ in length: nothing is lost."""
    page = page_size_bytes
    if page <= 0 or page & (page - 1):
        raise ValueError(f"page size {page} is not a power of two")
    n = len(table.start)
    for name in ROW_COLUMNS:
        if len(getattr(table, name)) != n:
            raise ValueError(f"region column {name} has {len(getattr(table, name))} rows, not {n}")
    message = pb.RegionTable() if message is None else message
    data = _table_bytes_native(table, page)
    if data is not None:
        message.MergeFromString(data)
        return message
    message.page_size_bytes = page
    shift = page.bit_length() - 1
    starts, ends = table.start, table.end
    # Differences first: small numbers shift faster than addresses. A value ``v >> shift
    # << shift`` is at most v, so the page sums times the page equal the byte sums only
    # when every value is a multiple: one C pass for the check, not a test per value.
    # Deltas and sizes sum to the last end.
    deltas = list(map(rshift, map(sub, starts, chain((0,), ends)), repeat(shift)))
    sizes = list(map(rshift, map(sub, ends, starts), repeat(shift)))
    aligned = (sum(deltas) + sum(sizes)) << shift == (ends[-1] if ends else 0)
    if not aligned:
        raise _misaligned(table, page)
    message.start_delta_pages.extend(deltas)
    message.size_pages.extend(sizes)
    message.state.extend(table.state)  # type: ignore[arg-type]  # enum values as ints
    message.type.extend(table.type)  # type: ignore[arg-type]  # enum values as ints
    message.protection.extend(table.protection)
    if table.protection_raw != table.protection:
        message.protection_raw.extend(table.protection_raw)
    if any(table.offset):
        message.offset_bytes.extend(table.offset)
    _files_to_pb(table, message)
    if table.allocation_base:
        message.allocation_base.extend(table.allocation_base)
        message.allocation_protection.extend(table.allocation_protection)
        message.allocation_protection_raw.extend(table.allocation_protection_raw)
    if table.residency:
        for name in RESIDENCY_FIELDS:
            getattr(message.residency, name).extend(table.residency[name])
    return message


def table_to_bytes(table: RegionTable, *, page_size_bytes: int = DEFAULT_PAGE_SIZE_BYTES) -> bytes:
    """The serialized RegionTable of ``table`` as it travels: :func:`table_to_pb`'s
    bytes (written by the native encoder where it can, without building the message),
    deflated when the table is small (:func:`deflate_table`)."""
    return deflate_table(_plain_table_bytes(table, page_size_bytes))


def _plain_table_bytes(table: RegionTable, page: int) -> bytes:
    """:func:`table_to_pb`'s serialized bytes, written by the native encoder where it
    can. Raises ValueError as table_to_pb does."""
    data = _table_bytes_native(table, page)
    if data is not None:
        return data
    return table_to_pb(table, page_size_bytes=page).SerializeToString()


# Plain tables up to this size travel deflated: an ordinary process's few hundred
# regions (its distinct paths compress several times over) for a fraction of a
# millisecond. Larger tables are mostly numbers that packed columns already shrink;
# compressing them would cost more time than the capture (zlib runs at ~100 MB/s).
DEFLATE_MAX_BYTES = 64 * 1024
_DEFLATE_LEVEL = 6
# What a reader inflates at most: the plain table of the largest address space with
# residency (a million regions) is about this size.
INFLATE_MAX_BYTES = 256 * 1024 * 1024
_DEFLATED_FIELD = pb.RegionTable.DESCRIPTOR.fields_by_name["deflated"].number
_DEFLATED_TAG = bytes([_DEFLATED_FIELD << 3 | 2, 1])  # field 23 needs a two-byte tag


def deflate_table(data: bytes) -> bytes:
    """A serialized plain RegionTable as the table that carries it deflated, where it
    is at most DEFLATE_MAX_BYTES and that comes out smaller; otherwise ``data``."""
    if len(data) > DEFLATE_MAX_BYTES:
        return data
    packed = zlib.compress(data, _DEFLATE_LEVEL)
    out = b"".join((_DEFLATED_TAG, _varint(len(packed)), packed))
    return out if len(out) < len(data) else data


def _inflate(deflated: bytes | memoryview) -> bytes:
    """The serialized plain table that a deflated table's bytes hold. Raises ValueError
    when they do not inflate, inflate beyond INFLATE_MAX_BYTES, or are cut short or
    run on."""
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(deflated, INFLATE_MAX_BYTES)
    except zlib.error as exc:
        raise ValueError(f"region table's deflated bytes do not inflate: {exc}") from None
    if inflater.unconsumed_tail:
        raise ValueError(f"region table inflates beyond {INFLATE_MAX_BYTES >> 20} MiB")
    if not inflater.eof or inflater.unused_data:
        raise ValueError("region table's deflated bytes are cut short or run on")
    return data


def _deflated_only(data: bytes | memoryview) -> bytes | memoryview | None:
    """The deflated bytes of a serialized table that is that one field and nothing
    else (as :func:`deflate_table` writes it), or None for any other table."""
    if bytes(data[: len(_DEFLATED_TAG)]) != _DEFLATED_TAG:
        return None
    found = _varint_at(data, len(_DEFLATED_TAG))
    if found is None:
        return None
    length, at = found
    return data[at:] if at + length == len(data) else None


def _inflated(message: pb.RegionTable) -> pb.RegionTable:
    """The plain table a deflated one carries. Raises ValueError as :func:`_inflate`
    does, and when it is not a RegionTable, holds another deflated table, or comes
    with plain columns beside it."""
    if len(message.ListFields()) != 1:
        raise ValueError("region table has both deflated bytes and plain columns")
    data = _inflate(message.deflated)
    inner = pb.RegionTable()
    try:
        inner.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise ValueError(f"region table's inflated bytes are not a RegionTable: {exc}") from None
    if inner.deflated:
        raise ValueError("a deflated region table holds another deflated one")
    return inner


# Field numbers and the native encoder's kinds (vmatlas/_native.c); the numbers come
# from the schema, so the encoder holds none.
_TABLE = pb.RegionTable.DESCRIPTOR.fields_by_name
_FILES = pb.RegionFiles.DESCRIPTOR.fields_by_name
_RESIDENCY = pb.Residency.DESCRIPTOR.fields_by_name
_PACKED_U64, _PACKED_U32, _PACKED_BOOL, _STRINGS, _SCALAR_U64, _MESSAGE, _INDEX, _PAGES = range(8)
_RAW, _BYTES = 8, 9  # serialized fields as they are; one field of serialized bytes
_FILE_KINDS = {"device": _PACKED_U64, "inode": _PACKED_U64, "deleted": _PACKED_BOOL,
               "kind": _PACKED_U32}  # fmt: skip


def _table_bytes_native(table: RegionTable, page: int) -> bytes | None:
    """The serialized RegionTable, written by the native encoder in the order the
    protobuf runtime writes it (by field number), or None where the pure encoder must
    run (no extension, or a value it leaves to the pure path's checks and errors)."""
    fields = _table_fields(table, page)
    return None if fields is None else native.accel.encode(fields)  # type: ignore[union-attr]


def _table_fields(table: RegionTable, page: int) -> list[tuple[int, int, Any]] | None:
    """The native encoder's spec of the serialized RegionTable (its fields by number),
    or None where the pure encoder must run: no extension, no regions, a page size that
    is not a power of two or columns of differing lengths (the pure path's errors)."""
    accel = native.accel
    n = len(table.start)
    if accel is None or not n or page <= 0 or page & (page - 1):
        return None
    if any(len(getattr(table, name)) != n for name in ROW_COLUMNS):
        return None
    names = [name for name in _FILE_COLUMNS if _any(accel, getattr(table, name))]
    found = accel.distinct(
        [table.path, *(getattr(table, name) for name in names)],
        ("", *(_FILE_ZEROS[name] for name in names)),
    )
    if found is None:
        return None
    index, files = found
    columns = list(zip(*files, strict=True))
    file_fields = [(_FILES["path"].number, _STRINGS, list(columns[0]))]
    file_fields += [
        (_FILES[name].number, _FILE_KINDS[name], list(column))
        for name, column in zip(names, columns[1:], strict=True)
    ]
    shift = page.bit_length() - 1
    fields: list[tuple[int, int, Any]] = [
        (_TABLE["state"].number, _PACKED_U32, table.state),
        (_TABLE["type"].number, _PACKED_U32, table.type),
        (_TABLE["protection"].number, _PACKED_U32, table.protection),
        (_TABLE["page_size_bytes"].number, _SCALAR_U64, page),
        (
            _TABLE["start_delta_pages"].number,
            _PAGES,
            (table.start, table.end, shift, _TABLE["size_pages"].number),
        ),
        (_TABLE["files"].number, _MESSAGE, sorted(file_fields)),
    ]
    if table.protection_raw != table.protection:
        fields.append((_TABLE["protection_raw"].number, _PACKED_U32, table.protection_raw))
    if _any(accel, table.offset):
        fields.append((_TABLE["offset_bytes"].number, _PACKED_U64, table.offset))
    if len(files) > 1:
        fields.append((_TABLE["file_index"].number, _INDEX, index))
    if table.allocation_base:
        for name, kind in zip(
            ALLOCATION_COLUMNS, (_PACKED_U64, _PACKED_U32, _PACKED_U32), strict=True
        ):
            fields.append((_TABLE[name].number, kind, getattr(table, name)))
    if table.residency:
        residency = [
            (_RESIDENCY[name].number, _PACKED_U64, table.residency[name])
            for name in RESIDENCY_FIELDS
        ]
        fields.append((_TABLE["residency"].number, _MESSAGE, sorted(residency)))
    # Sorted by field number; the page columns sort as start_delta_pages, which
    # size_pages (written with it) directly follows.
    return sorted(fields, key=lambda field: field[0])


def _any(accel: Any, column: Any) -> bool:
    """``any(column)``, natively for a typed column."""
    found = accel.nonzero(column)
    return any(column) if found is None else bool(found)


def _files_to_pb(table: RegionTable, message: pb.RegionTable) -> None:
    if not table.start:
        return
    # Columns that are all zero stay empty and out of the key (on Windows all four are).
    names = [name for name in _FILE_COLUMNS if any(getattr(table, name))]
    keys = zip(table.path, *(getattr(table, name) for name in names), strict=True)
    # One hash per region: each new file is numbered len(files) as setdefault files it
    # (map draws the default from the len() iterator just before each call).
    no_file = ("", *(_FILE_ZEROS[name] for name in names))
    files = {no_file: 0}
    index = list(map(files.setdefault, keys, iter(files.__len__, -1)))
    columns = list(zip(*files, strict=True))
    message.files.path.extend(columns[0])
    for name, column in zip(names, columns[1:], strict=True):
        getattr(message.files, name).extend(column)
    if len(files) > 1:
        message.file_index.extend(index)


def _check_length(name: str, column: Any, n: int, *, optional: bool = True) -> None:
    if len(column) != n and not (optional and not column):
        allowed = f"0 or {n}" if optional else f"{n}"
        raise ValueError(f"region table column {name} has {len(column)} entries, not {allowed}")


def table_from_pb(message: pb.RegionTable) -> RegionTable:
    """Columns in. Raises ValueError when the columns disagree in length, a file index
    is out of range, file entry 0 is not "no file" or the page size is not a power of
    two (a malformed table is never half-read). A deflated table is inflated first."""
    if message.deflated:
        message = _inflated(message)
    if native.accel is not None:
        # upb hands each column out an element at a time; the native reader makes the
        # lists from the bytes in one pass, several times faster even with the bytes
        # written again.
        columns = native.accel.decode(message.SerializeToString(), _DECODE_SPEC)
        if columns is not None:
            return _table_from_columns(columns)
    return _table_from_columns(_columns_of(message))


def table_from_bytes(data: bytes | memoryview) -> RegionTable:
    """A serialized RegionTable (as :func:`snapshot_parts` makes it). Raises
    UndecodableBytes when the bytes are not one, ValueError when the table is
    malformed."""
    if native.accel is not None:
        # A deflated table is inflated here and its plain bytes read natively: parsing
        # it with upb first would read the table twice more.
        deflated = _deflated_only(data)
        columns = native.accel.decode(
            data if deflated is None else _inflate(deflated), _DECODE_SPEC
        )
        if columns is not None:
            return _table_from_columns(columns)
    message = pb.RegionTable()
    try:
        message.ParseFromString(bytes(data))
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise UndecodableBytes(f"not a serialized RegionTable: {exc}") from None
    return table_from_pb(message)


# The native reader's field kinds (vmatlas/_native.c), and what it reads of a
# RegionTable, from the schema: fields by number, each (name, kind, spec of a message).
_D_U64, _D_U32, _D_ENUM, _D_BOOL, _D_STRING, _D_SCALAR, _D_MESSAGE, _D_UNREAD = range(8)
_D_KINDS = {
    FieldDescriptor.TYPE_UINT64: _D_U64,
    FieldDescriptor.TYPE_UINT32: _D_U32,
    FieldDescriptor.TYPE_ENUM: _D_ENUM,
    FieldDescriptor.TYPE_BOOL: _D_BOOL,
    FieldDescriptor.TYPE_STRING: _D_STRING,
}


# The typed column (array.array typecode) each repeated number is read into: a machine
# word or less a value, no Python int. By wire type, and narrower where the model's
# column is (the small enums and the protection bits, as the native capture makes them);
# a value that does not fit sends the table to upb, whose lists the checks then judge.
_D_TYPECODES = {
    FieldDescriptor.TYPE_UINT64: "Q",
    FieldDescriptor.TYPE_UINT32: "I",
    FieldDescriptor.TYPE_ENUM: "I",
}
_D_NARROW = {name: "B" for name in ("state", "type", "kind", "protection", "allocation_protection")}


def _decode_spec(descriptor: Any) -> dict[int, tuple[str, int, Any]]:
    spec: dict[int, tuple[str, int, Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None:
            spec[field.number] = (field.name, _D_MESSAGE, _decode_spec(field.message_type))
        elif field.type == FieldDescriptor.TYPE_UINT64 and not field.is_repeated:
            spec[field.number] = (field.name, _D_SCALAR, None)
        elif field.is_repeated and field.type in _D_KINDS:
            typecode = _D_NARROW.get(field.name, _D_TYPECODES.get(field.type))
            spec[field.number] = (field.name, _D_KINDS[field.type], typecode)
        else:  # deflated, and any field of a kind the reader has no loop for
            spec[field.number] = (field.name, _D_UNREAD, None)
    return spec


_DECODE_SPEC = _decode_spec(pb.RegionTable.DESCRIPTOR)


def _columns_of(message: pb.RegionTable) -> dict[str, Any]:
    """A plain table's fields as the native reader gives them: lists by name, the page
    size, and the files and (where present) the residency as dicts of their own."""
    columns: dict[str, Any] = {
        field.name: getattr(message, field.name)[:]
        for field in message.DESCRIPTOR.fields
        if field.is_repeated
    }
    columns["page_size_bytes"] = message.page_size_bytes
    columns["files"] = {
        field.name: getattr(message.files, field.name)[:]
        for field in message.files.DESCRIPTOR.fields
    }
    if message.HasField("residency"):
        columns["residency"] = {
            name: getattr(message.residency, name)[:] for name in RESIDENCY_FIELDS
        }
    return columns


def _table_from_columns(columns: dict[str, Any]) -> RegionTable:
    """:func:`table_from_pb` of a plain table's fields (:func:`_columns_of`)."""

    def column(name: str) -> list[Any]:
        return columns.get(name, [])  # type: ignore[no-any-return]

    n = len(column("size_pages"))
    for name in ("start_delta_pages", "state", "type", "protection"):
        _check_length(name, column(name), n, optional=False)
    for name in ("protection_raw", "offset_bytes", "file_index", *ALLOCATION_COLUMNS):
        _check_length(name, column(name), n)
    residency: dict[str, IntColumn] = {}
    if "residency" in columns:
        for name in RESIDENCY_FIELDS:
            values = columns["residency"].get(name, [])
            _check_length(f"residency.{name}", values, n, optional=False)
            residency[name] = values
    if not n:
        return RegionTable(residency=residency)
    page = columns.get("page_size_bytes", 0)
    if not page or page & (page - 1):
        raise ValueError(f"region table page_size_bytes {page} is not a power of two")
    starts, ends = _bounds(column("start_delta_pages"), column("size_pages"), page)
    files = _files_from_columns(columns.get("files", {}), column("file_index"), n)
    paths, devices, inodes, deleted, kinds = files
    protection = column("protection")
    return RegionTable(
        start=starts,
        end=ends,
        state=column("state"),
        type=column("type"),
        protection=protection,
        protection_raw=column("protection_raw") or protection[:],
        kind=kinds,
        path=paths,
        offset=column("offset_bytes") or _zeros(starts, n),
        device=devices,
        inode=inodes,
        deleted=deleted,
        allocation_base=column("allocation_base"),
        allocation_protection=column("allocation_protection"),
        allocation_protection_raw=column("allocation_protection_raw"),
        residency=residency,
    )


def _zeros(like: Sequence[int], n: int) -> IntColumn:
    """``n`` zeros, typed where ``like`` is a typed column."""
    return array("Q", bytes(8 * n)) if isinstance(like, array) else [0] * n


def _bounds(deltas: IntColumn, sizes: IntColumn, page: int) -> tuple[IntColumn, IntColumn]:
    """(starts, ends) in bytes of the page columns of a table with regions. Raises
    ValueError when a boundary passes the 64-bit address space. Typed page columns
    (the decoded table's own, which nothing else holds) become the starts and the ends
    themselves, with no new memory."""
    shift = page.bit_length() - 1
    accel = native.accel
    found = accel.bounds(deltas, sizes, shift, True) if accel is not None else None
    if found is not None:
        return found  # type: ignore[no-any-return]
    # Small numbers in pages become bytes before the sums grow into addresses.
    size_bytes = list(map(lshift, sizes, repeat(shift)))
    ends = list(accumulate(map(add, map(lshift, deltas, repeat(shift)), size_bytes)))
    if ends[-1] >= 1 << 64:
        raise ValueError("region table extends beyond the 64-bit address space")
    return list(map(sub, ends, size_bytes)), ends


def _take(column: list[Any], index: IntColumn, typecode: str | None = None) -> Sequence[Any]:
    """``[column[i] for i in index]``, as a ``typecode`` column where one is given and
    its values fit; IndexError past the end."""
    accel = native.accel
    if accel is None:
        return [column[i] for i in index]
    if not (isinstance(index, array) and index.itemsize == 4):
        return accel.take(column, list(index))  # type: ignore[no-any-return]
    try:
        taken = None if typecode is None else accel.spread(column, index, 4, typecode)
        return accel.gather(column, index, 4) if taken is None else taken  # type: ignore[no-any-return]
    except IndexError:
        raise IndexError("list index out of range") from None


# The typed column each file column spreads into over the regions (path, device, inode,
# deleted, kind), as the native capture makes them.
_FILE_TYPECODES = (None, "Q", "Q", None, "B")


def _files_from_columns(files: dict[str, list[Any]], index: IntColumn, n: int) -> list[Any]:
    """The path, device, inode, deleted and kind columns of ``n`` regions."""
    paths = files.get("path", [])
    file_count = len(paths)
    if not file_count:
        raise ValueError("region table has no files.path (entry 0, no file, is missing)")
    table: list[list[Any]] = [paths]
    for name, zero in _FILE_ZEROS.items():
        column = files.get(name, [])
        _check_length(f"files.{name}", column, file_count)
        table.append(list(column) or [zero] * file_count)
    entry = tuple(column[0] for column in table)
    if entry != _NO_FILE:
        raise ValueError(f"region table file entry 0 is {entry!r:.80}, not no file")
    if not index:
        return [[column[0]] * n for column in table]
    try:
        return [
            _take(column, index, typecode)
            for column, typecode in zip(table, _FILE_TYPECODES, strict=True)
        ]
    except IndexError:
        raise ValueError(
            f"region table file_index {max(index)} is out of range ({file_count} files)"
        ) from None


def table_page_size(host: Host) -> int:
    """The unit of the wire table of a snapshot from ``host``: its page size, or
    DEFAULT_PAGE_SIZE_BYTES where the host does not say."""
    return host.page_size_bytes or DEFAULT_PAGE_SIZE_BYTES


def snapshot_to_pb(snapshot: Snapshot, message: pb.Snapshot | None = None) -> pb.Snapshot:
    message = pb.Snapshot() if message is None else message
    host_to_pb(snapshot.host, message.host)
    process_to_pb(snapshot.process, message.process)
    timestamp_to_pb(snapshot.capture_time, message.capture_time)
    summary_to_pb(snapshot.summary, message.summary)
    table_to_pb(snapshot.regions, message.regions, page_size_bytes=table_page_size(snapshot.host))
    message.view = int(snapshot.view)  # type: ignore[assignment]
    message.includes_free = snapshot.includes_free
    message.includes_residency = snapshot.includes_residency
    return message


def snapshot_from_pb(message: pb.Snapshot) -> Snapshot:
    return Snapshot(
        host=host_from_pb(message.host),
        process=process_from_pb(message.process),
        capture_time=timestamp_from_pb(message.capture_time),
        summary=summary_from_pb(message.summary),
        regions=table_from_pb(message.regions),
        view=SnapshotView(message.view),
        includes_free=message.includes_free,
        includes_residency=message.includes_residency,
    )


def process_summary_to_pb(
    item: ProcessSummary, message: pb.ProcessSummary | None = None
) -> pb.ProcessSummary:
    message = pb.ProcessSummary() if message is None else message
    process_to_pb(item.process, message.process)
    summary_to_pb(item.summary, message.summary)
    timestamp_to_pb(item.capture_time, message.capture_time)
    return message


def process_summary_from_pb(message: pb.ProcessSummary) -> ProcessSummary:
    process, summary, capture_time = _process_summary_pb_parts(message)
    return ProcessSummary(
        process_from_pb(process),
        summary_from_pb(summary),
        timestamp_from_pb(capture_time),
    )


_process_summary_pb_parts = attrgetter("process", "summary", "capture_time")


# -- snapshots as bytes --------------------------------------------------------------
#
# The server forwards and stores snapshots without decoding their region tables: an
# agent sends a snapshot as a small header (a Snapshot without its regions) and the
# serialized RegionTable; the full serialized Snapshot is the header followed by the
# table framed as field 5. Protobuf parsers accept fields in any order, so the join is
# plain byte concatenation.

_REGIONS_FIELD = pb.Snapshot.DESCRIPTOR.fields_by_name["regions"].number
_REGIONS_TAG = bytes([(_REGIONS_FIELD << 3) | 2])  # length-delimited


def _varint_at(data: bytes | memoryview, at: int) -> tuple[int, int] | None:
    """The varint at ``data[at]`` and the offset after it; None where it is cut short
    or runs past 64 bits."""
    value, shift, size = 0, 0, len(data)
    while at < size and shift < 64:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    return None


def _one_field(data: bytes | memoryview, number: int) -> tuple[bytes, memoryview] | None:
    """``(rest, payload)``: the serialized message ``data`` without its length-delimited
    field ``number``, and that field's bytes (a view, not a copy). None where the field
    is missing or repeated, or the fields are not well formed: a protobuf parser then
    reads ``data`` and says what is wrong. Only the top level is walked (a few fields)."""
    found: tuple[int, int, int] | None = None
    at, size = 0, len(data)
    while at < size:
        start = at
        tag = _varint_at(data, at)
        if tag is None:
            return None
        key, at = tag
        wire_type = key & 7
        if key >> 3 == 0:
            return None
        if wire_type == 0:
            value = _varint_at(data, at)
            if value is None:
                return None
            at = value[1]
        elif wire_type in (1, 5):
            at += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            length = _varint_at(data, at)
            if length is None:
                return None
            payload, at = length[1], length[1] + length[0]
            if key >> 3 == number:
                if found is not None:
                    return None
                found = (start, payload, at)
        else:  # groups
            return None
        if key >> 3 == number and wire_type != 2:
            return None
        if at > size:
            return None
    if found is None:
        return None
    start, payload, end = found
    view = memoryview(data)
    return b"".join((view[:start], view[end:])), view[payload:end]


def _delimited(number: int, size: int) -> bytes:
    """The tag and length that open length-delimited field ``number`` of ``size`` bytes."""
    return _varint(number << 3 | 2) + _varint(size)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def snapshot_parts(snapshot: Snapshot) -> tuple[bytes, bytes]:
    """``(header, regions)``: the serialized Snapshot without its regions, and the
    serialized RegionTable."""
    regions = table_to_bytes(snapshot.regions, page_size_bytes=table_page_size(snapshot.host))
    return snapshot_header_bytes(snapshot), regions


class Serialized:
    """A response already in wire bytes, of type ``message_class``: a servicer answers
    one where writing the bytes directly costs less than building the message (a large
    region table); the method is registered with :func:`serialize_response` as its
    serializer. :meth:`parse` gives the message, for whatever must look inside."""

    __slots__ = ("data", "message_class")

    def __init__(self, message_class: type[Any], data: bytes):
        self.message_class = message_class
        self.data = data

    def parse(self) -> Any:
        return self.message_class.FromString(self.data)


def serialize_response(response: Any) -> bytes:
    """The wire bytes of a message or of a :class:`Serialized` one (a response, or a
    request on a stream whose client registered this serializer)."""
    if isinstance(response, Serialized):
        return response.data
    return response.SerializeToString()  # type: ignore[no-any-return]


_RESPONSE_SNAPSHOT_FIELD = agent_pb2.GetSnapshotResponse.DESCRIPTOR.fields_by_name[
    "snapshot"
].number


def snapshot_response(snapshot: Snapshot) -> Serialized:
    """The ``GetSnapshotResponse`` of ``snapshot``, serialized: the header by protobuf,
    the region table as :func:`table_to_pb` writes it, joined into the response's bytes
    without a message ever holding the table. Natively, the table is written straight
    into the response's bytes (sized first, written once)."""
    cls = agent_pb2.GetSnapshotResponse
    header = snapshot_header_bytes(snapshot)
    page = table_page_size(snapshot.host)
    fields = _table_fields(snapshot.regions, page)
    if fields is not None:
        spec = _response_spec(cls, header, (_REGIONS_FIELD, _MESSAGE, fields), {})
        data = native.accel.encode(spec)  # type: ignore[union-attr]
        if data is not None:
            return Serialized(cls, data)
    return snapshot_bytes_response(cls, header, _plain_table_bytes(snapshot.regions, page))


def snapshot_bytes_response(
    message_class: type[Any], header: bytes, regions: bytes, **fields: Any
) -> Serialized:
    """A response of ``message_class`` whose ``snapshot`` (a serialized Snapshot) is
    :func:`join_snapshot` of ``header`` and ``regions``, its other ``fields`` as given,
    serialized: the region table is copied once, into the response's bytes, not into
    a message and out of it again. The bytes are protobuf's, field by field in order."""
    spec = _response_spec(message_class, header, (_REGIONS_FIELD, _BYTES, regions), fields)
    return Serialized(message_class, _spec_bytes(spec))


def _response_spec(
    message_class: type[Any], header: bytes, regions: tuple[int, int, Any], fields: dict[str, Any]
) -> list[tuple[int, int, Any]]:
    """The encoder's spec of a response of ``message_class`` whose ``snapshot`` holds
    ``header`` and then the ``regions`` field (a table's spec as a _MESSAGE, or its
    serialized bytes as _BYTES), the other ``fields`` after it."""
    number = message_class.DESCRIPTOR.fields_by_name["snapshot"].number
    rest = message_class(**fields).SerializeToString()
    return [(number, _MESSAGE, [(0, _RAW, header), regions]), (0, _RAW, rest)]


def _spec_bytes(spec: list[tuple[int, int, Any]]) -> bytes:
    """The wire bytes of a spec of messages and serialized bytes: written by the native
    encoder in one go where it can, joined from :func:`_spec_parts` otherwise."""
    accel = native.accel
    data = None if accel is None else accel.encode(spec)
    return b"".join(_spec_parts(spec)) if data is None else data


def _spec_parts(spec: list[tuple[int, int, Any]]) -> list[bytes]:
    """The wire bytes of a spec of messages and serialized bytes (as the native encoder
    writes them), as parts to join: a _MESSAGE or _BYTES field as its tag, length and
    payload; _RAW bytes as they are."""
    parts: list[bytes] = []
    for number, kind, value in spec:
        if kind == _RAW:
            parts.append(value)
            continue
        if kind == _MESSAGE:
            value = b"".join(_spec_parts(value))
        elif kind != _BYTES:
            raise ValueError(f"field kind {kind} has no joined form")
        parts += (_delimited(number, len(value)), value)
    return parts


_CONNECT_RESULT_FIELD = hub_pb2.ConnectRequest.DESCRIPTOR.fields_by_name["snapshot_result"].number
_RESULT_FIELDS = hub_pb2.SnapshotResult.DESCRIPTOR.fields_by_name
_RESULT_HEADER_FIELD = _RESULT_FIELDS["snapshot_header"].number
_RESULT_REGIONS_FIELD = _RESULT_FIELDS["regions"].number


def snapshot_result_request(request_id: int, header: bytes, regions: bytes) -> Serialized:
    """The agent's ``ConnectRequest`` answering snapshot command ``request_id`` with a
    snapshot's two halves (:func:`snapshot_parts`), serialized: each copied once, into
    the message's bytes (protobuf's serializer of a message holding a 450 KB table
    takes some 0.6 ms here, a copy of it 0.02 ms). The bytes are protobuf's, field by
    field in order."""
    result = [(0, _RAW, hub_pb2.SnapshotResult(request_id=request_id).SerializeToString())]
    result += [
        (number, _BYTES, value)
        for number, value in ((_RESULT_HEADER_FIELD, header), (_RESULT_REGIONS_FIELD, regions))
        if value  # an empty bytes field is left out, as protobuf leaves it
    ]
    return Serialized(
        hub_pb2.ConnectRequest, _spec_bytes([(_CONNECT_RESULT_FIELD, _MESSAGE, result)])
    )


def snapshot_from_message_bytes(data: bytes, message_class: type[Any]) -> tuple[Snapshot, Any]:
    """``(snapshot, message)`` of a serialized response of ``message_class`` whose
    ``snapshot`` field holds a serialized Snapshot (as :func:`snapshot_bytes_response`
    writes one): the snapshot read as :func:`snapshot_from_bytes` reads one, from a view
    of ``data`` (not copied out of a parsed message first), and the message of the
    other fields. Raises ValueError when malformed."""
    number = message_class.DESCRIPTOR.fields_by_name["snapshot"].number
    split = _one_field(data, number)
    message = message_class()
    try:
        message.ParseFromString(bytes(data) if split is None else split[0])
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise ValueError(f"not a serialized {message_class.__name__}: {exc}") from None
    return snapshot_from_bytes(message.snapshot if split is None else split[1]), message


def snapshot_header_bytes(snapshot: Snapshot) -> bytes:
    """The serialized Snapshot without its regions (``snapshot.regions`` is ignored)."""
    header = pb.Snapshot()
    host_to_pb(snapshot.host, header.host)
    process_to_pb(snapshot.process, header.process)
    timestamp_to_pb(snapshot.capture_time, header.capture_time)
    summary_to_pb(snapshot.summary, header.summary)
    header.view = int(snapshot.view)  # type: ignore[assignment]
    header.includes_free = snapshot.includes_free
    header.includes_residency = snapshot.includes_residency
    return header.SerializeToString()


def join_snapshot(header: bytes, regions: bytes) -> bytes:
    """The serialized Snapshot made of :func:`snapshot_parts`' two halves."""
    return b"".join((header, _REGIONS_TAG, _varint(len(regions)), regions))


def snapshot_header_from_bytes(header: bytes) -> Snapshot:
    """A snapshot header (no regions) as a Snapshot with an empty region table.
    Raises ValueError when the bytes are not a Snapshot."""
    message = pb.Snapshot()
    try:
        message.ParseFromString(header)
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise ValueError(f"not a serialized Snapshot: {exc}") from None
    message.ClearField("regions")
    return snapshot_from_pb(message)


def snapshot_from_bytes(data: bytes | memoryview) -> Snapshot:
    """A full serialized Snapshot. Raises ValueError when malformed.

    The region table is read from its own bytes (natively where the extension is
    built), never parsed into a message and written out again first; the small rest is
    parsed by protobuf."""
    split = _one_field(data, _REGIONS_FIELD)
    if split is not None:
        header, regions = split
        return replace(snapshot_header_from_bytes(header), regions=table_from_bytes(regions))
    message = pb.Snapshot()
    try:
        message.ParseFromString(bytes(data))
    except Exception as exc:
        raise ValueError(f"not a serialized Snapshot: {exc}") from None
    return snapshot_from_pb(message)


def snapshot_from_response_bytes(data: bytes) -> Snapshot:
    """The snapshot of a serialized ``GetSnapshotResponse``, read as
    :func:`snapshot_from_bytes` reads one. Raises ValueError when malformed."""
    split = _one_field(data, _RESPONSE_SNAPSHOT_FIELD)
    if split is not None and not split[0]:
        return snapshot_from_bytes(split[1])
    response = agent_pb2.GetSnapshotResponse()
    try:
        response.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise ValueError(f"not a serialized GetSnapshotResponse: {exc}") from None
    return snapshot_from_pb(response.snapshot)


# -- fleet -----------------------------------------------------------------------------


def process_order_to_pb(order: ProcessOrder) -> agent_pb2.ProcessOrder.ValueType:
    return agent_pb2.ProcessOrder.ValueType(int(order))


def process_order_from_pb(value: int) -> ProcessOrder:
    """The order a request asks for (unspecified: by region count). InvalidArgument
    for a value this version does not know."""
    if value == agent_pb2.PROCESS_ORDER_UNSPECIFIED:
        return ProcessOrder.REGIONS
    try:
        return ProcessOrder(value)
    except ValueError:
        raise errors.InvalidArgument(f"unknown process order {value}") from None


def error_to_pb(exc: errors.Error, message: hub_pb2.AgentError | None = None) -> hub_pb2.AgentError:
    message = hub_pb2.AgentError() if message is None else message
    message.kind = type(exc).__name__
    message.message = str(exc)
    message.pid = exc.pid or 0
    return message


def error_from_pb(message: hub_pb2.AgentError) -> errors.Error:
    """The vmatlas error an AgentError stands for (plain Error for unknown kinds)."""
    cls = getattr(errors, message.kind, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.Error)):
        cls = errors.Error
    return cls(message.message, pid=message.pid or None)


def host_status_to_pb(
    status: HostStatus, message: fleet_pb2.HostStatus | None = None
) -> fleet_pb2.HostStatus:
    message = fleet_pb2.HostStatus() if message is None else message
    host_to_pb(status.host, message.host)
    message.online = status.online
    timestamp_to_pb(status.first_seen_time, message.first_seen_time)
    timestamp_to_pb(status.last_seen_time, message.last_seen_time)
    message.process_count = status.process_count
    message.dropped_push_count = status.dropped_push_count
    message.access_denied_count = status.access_denied_count
    message.replica_id = status.replica_id
    return message


def host_status_from_pb(message: fleet_pb2.HostStatus) -> HostStatus:
    return HostStatus(
        host=host_from_pb(message.host),
        online=message.online,
        first_seen_time=timestamp_from_pb(message.first_seen_time),
        last_seen_time=timestamp_from_pb(message.last_seen_time),
        process_count=message.process_count,
        dropped_push_count=message.dropped_push_count,
        access_denied_count=message.access_denied_count,
        replica_id=message.replica_id,
    )


def fleet_process_to_pb(
    item: FleetProcess, message: fleet_pb2.FleetProcess | None = None
) -> fleet_pb2.FleetProcess:
    message = fleet_pb2.FleetProcess() if message is None else message
    message.host_id = item.host_id
    process_summary_to_pb(item.item, message.summary)
    return message


def fleet_process_from_pb(message: fleet_pb2.FleetProcess) -> FleetProcess:
    return FleetProcess(message.host_id, process_summary_from_pb(message.summary))


def stored_info_to_pb(
    info: StoredSnapshotInfo, message: fleet_pb2.StoredSnapshotInfo | None = None
) -> fleet_pb2.StoredSnapshotInfo:
    message = fleet_pb2.StoredSnapshotInfo() if message is None else message
    message.snapshot_id = info.snapshot_id
    process_to_pb(info.process, message.process)
    timestamp_to_pb(info.capture_time, message.capture_time)
    summary_to_pb(info.summary, message.summary)
    return message


def stored_info_from_pb(message: fleet_pb2.StoredSnapshotInfo, host_id: str) -> StoredSnapshotInfo:
    return StoredSnapshotInfo(
        snapshot_id=message.snapshot_id,
        host_id=host_id,
        process=process_from_pb(message.process),
        capture_time=timestamp_from_pb(message.capture_time),
        summary=summary_from_pb(message.summary),
    )
