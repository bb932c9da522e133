"""Bounds and sanity checks for what agents push and answer, before anything stores it.

:func:`validate_snapshot` and :func:`validate_summaries` accept the plain model or the
wire messages and raise :class:`vmatlas.errors.InvalidArgument` with a precise message
on the first problem: regions unsorted, overlapping, empty or outside the host's user
address range (the Linux ``[vsyscall]`` gate page above it excepted) or off the host's
page boundaries, columns of different lengths, unknown enum values, counts and strings
beyond sane bounds. Nothing else escapes them, whatever the input.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import replace
from operator import attrgetter, ge, lt
from types import ModuleType
from typing import Any

from google.protobuf.message import DecodeError

from vmatlas import errors, native, wire
from vmatlas.model import (
    ALLOCATION_COLUMNS,
    PROCESS_FIELD_TYPES,
    RESIDENCY_FIELDS,
    Host,
    OperatingSystem,
    Process,
    ProcessSummary,
    RegionKind,
    RegionState,
    RegionTable,
    RegionType,
    Snapshot,
    Summary,
)
from vmatlas.v1 import snapshot_pb2 as pb

U64 = 1 << 64
# Figures a store keeps as integers (summaries, host limits) must fit a signed 64-bit
# column; nothing real comes near (a 57-bit address space is 2**57 bytes).
STORED_INT = 1 << 63
# More than any kernel allows (max_map_count tops out near 2**31, but a message this
# size would exceed the gRPC limit long before).
MAX_REGIONS = 1 << 23
MAX_PROCESSES = 1 << 22  # PID_MAX_LIMIT on 64-bit Linux
MAX_PATH_CHARS = 8192  # PATH_MAX is 4096 bytes; escaped bytes may widen
MAX_STRINGS_TOTAL_CHARS = 64 << 20
MAX_NAME_CHARS = 1024
MAX_HOST_ID_CHARS = 253
MAX_COMMAND_LINE_ARGS = 1 << 17
MAX_COMMAND_LINE_CHARS = 8 << 20
PROTECTION_BITS = 0xFF
VSYSCALL_MAX_BYTES = 1 << 20

_STATES = frozenset(int(v) for v in RegionState)
_TYPES = frozenset(int(v) for v in RegionType)
_KINDS = frozenset(int(v) for v in RegionKind)
_FREE = int(RegionState.FREE)
_VSYSCALL = int(RegionKind.VSYSCALL)

_FULL_INT_COLUMNS = ("offset", "device", "inode")
# The region table's rules as data, read by the Python checks and handed to the C
# extension's loops alike: each integer column and the bound its values stay under,
# in the order they are checked; each column of small values and the values allowed.
_UINT_COLUMNS: tuple[tuple[str, int], ...] = (
    *((name, U64) for name in ("start", "end", *_FULL_INT_COLUMNS, "allocation_base")),
    ("protection", PROTECTION_BITS + 1),
    ("allocation_protection", PROTECTION_BITS + 1),
    ("protection_raw", 1 << 32),
    ("allocation_protection_raw", 1 << 32),
)
_ENUM_COLUMNS = (("state", _STATES), ("type", _TYPES), ("kind", _KINDS))
_BOOLS = frozenset((0, 1))


def _bits(values: frozenset[int]) -> int:
    """A set of small non-negative ints as a 64-bit mask, for the C loops."""
    assert all(0 <= v < 64 for v in values)
    return sum(1 << v for v in values)


_SMALL_COLUMN_MASKS = (
    *((name, _bits(allowed)) for name, allowed in _ENUM_COLUMNS),
    ("deleted", _bits(_BOOLS)),
)


def _bad(message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(message)


# -- scalars ------------------------------------------------------------------------------


def _uint(value: Any, what: str, limit: int = U64) -> int:
    if type(value) is not int or not 0 <= value < limit:
        raise _bad(f"{what} must be an integer in [0, {limit:#x}), not {value!r:.40}")
    return value


def _text(value: Any, what: str, limit: int = MAX_NAME_CHARS, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise _bad(f"{what} must be text")
    if len(value) > limit:
        raise _bad(f"{what} is {len(value)} characters long (at most {limit})")
    if required and not value:
        raise _bad(f"{what} is empty")
    if "\0" in value:
        raise _bad(f"{what} contains a NUL character")
    return value


def _seconds(value: Any, what: str) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _bad(f"{what} must be a number of seconds")
    if not math.isfinite(value) or not 0 <= value < 1 << 40:
        raise _bad(f"{what} is out of range ({value!r})")


# -- host, process, summary ------------------------------------------------------------------


def validate_host(host: Host) -> None:
    if not isinstance(host, Host):
        raise _bad("host is missing")
    _text(host.host_id, "host.host_id", MAX_HOST_ID_CHARS, required=True)
    if any(c.isspace() or not c.isprintable() for c in host.host_id):
        raise _bad("host.host_id contains whitespace or unprintable characters")
    for name in ("hostname", "os_version", "kernel_version"):
        _text(getattr(host, name), f"host.{name}")
    if not isinstance(host.os, OperatingSystem):
        raise _bad("host.os is not a known operating system")
    for name in ("page_size_bytes", "allocation_granularity_bytes"):
        value = _uint(getattr(host, name), f"host.{name}", 1 << 40)
        if value & (value - 1):
            raise _bad(f"host.{name} ({value}) is not a power of two")
    low = _uint(host.user_address_min, "host.user_address_min")
    high = _uint(host.user_address_max, "host.user_address_max")
    if high and low >= high:
        raise _bad(f"host user address range is empty ({low:#x} >= {high:#x})")
    for name in ("max_map_count", "memory_total_bytes"):
        _uint(getattr(host, name), f"host.{name}", STORED_INT)
    _uint(host.cpu_count, "host.cpu_count", 1 << 32)
    if type(host.overcommit_mode) is not int or not -1 <= host.overcommit_mode <= 2:
        raise _bad("host.overcommit_mode must be -1, 0, 1 or 2")


# What a summary push repeats per process, checked in a few C-level passes; anything
# these fast checks do not pass goes through the field-by-field checks below, which
# decide it and name the first problem. Each fast check accepts only what its slow
# path accepts.
_SECONDS_LIMIT = float(1 << 40)
_ONLY_INT = frozenset((int,))
_ONLY_STR = frozenset((str,))
# Process's fields in order, and the exact types the fast check takes them in (the
# wire decoder's); address_space_empty is any value to the slow path, a bool here.
_process_fields = attrgetter(*Process.__dataclass_fields__)
_SUMMARY_UINT_FIELDS = tuple(
    name for name in Summary.__dataclass_fields__ if name != "headroom_fraction"
)
_summary_uints = attrgetter(*_SUMMARY_UINT_FIELDS)


def _process_fast(process: Process, host: Host) -> bool:
    if type(process) is not Process:
        return False
    values = _process_fields(process)
    if tuple(map(type, values)) != PROCESS_FIELD_TYPES:
        return False
    pid, parent_pid, name, executable, args, user, start, bits, low, high, _, cid, pod = values
    if not (
        0 < pid < 1 << 32
        and 0 <= parent_pid < 1 << 32
        and 0 <= low < U64
        and 0 <= high < U64
        and 0.0 <= start < _SECONDS_LIMIT
        and (bits == 64 or bits == 32)
    ):
        return False
    if (high and low >= high) or (host.user_address_max and high > host.user_address_max):
        return False
    if max(len(name), len(executable), len(user), len(cid), len(pod)) > MAX_PATH_CHARS:
        return False
    if len(args) > MAX_COMMAND_LINE_ARGS or not _ONLY_STR.issuperset(map(type, args)):
        return False
    joined = "".join(args)
    return (
        len(joined) <= MAX_COMMAND_LINE_CHARS
        and "\0" not in joined
        and "\0" not in "".join((name, executable, user, cid, pod))
    )


def _summary_fast(summary: Summary) -> bool:
    if type(summary) is not Summary:
        return False
    values = _summary_uints(summary)
    if not _ONLY_INT.issuperset(map(type, values)) or min(values) < 0:
        return False
    if max(values) >= STORED_INT:
        return False
    headroom = summary.headroom_fraction
    return (
        summary.region_count <= MAX_REGIONS
        and summary.map_count <= summary.region_count
        and summary.largest_free_bytes <= summary.free_bytes
        and type(headroom) is float
        and 0.0 <= headroom <= 1.0
    )


def validate_process(process: Process, host: Host, what: str = "process") -> None:
    if _process_fast(process, host):
        return
    if not isinstance(process, Process):
        raise _bad(f"{what} is missing")
    pid = _uint(process.pid, f"{what}.pid", 1 << 32)
    if pid == 0:
        raise _bad(f"{what}.pid is 0")
    _uint(process.parent_pid, f"{what}.parent_pid", 1 << 32)
    for name in ("name", "executable", "user", "container_id", "pod_uid"):
        _text(getattr(process, name), f"{what}.{name}", MAX_PATH_CHARS)
    args = process.command_line
    if not isinstance(args, tuple | list) or len(args) > MAX_COMMAND_LINE_ARGS:
        raise _bad(f"{what}.command_line must hold at most {MAX_COMMAND_LINE_ARGS} arguments")
    total = 0
    for arg in args:
        total += len(_text(arg, f"{what}.command_line argument", MAX_COMMAND_LINE_CHARS))
    if total > MAX_COMMAND_LINE_CHARS:
        raise _bad(f"{what}.command_line is {total} characters (at most {MAX_COMMAND_LINE_CHARS})")
    _seconds(process.start_time, f"{what}.start_time")
    if process.pointer_bits not in (32, 64):
        raise _bad(f"{what}.pointer_bits must be 32 or 64")
    low = _uint(process.user_address_min, f"{what}.user_address_min")
    high = _uint(process.user_address_max, f"{what}.user_address_max")
    if high and low >= high:
        raise _bad(f"{what} user address range is empty")
    if host.user_address_max and high > host.user_address_max:
        raise _bad(
            f"{what} user address range ends at {high:#x}, beyond the host's "
            f"{host.user_address_max:#x}"
        )


def validate_summary(summary: Summary, what: str = "summary") -> None:
    if _summary_fast(summary):
        return
    if not isinstance(summary, Summary):
        raise _bad(f"{what} is missing")
    for name in Summary.__dataclass_fields__:
        if name != "headroom_fraction":
            _uint(getattr(summary, name), f"{what}.{name}", STORED_INT)
    if summary.region_count > MAX_REGIONS:
        raise _bad(f"{what}.region_count {summary.region_count} exceeds {MAX_REGIONS}")
    if summary.map_count > summary.region_count:
        raise _bad(f"{what}.map_count exceeds its region_count")
    if summary.largest_free_bytes > summary.free_bytes:
        raise _bad(f"{what}.largest_free_bytes exceeds its free_bytes")
    headroom = summary.headroom_fraction
    if (
        isinstance(headroom, bool)
        or not isinstance(headroom, float | int)
        or not 0.0 <= headroom <= 1.0
    ):
        raise _bad(f"{what}.headroom_fraction must be between 0 and 1")


# -- the region table ------------------------------------------------------------------------


# Typed columns (array.array) a table may hold besides lists: unsigned integers only.
_TYPECODES = frozenset("BHILQ")


def _is_column(column: Any) -> bool:
    """A list, or a typed column of unsigned integers."""
    return type(column) is list or (type(column) is array and column.typecode in _TYPECODES)


def _column(table: RegionTable, name: str) -> Any:
    """The column ``name`` of ``table``: a list, or a typed column of unsigned ints."""
    column = getattr(table, name, None)
    if not _is_column(column):
        raise _bad(f"region column {name} is not a list")
    return column


def _all_int(column: Sequence[Any]) -> bool:
    # Checked over the distinct types in one C-level pass (a 65K-region table is
    # checked on every fresh snapshot); int subclasses take the slow path.
    types = set(map(type, column))
    return types <= _ONLY_INT or all(issubclass(t, int) for t in types)


def _uint_column(column: Sequence[Any], name: str, limit: int = U64) -> None:
    if not column:
        return
    if not _all_int(column):
        raise _bad(f"region column {name} holds a value that is not an integer")
    low, high = min(column), max(column)
    if low < 0 or high >= limit:
        bad = low if low < 0 else high
        raise _bad(f"region column {name} holds {bad}, outside [0, {limit:#x})")


def validate_table(table: RegionTable, host: Host, *, includes_free: bool = True) -> None:
    """Check a region table against ``host``'s user address range."""
    _check_table(table, host, includes_free, page=1)


