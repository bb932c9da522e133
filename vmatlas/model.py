"""The plain-data model every part of vmatlas works on.

Readers return these; :mod:`vmatlas.wire` is the only module that turns them into
protobuf and back. Enum values equal the wire schema's (``vmatlas.v1``), which a test
checks. Regions are kept as columns (:class:`RegionTable`) because a process may hold
hundreds of thousands of them; :meth:`RegionTable.rows` hands them out as rows.
"""

from __future__ import annotations

import enum
from array import array
from collections.abc import Iterator, MutableSequence, Sequence
from dataclasses import dataclass, field
from operator import eq
from typing import Any

from vmatlas import errors


class OperatingSystem(enum.IntEnum):
    UNSPECIFIED = 0
    LINUX = 1
    WINDOWS = 2


class RegionState(enum.IntEnum):
    UNSPECIFIED = 0
    FREE = 1
    RESERVED = 2
    COMMITTED = 3


class RegionType(enum.IntEnum):
    UNSPECIFIED = 0
    IMAGE = 1
    MAPPED = 2
    PRIVATE = 3


class RegionKind(enum.IntEnum):
    UNSPECIFIED = 0
    HEAP = 1
    STACK = 2
    VDSO = 3
    VVAR = 4
    VSYSCALL = 5
    ANON_NAMED = 6
    MEMFD = 7
    SYSV_SHM = 8
    OTHER_PSEUDO = 9


class SnapshotView(enum.IntEnum):
    UNSPECIFIED = 0
    NATIVE = 1
    WINDOWS = 2


class ProcessOrder(enum.IntEnum):
    """How a list of processes is sorted: the one definition every part uses (agent,
    store, server, client, command line). Values equal the wire's ``ProcessOrder``
    (whose zero value means :attr:`REGIONS`); :attr:`keyword` is the command line's
    and the client's spelling."""

    # Map count, largest first.
    REGIONS = 1
    # Headroom to the limit, smallest first (closest to the limit first).
    HEADROOM = 2
    PID = 3

    @property
    def keyword(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: ProcessOrder | str) -> ProcessOrder:
        """An order from itself or its keyword; InvalidArgument for anything else."""
        if isinstance(value, ProcessOrder):
            return value
        try:
            return cls[str(value).upper()]
        except KeyError:
            keywords = ", ".join(o.keyword for o in cls)
            raise errors.InvalidArgument(
                f"unknown process order {value!r}: use one of {keywords}"
            ) from None

    def sort(self, items: list[ProcessSummary], limit: int = 0) -> list[ProcessSummary]:
        """``items`` sorted in this order (in place; ties by pid), at most ``limit``
        (0: all)."""
        if self is ProcessOrder.REGIONS:
            items.sort(key=lambda p: (-p.summary.map_count, p.process.pid))
        elif self is ProcessOrder.HEADROOM:
            items.sort(key=lambda p: (p.summary.headroom_fraction, p.process.pid))
        else:
            items.sort(key=lambda p: p.process.pid)
        return items[:limit] if limit else items


class Protection(enum.IntFlag):
    NONE = 0
    READ = 1
    WRITE = 2
    EXECUTE = 4
    SHARED = 8
    GUARD = 16
    NO_CACHE = 32
    WRITE_COMBINE = 64
    COPY_ON_WRITE = 128


ACCESS_MASK = Protection.READ | Protection.WRITE | Protection.EXECUTE


def perms_text(protection: int) -> str:
    """``rwxp``-style text, as /proc/PID/maps and pmap print it."""
    return (
        ("r" if protection & 1 else "-")
        + ("w" if protection & 2 else "-")
        + ("x" if protection & 4 else "-")
        + ("s" if protection & 8 else "p")
    )


