"""The protobuf boundary: the only module that converts between :mod:`vmatlas.model`
and the ``vmatlas.v1`` wire schema. Everything else works on the plain model."""

from __future__ import annotations

from itertools import accumulate
from operator import sub
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from vmatlas import errors
from vmatlas.fleet import FleetProcess, HostStatus, StoredSnapshotInfo
from vmatlas.model import (
    RESIDENCY_FIELDS,
    Host,
    OperatingSystem,
    Process,
    ProcessSummary,
    RegionTable,
    Snapshot,
    SnapshotView,
    Summary,
)
from vmatlas.v1 import fleet_pb2, hub_pb2
from vmatlas.v1 import snapshot_pb2 as pb

_SUMMARY_FIELDS = tuple(Summary.__dataclass_fields__)
_HOST_FIELDS = tuple(name for name in Host.__dataclass_fields__ if name != "os")


def timestamp_to_pb(seconds: float, message: Timestamp) -> None:
    whole = int(seconds)
    message.seconds = whole
    message.nanos = round((seconds - whole) * 1e9) % 1_000_000_000


def timestamp_from_pb(message: Timestamp) -> float:
    return message.seconds + message.nanos / 1e9


def host_to_pb(host: Host, message: pb.Host | None = None) -> pb.Host:
    message = pb.Host() if message is None else message
    for name in _HOST_FIELDS:
        setattr(message, name, getattr(host, name))
    message.os = int(host.os)  # type: ignore[assignment]
    return message


def host_from_pb(message: pb.Host) -> Host:
    values: dict[str, Any] = {name: getattr(message, name) for name in _HOST_FIELDS}
    return Host(os=OperatingSystem(message.os), **values)


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
    return message


def process_from_pb(message: pb.Process) -> Process:
    return Process(
        pid=message.pid,
        parent_pid=message.parent_pid,
        name=message.name,
        executable=message.executable,
        command_line=tuple(message.command_line),
        user=message.user,
        start_time=timestamp_from_pb(message.start_time),
        pointer_bits=message.pointer_bits,
        user_address_min=message.user_address_min,
        user_address_max=message.user_address_max,
        address_space_empty=message.address_space_empty,
    )


def summary_to_pb(summary: Summary, message: pb.Summary | None = None) -> pb.Summary:
    message = pb.Summary() if message is None else message
    for name in _SUMMARY_FIELDS:
        setattr(message, name, getattr(summary, name))
    return message


def summary_from_pb(message: pb.Summary) -> Summary:
    return Summary(**{name: getattr(message, name) for name in _SUMMARY_FIELDS})


def table_to_pb(table: RegionTable, message: pb.RegionTable | None = None) -> pb.RegionTable:
    """Columns out: starts become deltas from the previous end, paths an index into a
    de-duplicated string table, so a large address space packs into a few bytes a row."""
    message = pb.RegionTable() if message is None else message
    starts, ends = table.start, table.end
    message.start_delta_bytes.extend(list(map(sub, starts, [0, *ends[:-1]])))
    message.size_bytes.extend(list(map(sub, ends, starts)))
    message.state.extend(table.state)  # type: ignore[arg-type]  # enum values as ints
    message.type.extend(table.type)  # type: ignore[arg-type]  # enum values as ints
    message.protection.extend(table.protection)
    message.protection_raw.extend(table.protection_raw)
    message.kind.extend(table.kind)  # type: ignore[arg-type]  # enum values as ints
    # Indices in order of first appearance; dict.fromkeys finds the distinct paths in
    # one C pass, so only they are numbered in Python.
    index: dict[str, int] = {"": 0}
    for path in dict.fromkeys(table.path):
        index.setdefault(path, len(index))
    message.path_index.extend(list(map(index.__getitem__, table.path)))
    message.strings.extend(index)
    message.offset_bytes.extend(table.offset)
    message.device.extend(table.device)
    message.inode.extend(table.inode)
    message.deleted.extend(table.deleted)
    if table.allocation_base:
        message.allocation_base.extend(table.allocation_base)
        message.allocation_protection.extend(table.allocation_protection)
        message.allocation_protection_raw.extend(table.allocation_protection_raw)
    if table.residency:
        for name in RESIDENCY_FIELDS:
            getattr(message.residency, name).extend(table.residency[name])
    return message