def _check_table(table: RegionTable, host: Host, includes_free: bool, page: int) -> int:
    """:func:`validate_table`, and every boundary on a ``page``-byte page boundary;
    returns the number of regions that are not FREE."""
    if not isinstance(table, RegionTable):
        raise _bad("region table is missing")
    n = len(_column(table, "start"))
    if n > MAX_REGIONS:
        raise _bad(f"{n} regions exceed the limit of {MAX_REGIONS}")
    full = ("end", "state", "type", "protection", "protection_raw", "kind", "path")
    for name in (*full, *_FULL_INT_COLUMNS, "deleted"):
        if len(_column(table, name)) != n:
            raise _bad(f"region column {name} has {len(_column(table, name))} rows, not {n}")
    for name in ALLOCATION_COLUMNS:
        if len(_column(table, name)) not in (0, n):
            raise _bad(f"region column {name} has {len(_column(table, name))} rows, not 0 or {n}")
    accel = native.accel
    if accel is not None:
        mapped = _checked_natively(accel, table, host, includes_free, page)
        if mapped is not None:
            return mapped
    for name, bound in _UINT_COLUMNS:
        _uint_column(_column(table, name), name, bound)
    for name, allowed in _ENUM_COLUMNS:
        column = _column(table, name)
        if not _all_int(column):
            raise _bad(f"region column {name} holds a value that is not an integer")
        unknown = set(column) - allowed
        if unknown:
            raise _bad(f"region column {name} holds unknown value {min(unknown)}")
    deleted = set(_column(table, "deleted"))
    if not deleted <= _BOOLS or not _all_int(list(deleted)):
        raise _bad("region column deleted holds a value that is not a bool")
    _validate_paths(_column(table, "path"))
    _validate_residency(table.residency, n)
    _validate_layout(table, host, includes_free)
    _validate_pages(table, page)
    return len(table.state) - table.state.count(_FREE)