@dataclass(frozen=True, slots=True)
class Host:
    host_id: str
    hostname: str
    os: OperatingSystem
    os_version: str = ""
    kernel_version: str = ""
    page_size_bytes: int = 4096
    allocation_granularity_bytes: int = 4096
    user_address_min: int = 0
    user_address_max: int = 0
    max_map_count: int = 0
    overcommit_mode: int = -1
    cpu_count: int = 0
    memory_total_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Process:
    pid: int
    parent_pid: int = 0
    name: str = ""
    executable: str = ""
    command_line: tuple[str, ...] = ()
    user: str = ""
    # Seconds since the epoch; with pid it names one process, not a reused pid.
    start_time: float = 0.0
    pointer_bits: int = 64
    user_address_min: int = 0
    user_address_max: int = 0
    address_space_empty: bool = False
    # From the process's cgroup: its container's id and Kubernetes pod UID, or "".
    container_id: str = ""
    pod_uid: str = ""


# The exact type of each of Process's fields, in order, as the wire decoder makes them:
# what the server's per-summary fast paths (checks, the stored JSON) take as plain.
PROCESS_FIELD_TYPES = (int, int, str, str, tuple, str, float, int, int, int, bool, str, str)


@dataclass(frozen=True, slots=True)
class Summary:
    region_count: int = 0
    map_count: int = 0
    max_map_count: int = 0
    headroom_fraction: float = 1.0
    committed_bytes: int = 0
    reserved_bytes: int = 0
    free_bytes: int = 0
    largest_free_bytes: int = 0
    single_page_region_count: int = 0
    guard_region_count: int = 0
    allocation_count: int = 0
    unusable_bytes: int = 0


RESIDENCY_FIELDS = (
    "rss_bytes",
    "pss_bytes",
    "swap_bytes",
    "swap_pss_bytes",
    "shared_clean_bytes",
    "shared_dirty_bytes",
    "private_clean_bytes",
    "private_dirty_bytes",
    "anonymous_bytes",
    "locked_bytes",
    "anon_huge_pages_bytes",
)


@dataclass(frozen=True, slots=True)
class Residency:
    """What of one region is in memory, from /proc/PID/smaps, in bytes."""

    rss_bytes: int = 0
    pss_bytes: int = 0
    swap_bytes: int = 0
    swap_pss_bytes: int = 0
    shared_clean_bytes: int = 0
    shared_dirty_bytes: int = 0
    private_clean_bytes: int = 0
    private_dirty_bytes: int = 0
    anonymous_bytes: int = 0
    locked_bytes: int = 0
    anon_huge_pages_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Region:
    """One region (a Linux VMA, a Windows VirtualQueryEx block), as a row."""

    start: int
    end: int
    state: RegionState
    protection: Protection
    protection_raw: int
    type: RegionType
    path: str = ""
    offset: int = 0
    device: int = 0
    inode: int = 0
    deleted: bool = False
    kind: RegionKind = RegionKind.UNSPECIFIED
    allocation_base: int = 0
    allocation_protection: Protection = Protection.NONE
    allocation_protection_raw: int = 0
    residency: Residency | None = None

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def perms(self) -> str:
        return perms_text(self.protection)


# A column of integers: a list, or a typed array (array.array: 'Q' for addresses,
# offsets, devices and inodes, 'B' for the small enums), as the native scan of maps
# fills it straight from the text, with no Python int per value. Both index, iterate
# and compare the same (RegionTable's equality compares values, not container types).
IntColumn = MutableSequence[int]