def table_from_pb(message: pb.RegionTable) -> RegionTable:
    """Columns in. Raises ValueError when the columns disagree in length or an index is
    out of range (a malformed table is never half-read)."""
    n = len(message.size_bytes)
    full = (
        message.start_delta_bytes,
        message.state,
        message.type,
        message.protection,
        message.protection_raw,
        message.kind,
        message.path_index,
        message.offset_bytes,
        message.device,
        message.inode,
        message.deleted,
    )
    if any(len(column) != n for column in full):
        raise ValueError("region table columns differ in length")
    optional = (
        message.allocation_base,
        message.allocation_protection,
        message.allocation_protection_raw,
    )
    if any(len(column) not in (0, n) for column in optional):
        raise ValueError("region table allocation columns differ in length")
    sizes = list(message.size_bytes)
    ends = list(accumulate(d + s for d, s in zip(message.start_delta_bytes, sizes, strict=True)))
    starts = [e - s for e, s in zip(ends, sizes, strict=True)]
    strings = list(message.strings)
    if strings and strings[0] != "":
        raise ValueError("region table strings[0] must be empty")
    try:
        paths = [strings[i] for i in message.path_index] if n else []
    except IndexError:
        raise ValueError("region table path index out of range") from None
    residency: dict[str, list[int]] = {}
    if message.HasField("residency"):
        for name in RESIDENCY_FIELDS:
            column = list(getattr(message.residency, name))
            if len(column) != n:
                raise ValueError(f"residency column {name} differs in length")
            residency[name] = column
    return RegionTable(
        start=starts,
        end=ends,
        state=list(message.state),
        type=list(message.type),
        protection=list(message.protection),
        protection_raw=list(message.protection_raw),
        kind=list(message.kind),
        path=paths,
        offset=list(message.offset_bytes),
        device=list(message.device),
        inode=list(message.inode),
        deleted=list(message.deleted),
        allocation_base=list(message.allocation_base),
        allocation_protection=list(message.allocation_protection),
        allocation_protection_raw=list(message.allocation_protection_raw),
        residency=residency,
    )


def snapshot_to_pb(snapshot: Snapshot, message: pb.Snapshot | None = None) -> pb.Snapshot:
    message = pb.Snapshot() if message is None else message
    host_to_pb(snapshot.host, message.host)
    process_to_pb(snapshot.process, message.process)
    timestamp_to_pb(snapshot.capture_time, message.capture_time)
    summary_to_pb(snapshot.summary, message.summary)
    table_to_pb(snapshot.regions, message.regions)
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
    return ProcessSummary(
        process=process_from_pb(message.process),
        summary=summary_from_pb(message.summary),
        capture_time=timestamp_from_pb(message.capture_time),
    )


# -- snapshots as bytes --------------------------------------------------------------
#
# The server forwards and stores snapshots without decoding their region tables: an
# agent sends a snapshot as a small header (a Snapshot without its regions) and the
# serialized RegionTable; the full serialized Snapshot is the header followed by the
# table framed as field 5. Protobuf parsers accept fields in any order, so the join is
# plain byte concatenation.

_REGIONS_FIELD = pb.Snapshot.DESCRIPTOR.fields_by_name["regions"].number
_REGIONS_TAG = bytes([(_REGIONS_FIELD << 3) | 2])  # length-delimited


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
    return snapshot_header_bytes(snapshot), table_to_pb(snapshot.regions).SerializeToString()


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


def snapshot_from_bytes(data: bytes) -> Snapshot:
    """A full serialized Snapshot. Raises ValueError when malformed."""
    message = pb.Snapshot()
    try:
        message.ParseFromString(data)
    except Exception as exc:
        raise ValueError(f"not a serialized Snapshot: {exc}") from None
    return snapshot_from_pb(message)


# -- fleet -----------------------------------------------------------------------------


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
    return message


def host_status_from_pb(message: fleet_pb2.HostStatus) -> HostStatus:
    return HostStatus(
        host=host_from_pb(message.host),
        online=message.online,
        first_seen_time=timestamp_from_pb(message.first_seen_time),
        last_seen_time=timestamp_from_pb(message.last_seen_time),
        process_count=message.process_count,
        dropped_push_count=message.dropped_push_count,
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