def _checked_natively(
    accel: ModuleType, table: RegionTable, host: Host, includes_free: bool, page: int
) -> int | None:
    """The checks of :func:`_check_table` that walk every region, in the C extension's
    loops: the number of regions that are not FREE where the table plainly passes
    them, None where anything is off or unusual (the Python checks then decide, and
    name the fault). Its columns are lists of the table's length already."""
    if not all(accel.within(getattr(table, name), bound) for name, bound in _UINT_COLUMNS):
        return None
    if not all(accel.members_of(getattr(table, name), bits) for name, bits in _SMALL_COLUMN_MASKS):
        return None
    if not accel.texts_within(table.path, MAX_PATH_CHARS, MAX_STRINGS_TOTAL_CHARS):
        return None
    residency = table.residency
    if type(residency) is not dict:
        return None
    if residency and (
        residency.keys() != set(RESIDENCY_FIELDS)
        or not all(
            _is_column(column) and len(column) == len(table.start) and accel.within(column, U64)
            for column in residency.values()
        )
    ):
        return None
    gate_ok = host.os == OperatingSystem.LINUX
    return accel.layout(  # type: ignore[no-any-return]
        table.start,
        table.end,
        table.state,
        table.kind,
        host.user_address_min,
        host.user_address_max or U64,
        page - 1,
        _FREE,
        includes_free,
        _VSYSCALL if gate_ok else -1,
        VSYSCALL_MAX_BYTES,
    )