def same_column(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Whether two columns hold equal values, whatever their containers (a list never
    equals an array, however alike their values)."""
    if type(a) is type(b) or (isinstance(a, array) and isinstance(b, array)):
        return bool(a == b)
    return len(a) == len(b) and all(map(eq, a, b))


@dataclass(slots=True, eq=False)
class RegionTable:
    """Regions as columns, sorted by start. Every column has one entry per region,
    except the optional ones (``allocation_*``, ``residency``) which are either empty
    (all zero / absent) or full. Built once by a reader, then treated as immutable.

    Integer columns are lists or typed arrays (:data:`IntColumn`); tables are equal
    when their columns hold equal values."""

    start: IntColumn = field(default_factory=list)
    end: IntColumn = field(default_factory=list)
    state: IntColumn = field(default_factory=list)
    type: IntColumn = field(default_factory=list)
    protection: IntColumn = field(default_factory=list)
    protection_raw: IntColumn = field(default_factory=list)
    kind: IntColumn = field(default_factory=list)
    path: list[str] = field(default_factory=list)
    offset: IntColumn = field(default_factory=list)
    device: IntColumn = field(default_factory=list)
    inode: IntColumn = field(default_factory=list)
    deleted: list[bool] = field(default_factory=list)
    allocation_base: IntColumn = field(default_factory=list)
    allocation_protection: IntColumn = field(default_factory=list)
    allocation_protection_raw: IntColumn = field(default_factory=list)
    # Field name (RESIDENCY_FIELDS) -> column; empty when residency was not read.
    residency: dict[str, IntColumn] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.start)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RegionTable):
            return NotImplemented
        if self.residency.keys() != other.residency.keys():
            return False
        return all(
            same_column(getattr(self, name), getattr(other, name))
            for name in (*ROW_COLUMNS, *ALLOCATION_COLUMNS)
        ) and all(same_column(c, other.residency[k]) for k, c in self.residency.items())

    __hash__ = None  # type: ignore[assignment]  # mutable columns, as a dataclass's

    def row(self, i: int) -> Region:
        has_alloc = bool(self.allocation_base)
        residency = (
            Residency(**{name: column[i] for name, column in self.residency.items()})
            if self.residency
            else None
        )
        return Region(
            start=self.start[i],
            end=self.end[i],
            state=RegionState(self.state[i]),
            protection=Protection(self.protection[i]),
            protection_raw=self.protection_raw[i],
            type=RegionType(self.type[i]),
            path=self.path[i],
            offset=self.offset[i],
            device=self.device[i],
            inode=self.inode[i],
            deleted=self.deleted[i],
            kind=RegionKind(self.kind[i]),
            allocation_base=self.allocation_base[i] if has_alloc else 0,
            allocation_protection=Protection(self.allocation_protection[i] if has_alloc else 0),
            allocation_protection_raw=self.allocation_protection_raw[i] if has_alloc else 0,
            residency=residency,
        )

    def rows(self) -> Iterator[Region]:
        for i in range(len(self.start)):
            yield self.row(i)

    __iter__ = rows

    def __getitem__(self, i: int) -> Region:
        return self.row(range(len(self.start))[i])

    def take(self, indices: Sequence[int]) -> RegionTable:
        """A new table of the rows at ``indices``, in that order."""
        out = RegionTable()
        for name in (*ROW_COLUMNS, *ALLOCATION_COLUMNS):
            column = getattr(self, name)
            if column:
                setattr(out, name, [column[i] for i in indices])
        out.residency = {k: [c[i] for i in indices] for k, c in self.residency.items()}
        return out

    def without_free(self) -> RegionTable:
        """This table less its FREE regions (itself when it lists none)."""
        free = int(RegionState.FREE)
        if free not in self.state:
            return self
        return self.take([i for i, state in enumerate(self.state) if state != free])


# The columns every region has a value in, and the optional ones (empty or full).
ROW_COLUMNS = (
    "start",
    "end",
    "state",
    "type",
    "protection",
    "protection_raw",
    "kind",
    "path",
    "offset",
    "device",
    "inode",
    "deleted",
)
ALLOCATION_COLUMNS = ("allocation_base", "allocation_protection", "allocation_protection_raw")


@dataclass(frozen=True, slots=True)
class Snapshot:
    host: Host
    process: Process
    capture_time: float
    summary: Summary
    regions: RegionTable
    view: SnapshotView = SnapshotView.NATIVE
    includes_free: bool = False
    includes_residency: bool = False


@dataclass(frozen=True, slots=True)
class ProcessSummary:
    process: Process
    summary: Summary
    capture_time: float