def _validate_paths(paths: list[Any]) -> None:
    if not set(map(type, paths)) <= _ONLY_STR:
        raise _bad("region column path holds a value that is not text")
    distinct = set(paths)
    total = 0
    for path in distinct:
        _text(path, "a region path", MAX_PATH_CHARS)
        total += len(path)
    if total > MAX_STRINGS_TOTAL_CHARS:
        raise _bad(f"region paths total {total} characters (at most {MAX_STRINGS_TOTAL_CHARS})")


def _validate_residency(residency: Any, n: int) -> None:
    if not isinstance(residency, dict):
        raise _bad("residency is not a table of columns")
    if not residency:
        return
    if set(residency) != set(RESIDENCY_FIELDS):
        raise _bad("residency must have exactly the columns " + ", ".join(RESIDENCY_FIELDS))
    for name in RESIDENCY_FIELDS:
        column = residency[name]
        if not _is_column(column) or len(column) != n:
            raise _bad(f"residency column {name} does not have {n} rows")
        _uint_column(column, f"residency {name}")


def _validate_layout(table: RegionTable, host: Host, includes_free: bool) -> None:
    low = host.user_address_min
    high = host.user_address_max or U64
    starts, ends = table.start, table.end
    # The common case in a few C-level passes; anything else is walked region by
    # region below, which decides it and names the first region at fault.
    if not starts:
        return
    gate_ok = host.os == OperatingSystem.LINUX
    # Regions the user range must hold: all but a Linux [vsyscall] gate page above it.
    inside = len(starts)
    if (
        gate_ok
        and table.kind[-1] == _VSYSCALL
        and starts[-1] >= high
        and ends[-1] - starts[-1] <= VSYSCALL_MAX_BYTES
    ):
        inside -= 1
    if (
        not any(map(ge, starts, ends))
        and not any(map(lt, starts[1:], ends[:-1]))
        and (includes_free or _FREE not in table.state)
        and (not inside or (min(starts[:inside]) >= low and max(ends[:inside]) <= high))
    ):
        return
    previous_end = 0
    for i, (start, end, state, kind) in enumerate(
        zip(table.start, table.end, table.state, table.kind, strict=True)
    ):
        if start >= end:
            raise _bad(f"region {i} is empty or reversed (start {start:#x}, end {end:#x})")
        if start < previous_end:
            raise _bad(
                f"region {i} starts at {start:#x}, before region {i - 1} ends ({previous_end:#x})"
            )
        if state == _FREE and not includes_free:
            raise _bad(f"region {i} is FREE but the snapshot does not include free regions")
        if start < low or end > high:
            gate = (
                gate_ok
                and kind == _VSYSCALL
                and start >= high
                and end - start <= VSYSCALL_MAX_BYTES
            )
            if not gate:
                raise _bad(
                    f"region {i} ({start:#x}-{end:#x}) lies outside the host's user "
                    f"address range {low:#x}-{high:#x}"
                )
        previous_end = end


def _validate_pages(table: RegionTable, page: int) -> None:
    """Every boundary on a page boundary: the wire carries regions in pages, so a
    snapshot that passes can be encoded again."""
    mask = page - 1
    if any(map(mask.__and__, table.start)) or any(map(mask.__and__, table.end)):
        rows = zip(table.start, table.end, strict=True)
        i = next(i for i, (start, end) in enumerate(rows) if (start | end) & mask)
        raise _bad(
            f"region {i} ({table.start[i]:#x}-{table.end[i]:#x}) does not start and end "
            f"on a {page}-byte page boundary"
        )


# -- whole messages -----------------------------------------------------------------------------


def _model_snapshot(snapshot: Snapshot | pb.Snapshot) -> Snapshot:
    if isinstance(snapshot, pb.Snapshot):
        try:
            return wire.snapshot_from_pb(snapshot)
        except (ValueError, OverflowError) as exc:
            raise _bad(f"malformed snapshot: {exc}") from None
    if not isinstance(snapshot, Snapshot):
        raise _bad("expected a snapshot")
    return snapshot


def _model_host(host: Host | pb.Host) -> Host:
    if isinstance(host, pb.Host):
        try:
            return wire.host_from_pb(host)
        except ValueError as exc:
            raise _bad(f"malformed host: {exc}") from None
    if not isinstance(host, Host):
        raise _bad("expected a host")
    return host


def _same_host(claimed: Host, host: Host, what: str) -> None:
    if claimed.host_id != host.host_id:
        raise _bad(f"{what} is for host {claimed.host_id!r:.80}, not {host.host_id!r}")


def validate_snapshot(snapshot: Snapshot | pb.Snapshot, host: Host | pb.Host) -> Snapshot:
    """Check one snapshot pushed or answered for ``host`` (the registered host, whose
    address range bounds the regions); returns it as the model."""
    host = _model_host(host)
    validate_host(host)
    snapshot = _model_snapshot(snapshot)
    validate_host(snapshot.host)
    _same_host(snapshot.host, host, "snapshot")
    validate_process(snapshot.process, host, "snapshot.process")
    _seconds(snapshot.capture_time, "snapshot.capture_time")
    validate_summary(snapshot.summary, "snapshot.summary")
    page = wire.table_page_size(snapshot.host)
    mapped = _check_table(snapshot.regions, host, bool(snapshot.includes_free), page)
    if snapshot.regions.start and mapped != snapshot.summary.region_count:
        raise _bad(
            f"snapshot.summary.region_count is {snapshot.summary.region_count} "
            f"but the table holds {mapped} regions that are not FREE"
        )
    return snapshot


def validate_snapshot_parts(header: bytes, regions: bytes, host: Host | pb.Host) -> Snapshot:
    """:func:`validate_snapshot` for a snapshot sent as a serialized header (a Snapshot
    without regions) and a serialized RegionTable, as agents answer the server."""
    try:
        message = pb.Snapshot.FromString(header)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise _bad(f"snapshot does not decode: {exc}") from None
    if message.HasField("regions"):
        raise _bad("snapshot header must not carry regions")
    # The table is read from its bytes once, straight into the model's columns.
    try:
        table = wire.table_from_bytes(regions)
    except wire.UndecodableBytes as exc:
        raise _bad(f"snapshot does not decode: {exc}") from None
    except (ValueError, OverflowError) as exc:
        raise _bad(f"malformed snapshot: {exc}") from None
    return validate_snapshot(replace(_model_snapshot(message), regions=table), host)


def validate_summaries(
    items: Iterable[ProcessSummary | pb.ProcessSummary], host: Host | pb.Host
) -> list[ProcessSummary]:
    """Check one push of process summaries for ``host``; returns them as the model.
    Each pid appears at most once."""
    host = _model_host(host)
    validate_host(host)
    out: list[ProcessSummary] = []
    seen: set[int] = set()
    for i, item in enumerate(items):
        if i >= MAX_PROCESSES:
            raise _bad(f"more than {MAX_PROCESSES} process summaries")
        if isinstance(item, pb.ProcessSummary):
            try:
                item = wire.process_summary_from_pb(item)
            except (ValueError, OverflowError) as exc:
                raise _bad(f"process summary {i} is malformed: {exc}") from None
        if not isinstance(item, ProcessSummary):
            raise _bad(f"process summary {i} is not a process summary")
        if not _process_fast(item.process, host):
            validate_process(item.process, host, f"processes[{i}].process")
        if not _summary_fast(item.summary):
            validate_summary(item.summary, f"processes[{i}].summary")
        capture_time = item.capture_time
        if type(capture_time) is not float or not 0.0 <= capture_time < _SECONDS_LIMIT:
            _seconds(capture_time, f"processes[{i}].capture_time")
        if item.process.pid in seen:
            raise _bad(f"pid {item.process.pid} appears twice in one push")
        seen.add(item.process.pid)
        out.append(item)
    return out


__all__: Sequence[str] = (
    "validate_host",
    "validate_process",
    "validate_snapshot",
    "validate_snapshot_parts",
    "validate_summaries",
    "validate_summary",
    "validate_table",
)
