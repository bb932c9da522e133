"""The Linux reader: everything from procfs text, never ptrace and never /proc/PID/mem.

``/proc/PID/maps`` is read always; ``/proc/PID/smaps`` only when residency is asked for
(it walks the target's page tables and can stall a large process). The procfs root is a
parameter, so the same code reads recorded fixtures.

Parsing works a whole file at a time: one regular expression pass over the text, then
per-column conversions, with per-path facts worked out once per distinct path. That
keeps a 65K-region process within a small multiple of the kernel's own formatting time.
"""

from __future__ import annotations

import errno
import gc
import os
import platform
import pwd
import re
import socket
import time
from array import array
from collections.abc import Iterator
from functools import lru_cache
from itertools import repeat
from typing import Any

from vmatlas import errors, native
from vmatlas.agents.base import sweep
from vmatlas.agents.cgroup import container_of
from vmatlas.model import (
    RESIDENCY_FIELDS,
    Host,
    IntColumn,
    OperatingSystem,
    Process,
    ProcessSummary,
    RegionKind,
    RegionState,
    RegionTable,
    RegionType,
    Snapshot,
    SnapshotView,
    Summary,
)
from vmatlas.summary import insert_free, summarize_process

# start-end perms offset, then the rest of the line: major:minor inode [path]. The rest
# repeats from region to region (a file split into many VMAs), so it is taken apart
# once per distinct value, not once per line.
_MAPS_LINE = re.compile(
    rb"^([0-9a-f]+)-([0-9a-f]+) ([-r][-w][-x][ps]) ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+ \d+ *.*)$",
    re.MULTILINE,
)
_MAPS_REST = re.compile(rb"([0-9a-f]+):([0-9a-f]+) (\d+) *(.*)")
# The smaps fields vmatlas keeps, in kB; the kernel prints them in this order.
_SMAPS_KEYS = {
    "Rss": "rss_bytes",
    "Pss": "pss_bytes",
    "Shared_Clean": "shared_clean_bytes",
    "Shared_Dirty": "shared_dirty_bytes",
    "Private_Clean": "private_clean_bytes",
    "Private_Dirty": "private_dirty_bytes",
    "Anonymous": "anonymous_bytes",
    "AnonHugePages": "anon_huge_pages_bytes",
    "Swap": "swap_bytes",
    "SwapPss": "swap_pss_bytes",
    "Locked": "locked_bytes",
}
_SMAPS_FIELD = re.compile(rb"([A-Za-z_]+):\s+(\d+) kB")
_DELETED = " (deleted)"

# PROT_* bits as Linux numbers them, plus 0x8 for a shared mapping.
_RAW_READ, _RAW_WRITE, _RAW_EXEC, _RAW_SHARED = 1, 2, 4, 8


def _perms_table() -> dict[str, tuple[int, int, int]]:
    """perms text -> (decoded protection bits, raw value, state)."""
    table = {}
    for r in "-r":
        for w in "-w":
            for x in "-x":
                for s in "ps":
                    bits = (r == "r") * 1 + (w == "w") * 2 + (x == "x") * 4 + (s == "s") * 8
                    # A private no-access VMA is a reservation: the kernel charges no
                    # commit for it (the JVM, Go and glibc reserve address space so).
                    state = RegionState.RESERVED if bits == 0 else RegionState.COMMITTED
                    table[r + w + x + s] = (bits, bits, int(state))
    return table


_PERMS = _perms_table()
# Keyed by the bytes of the maps text, which the parser works on.
_PERMS_BITS = {k.encode(): v[0] for k, v in _PERMS.items()}
_PERMS_STATE = {k.encode(): v[2] for k, v in _PERMS.items()}
# A file mapping's type: IMAGE for a file the loader mapped, else MAPPED (as ints,
# looked up once: worked out per distinct file of every process a sweep reads).
_IMAGE, _MAPPED = int(RegionType.IMAGE), int(RegionType.MAPPED)
# The type of a region with no file behind it: shared memory is MAPPED.
_PERMS_ANON_TYPE = {
    k: int(RegionType.MAPPED if b & _RAW_SHARED else RegionType.PRIVATE)
    for k, b in _PERMS_BITS.items()
}


def _loads_code(bits: int) -> bool:
    """Whether a file mapping with these perms bits is a segment the loader mapped:
    executable and private. Every mapping of such a file is IMAGE."""
    return bool(bits & _RAW_EXEC and not bits & _RAW_SHARED)


# The same, as a mask over the 16 perms values (bit b: perms bits b load code).
_LOADED_BITS = sum(1 << b for b in range(16) if _loads_code(b))

_PSEUDO_KINDS = {
    "[heap]": RegionKind.HEAP,
    "[stack]": RegionKind.STACK,
    "[vdso]": RegionKind.VDSO,
    "[vvar]": RegionKind.VVAR,
    "[vvar_vclock]": RegionKind.VVAR,
    "[vsyscall]": RegionKind.VSYSCALL,
}


@lru_cache(maxsize=65536)
def classify_path(text: str) -> tuple[str, bool, int]:
    """maps path text -> (path, deleted, kind)."""
    deleted = text.endswith(_DELETED)
    path = text[: -len(_DELETED)] if deleted else text
    if not path:
        return path, deleted, RegionKind.UNSPECIFIED
    if path[0] == "[":
        kind = _PSEUDO_KINDS.get(path)
        if kind is None:
            if path.startswith(("[anon:", "[anon_shmem:")):
                kind = RegionKind.ANON_NAMED
            elif path.startswith("[stack:"):
                kind = RegionKind.STACK
            else:
                kind = RegionKind.OTHER_PSEUDO
        return path, deleted, int(kind)
    if path.startswith("/memfd:"):
        return path, deleted, int(RegionKind.MEMFD)
    if path.startswith("/SYSV"):
        return path, deleted, int(RegionKind.SYSV_SHM)
    return path, deleted, int(RegionKind.UNSPECIFIED)


@lru_cache(maxsize=4096)
def parse_rest(rest: bytes) -> tuple[int, int, str, bool, int]:
    """``major:minor inode [path]`` -> (device, inode, path, deleted, kind). Cached:
    every process of a host maps the same few shared objects."""
    match = _MAPS_REST.fullmatch(rest)
    assert match is not None  # _MAPS_LINE only lets through rests of this shape
    major, minor, inode, raw_path = match.groups()
    path, deleted, kind = classify_path(raw_path.decode("utf-8", "surrogateescape"))
    return os.makedev(int(major, 16), int(minor, 16)), int(inode), path, deleted, kind


class _gc_paused:  # entered as a function's context: ``with _gc_paused():``
    """Pause the cyclic collector while a parse builds hundreds of thousands of
    acyclic tuples and lists: left on, it rescans them over and over (a third of the
    parse time of a 65K-region process). A class, not a generator: it is entered for
    every process of a sweep, where a generator's context manager costs more than
    the parse of a small maps."""

    __slots__ = ("was_enabled",)

    def __enter__(self) -> None:
        self.was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.was_enabled:
            gc.enable()


def parse_maps(text: str | bytes) -> RegionTable:
    """A RegionTable from the text of /proc/PID/maps (or the header lines of smaps).

    Bytes as read from procfs are parsed as they are; text is first encoded back
    (``surrogateescape``), so both give the same table."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    with _gc_paused():
        accel = native.accel
        if accel is not None:
            # None: a number past 64 bits, which no procfs writes; the pure parse decides.
            scan = accel.scan_maps(bytes(data), *_SCAN_DECISIONS)
            if scan is not None:
                return _table_from_scan(accel, scan)
        return _parse_maps(data)


# Lines are matched a megabyte at a time, and each batch of matched rows is turned into
# columns before the next is matched: the rows (a tuple and five byte strings each) of a
# 65K-region process would otherwise all be alive at once, half the parse's memory.
_BATCH_BYTES = 1 << 20


def _batches(data: bytes) -> Iterator[tuple[int, int]]:
    """``(pos, endpos)`` spans of ``data`` about _BATCH_BYTES long, ending after a newline."""
    pos, size = 0, len(data)
    while pos < size:
        cut = data.find(b"\n", min(pos + _BATCH_BYTES, size - 1))
        endpos = size if cut < 0 else cut + 1
        yield pos, endpos
        pos = endpos


def _parse_maps(data: bytes) -> RegionTable:
    starts: list[int] = []
    ends: list[int] = []
    offsets: list[int] = []
    perms: list[bytes] = []
    rests: list[bytes] = []
    # One object per distinct perms or rest text, however many lines repeat it.
    canonical_perms = {p: p for p in _PERMS_BITS}
    canonical_rests: dict[bytes, bytes] = {}
    for pos, endpos in _batches(data):
        rows = _MAPS_LINE.findall(data, pos, endpos)
        if not rows:
            continue
        batch_starts, batch_ends, batch_perms, batch_offsets, batch_rests = zip(*rows, strict=True)
        del rows
        k = len(batch_starts)
        starts += map(int, batch_starts, repeat(16, k))
        ends += map(int, batch_ends, repeat(16, k))
        offsets += map(int, batch_offsets, repeat(16, k))
        perms += map(canonical_perms.__getitem__, batch_perms)
        rests += map(canonical_rests.setdefault, batch_rests, batch_rests)
    if not starts:
        return RegionTable()
    facts = {rest: parse_rest(rest) for rest in set(rests)}
    # A file the loader mapped (an executable or shared object) has an executable
    # segment; every mapping of that file is IMAGE, other file mappings MAPPED.
    image_files = set()
    for rest, perm in set(zip(rests, perms, strict=True)):
        device, inode = facts[rest][:2]
        if inode and _loads_code(_PERMS_BITS[perm]):
            image_files.add((device, inode))
    file_type = {
        rest: ((_IMAGE if (f[0], f[1]) in image_files else _MAPPED) if f[1] else 0)
        for rest, f in facts.items()
    }
    anon_type = _PERMS_ANON_TYPE
    types = [
        t or anon_type[perm]
        for t, perm in zip(map(file_type.__getitem__, rests), perms, strict=True)
    ]

    def column(k: int) -> list[Any]:
        by_rest = {rest: f[k] for rest, f in facts.items()}
        return list(map(by_rest.__getitem__, rests))

    protection = list(map(_PERMS_BITS.__getitem__, perms))
    return RegionTable(
        start=starts,
        end=ends,
        state=list(map(_PERMS_STATE.__getitem__, perms)),
        type=types,
        protection=protection,
        protection_raw=list(protection),
        kind=column(4),
        path=column(2),
        offset=offsets,
        device=column(0),
        inode=column(1),
        deleted=column(3),
    )


# The perms decisions as tables indexed by perms bits (r=1, w=2, x=4, s=8), for the
# native scanner, which reports each line's perms so.
_STATE_BY_BITS = [_PERMS_STATE[k] for k in sorted(_PERMS_BITS, key=_PERMS_BITS.__getitem__)]
_ANON_TYPE_BY_BITS = [_PERMS_ANON_TYPE[k] for k in sorted(_PERMS_BITS, key=_PERMS_BITS.__getitem__)]


# What the native scan asks of each distinct rest as it first sees it: its parse_rest
# facts (5 of them), which the columns then spread over the regions.
_SCAN_DECISIONS = (parse_rest, 5)


def _spread(accel: Any, values: list[Any], index: bytes, width: int, typecode: str) -> Any:
    """``[values[k] for k in index]`` as a typed column, or as a list where a value
    does not fit one (an inode past 64 bits, in text no kernel writes)."""
    column = accel.spread(values, index, width, typecode)
    return accel.gather(values, index, width) if column is None else column


def _table_from_scan(accel: Any, scan: tuple[Any, ...], summary_only: bool = False) -> RegionTable:
    """The RegionTable of a native maps scan: the same decisions as _parse_maps (taken
    here, once per distinct rest or perms value), spread over the regions in C into
    typed columns.

    ``summary_only``: a table for summarize alone, which nothing else sees (a sweep's):
    the columns it reads (addresses, state, type, protection, kind) laid out, the rest
    (path, offset, device, inode, deleted, the raw protection) left empty."""
    starts, ends, offsets, bits, rest_index, _, rest_bits, facts = scan
    if not starts:
        return RegionTable()
    # A file the loader mapped (an executable or shared object) has an executable
    # segment; every mapping of that file is IMAGE, other file mappings MAPPED.
    image_files = {
        (f[0], f[1])
        for f, seen in zip(facts, rest_bits, strict=True)
        if f[1] and seen & _LOADED_BITS
    }
    # None: no file behind it, the type follows from the perms.
    file_type = [
        ((_IMAGE if (f[0], f[1]) in image_files else _MAPPED) if f[1] else None) for f in facts
    ]
    # The perms bits are the protection bits (r=1, w=2, x=4, s=8).
    protection = array("B", bits)
    table = RegionTable(
        start=starts,
        end=ends,
        state=accel.spread(_STATE_BY_BITS, bits, 1, "B"),
        type=accel.spread(file_type, rest_index, 4, "B", _ANON_TYPE_BY_BITS, bits, 1),
        protection=protection,
        kind=accel.spread([f[4] for f in facts], rest_index, 4, "B"),
    )
    if not summary_only:
        device, inode, path, deleted, _ = zip(*facts, strict=True)
        table.protection_raw = array("B", bits)
        table.path = accel.gather(list(path), rest_index, 4)
        table.offset = offsets
        table.device = _spread(accel, list(device), rest_index, 4, "Q")
        table.inode = _spread(accel, list(inode), rest_index, 4, "Q")
        table.deleted = accel.gather(list(deleted), rest_index, 4)
    return table


def parse_smaps(text: str | bytes) -> RegionTable:
    """A RegionTable with residency from the text (or bytes) of /proc/PID/smaps.

    The kernel prints the same lines in the same order for every region, so the
    text is cut into lines and the k-th line of every region block taken as one
    column; each distinct line is checked and converted once. Raises ValueError when
    the blocks are not all alike."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    with _gc_paused():
        accel = native.accel
        if accel is not None:
            # Regular text only (as procfs writes it, numbers within 64 bits); anything
            # else, the pure parse below decides, so both paths accept and refuse the
            # same texts.
            scan = accel.scan_smaps(bytes(data), _SMAPS_KEYS_BYTES, *_SCAN_DECISIONS)
            if scan is not None:
                return _table_from_smaps_scan(accel, scan)
        return _parse_smaps(data)


def _table_from_smaps_scan(accel: Any, scan: tuple[tuple[Any, ...], list[Any]]) -> RegionTable:
    """The table of a native smaps scan: its header lines' maps scan and the residency
    columns (typed, in bytes)."""
    header_scan, columns = scan
    table = _table_from_scan(accel, header_scan)
    n = len(table)
    found = dict(zip(_SMAPS_KEYS.values(), columns, strict=True))
    # A field this kernel does not print is all zero.
    table.residency = {
        name: array("Q", bytes(8 * n)) if found[name] is None else found[name]
        for name in RESIDENCY_FIELDS
    }
    return table


_SMAPS_KEYS_BYTES = tuple(key.encode("ascii") for key in _SMAPS_KEYS)


def _parse_smaps(data: bytes) -> RegionTable:
    headers: list[bytes] = []
    residency: dict[str, IntColumn] = {name: [] for name in RESIDENCY_FIELDS}
    width = 0
    for pos, endpos in _smaps_batches(data):
        lines = data[pos:endpos].split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        # Lines per region block: from one header line to the next.
        batch_width = next(
            (i for i, line in enumerate(lines[1:], 1) if _MAPS_LINE.fullmatch(line)), len(lines)
        )
        if width and batch_width != width and len(lines) > batch_width:
            raise ValueError("smaps fields are not the same for every region")
        width = width or batch_width
        if not lines or len(lines) % width:
            if _MAPS_LINE.search(data):
                raise ValueError("smaps fields are not the same for every region")
            return RegionTable(residency={name: [] for name in RESIDENCY_FIELDS})
        headers += lines[0::width]
        _residency_columns(lines, width, residency)
    table = _parse_maps(b"\n".join(headers))
    if len(table) != len(headers):
        raise ValueError("smaps fields are not the same for every region")
    table.residency = residency
    return table


def _smaps_batches(data: bytes) -> Iterator[tuple[int, int]]:
    """``(pos, endpos)`` spans of ``data`` about _BATCH_BYTES long, each a run of whole
    region blocks (cut just before a header line)."""
    pos, size = 0, len(data)
    while pos < size:
        endpos = size
        if pos + _BATCH_BYTES < size:
            header = _MAPS_LINE.search(data, pos + _BATCH_BYTES)
            if header is not None:
                endpos = header.start()
        yield pos, endpos
        pos = endpos


def _residency_columns(lines: list[bytes], width: int, residency: dict[str, IntColumn]) -> None:
    """Append the residency of the region blocks in ``lines`` (``width`` lines each) to
    ``residency``; each distinct line is checked and converted once."""
    n = len(lines) // width
    found: set[str] = set()
    for k in range(1, width):
        field_lines = lines[k::width]
        name = field_lines[0].split(b":", 1)[0]
        key = _SMAPS_KEYS.get(name.decode("ascii", "replace"))
        distinct = set(field_lines)
        if key is None:
            if not all(line.startswith(name + b":") for line in distinct):
                raise ValueError("smaps fields are not the same for every region")
            continue
        if key in found:  # the kernel prints each field once per region
            raise ValueError(f"smaps field {key} appears twice in a region")
        in_bytes = {}
        for line in distinct:
            match = _SMAPS_FIELD.fullmatch(line)
            if match is None or match[1] != name:
                raise ValueError("smaps fields are not the same for every region")
            in_bytes[line] = int(match[2]) * 1024
        residency[key] += map(in_bytes.__getitem__, field_lines)
        found.add(key)
    for key, column in residency.items():
        if key not in found:  # a field this kernel does not print
            column += [0] * n


def _user_range(machine: str, mmap_min_addr: int, pointer_bits: int) -> tuple[int, int]:
    if pointer_bits == 32:
        return mmap_min_addr, 0xFFFFE000
    if machine in ("aarch64", "arm64"):
        return mmap_min_addr, 1 << 48
    return mmap_min_addr, 0x7FFFFFFFF000


class LinuxReader:
    """Reads processes of this host (or a recorded procfs tree) into the model."""

    os = OperatingSystem.LINUX

    def __init__(self, procfs: str = "/proc", host_id: str | None = None):
        self.procfs = procfs.rstrip("/") or "/"
        self._host_id = host_id
        self._machine = platform.machine()
        self._clock_ticks = os.sysconf("SC_CLK_TCK")
        self._boot_time: float | None = None
        # Pointer width per process image, (pid, start ticks, executable) -> bits, in
        # two generations: a sweep starts a new one and keeps what it looks up again,
        # so images that are gone are dropped a sweep later.
        self._pointer_bits_by_image: dict[tuple[int, int, str], int] = {}
        self._pointer_bits_before: dict[tuple[int, int, str], int] = {}

    # -- host -------------------------------------------------------------------------

    def _read_int(self, relative: str, default: int) -> int:
        try:
            with open(f"{self.procfs}/{relative}") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return default

    def host(self) -> Host:
        hostname = socket.gethostname()
        try:
            os_version = platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
        except OSError:
            os_version = "Linux"
        try:
            with open(f"{self.procfs}/sys/kernel/osrelease") as f:
                kernel = f.read().strip()
        except OSError:
            kernel = platform.release()
        page = os.sysconf("SC_PAGE_SIZE")
        low, high = _user_range(self._machine, self._mmap_min_addr(), 64)
        return Host(
            host_id=self._host_id or hostname,
            hostname=hostname,
            os=OperatingSystem.LINUX,
            os_version=os_version,
            kernel_version=kernel,
            page_size_bytes=page,
            allocation_granularity_bytes=page,
            user_address_min=low,
            user_address_max=high,
            max_map_count=self._read_int("sys/vm/max_map_count", 65530),
            overcommit_mode=self._read_int("sys/vm/overcommit_memory", -1),
            cpu_count=os.cpu_count() or 0,
            memory_total_bytes=self._read_meminfo_total(),
        )

    def _read_meminfo_total(self) -> int:
        try:
            with open(f"{self.procfs}/meminfo") as f:
                for line in f:
                    if line.startswith("MemTotal:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return 0

    # -- processes ----------------------------------------------------------------------

    def pids(self) -> list[int]:
        return sorted(int(name) for name in os.listdir(self.procfs) if name.isdigit())

    def _path(self, pid: int, name: str) -> str:
        return f"{self.procfs}/{pid}/{name}"

    def _raise_for(self, exc: OSError, pid: int, name: str | None = None) -> None:
        if isinstance(exc, FileNotFoundError | ProcessLookupError) or exc.errno in (
            errno.ENOENT,
            errno.ESRCH,
        ):
            raise errors.NoSuchProcess(pid=pid, name=name) from None
        if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
            raise errors.AccessDenied(
                f"access denied reading pid {pid}" + (f" ({name})" if name else ""),
                pid=pid,
                name=name,
            ) from None
        raise exc

    def _read_bytes(
        self, pid: int, name: str, process_name: str | None = None, *, record: bool = False
    ) -> bytes:
        try:
            return _read_all(self._path(pid, name), record)
        except OSError as exc:
            self._raise_for(exc, pid, process_name)
            raise  # unreachable: _raise_for always raises

    def boot_time(self) -> float:
        if self._boot_time is None:
            self._boot_time = 0.0
            try:
                with open(f"{self.procfs}/stat") as f:
                    for line in f:
                        if line.startswith("btime "):
                            self._boot_time = float(line.split()[1])
            except OSError:
                pass
        return self._boot_time

    def process(self, pid: int, host: Host | None = None) -> Process:
        """Identity of ``pid``. Raises NoSuchProcess when it does not exist. With
        ``host`` (read once for a whole sweep), its mmap_min_addr is used rather than
        read again for every process."""
        return self._identity(pid, host)[0]

    def _identity(self, pid: int, host: Host | None) -> tuple[Process, bool]:
        """:meth:`process`, and whether it is a kernel thread. Runs for every process
        of a sweep: each file is read by one open and one read where that holds it."""
        base = f"{self.procfs}/{pid}/"
        stat = self._read_bytes(pid, "stat", record=True).decode("utf-8", "surrogateescape")
        # comm may hold spaces and parentheses: it ends at the last ')'.
        close = stat.rfind(")")
        name = stat[stat.find("(") + 1 : close]
        fields = stat[close + 2 :].split(None, 20)
        state, ppid, start_ticks = fields[0], int(fields[1]), int(fields[19])
        flags = int(fields[6])
        kernel_thread = bool(flags & 0x00200000)  # PF_KTHREAD
        # A kernel thread has no command line and no executable: the kernel answers
        # an empty cmdline and ENOENT for exe without looking further (most of a
        # host's pids are kernel threads).
        command_line: tuple[str, ...] = ()
        exe = ""
        if not kernel_thread:
            try:
                cmdline = self._read_bytes(pid, "cmdline", name, record=True)
            except errors.Error:
                cmdline = b""
            if cmdline:
                command_line = tuple(cmdline.decode("utf-8", "surrogateescape").split("\0")[:-1])
            try:
                exe = os.readlink(base + "exe")
            except OSError:
                exe = ""
        try:
            user = _user_name(os.stat(base).st_uid)
        except OSError:
            user = ""
        try:
            cgroup = self._read_bytes(pid, "cgroup", name, record=True)
        except errors.Error:
            container_id, pod_uid = "", ""
        else:
            container_id, pod_uid = _container_of(cgroup.decode("utf-8", "surrogateescape"))
        pointer_bits = 64 if kernel_thread else self._image_pointer_bits(pid, start_ticks, exe)
        mmap_min_addr = host.user_address_min if host else self._mmap_min_addr()
        low, high = _user_range(self._machine, mmap_min_addr, pointer_bits)
        process = Process(
            pid=pid,
            parent_pid=ppid,
            name=name,
            executable=exe,
            command_line=command_line,
            user=user,
            start_time=self.boot_time() + start_ticks / self._clock_ticks,
            pointer_bits=pointer_bits,
            user_address_min=low,
            user_address_max=high,
            address_space_empty=kernel_thread or state in "ZX",
            container_id=container_id,
            pod_uid=pod_uid,
        )
        return process, kernel_thread

    def _mmap_min_addr(self) -> int:
        return self._read_int("sys/vm/mmap_min_addr", os.sysconf("SC_PAGE_SIZE"))

    def _image_pointer_bits(self, pid: int, start_ticks: int, exe: str) -> int:
        """:meth:`_pointer_bits`, read once per process image. An image is named by
        pid, start time and executable path: an exec keeps pid and start time, but
        the path it shows changes with the file (a file replaced on disk shows as
        deleted). Without a path there is nothing to name the image by."""
        if not exe:
            return self._pointer_bits(pid)
        key = (pid, start_ticks, exe)
        bits = self._pointer_bits_by_image.get(key)
        if bits is None:
            bits = self._pointer_bits_before.get(key)
            if bits is None:
                bits = self._pointer_bits(pid)
            if len(self._pointer_bits_by_image) >= _IMAGES_KEPT:
                self._new_image_generation()
            self._pointer_bits_by_image[key] = bits
        return bits

    def _new_image_generation(self) -> None:
        self._pointer_bits_before = self._pointer_bits_by_image
        self._pointer_bits_by_image = {}

    def _pointer_bits(self, pid: int) -> int:
        try:
            fd = os.open(self._path(pid, "exe"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                header = os.read(fd, 5)
            finally:
                os.close(fd)
        except OSError:
            return 64
        return 32 if header[:4] == b"\x7fELF" and header[4:5] == b"\x01" else 64

    def regions(
        self,
        pid: int,
        *,
        residency: bool = False,
        name: str | None = None,
        streamed: bool = True,
    ) -> RegionTable:
        """The regions of ``pid``. Raises NoSuchProcess or AccessDenied.

        ``streamed``: on the native path, maps is scanned a chunk at a time as the
        kernel writes it, never held whole; without, it is read whole, then parsed."""
        scanned: RegionTable | bytes | None = None
        if native.accel is not None and (residency or streamed):
            scanned = (
                self._streamed_smaps(pid, name) if residency else self._streamed_maps(pid, name)
            )
            if isinstance(scanned, RegionTable):
                return scanned
        # The text the streamed scan read and left to the whole-text parse, or read now.
        return self._regions_of_text(
            pid, residency, name, scanned if isinstance(scanned, bytes) else None
        )

    def _regions_of_text(
        self, pid: int, residency: bool, name: str | None, text: bytes | None = None
    ) -> RegionTable:
        """:meth:`regions` from the whole text (``text`` where it was read already),
        parsed at once."""
        if text is None:
            text = self._read_bytes(pid, "smaps" if residency else "maps", name)
        if not text and not os.path.exists(self._path(pid, "stat")):
            raise errors.NoSuchProcess(pid=pid, name=name)
        return parse_smaps(text) if residency else parse_maps(text)

    def _streamed_maps(
        self, pid: int, name: str | None, summary_only: bool = False
    ) -> RegionTable | None:
        """maps scanned natively a chunk at a time as it is read; None where it is
        empty (a process that is gone, or a kernel thread: the whole-text path decides
        which) or holds a number past 64 bits. ``summary_only``: the table for
        summarize alone (see _table_from_scan)."""
        accel = native.accel
        assert accel is not None
        if not hasattr(accel, "scan_maps_fd"):  # Windows builds read no procfs
            return None
        try:
            fd = os.open(self._path(pid, "maps"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                with _gc_paused():
                    scan = accel.scan_maps_fd(fd, *_SCAN_DECISIONS)
                    return None if scan is None else _table_from_scan(accel, scan, summary_only)
            finally:
                os.close(fd)
        except OSError as exc:
            self._raise_for(exc, pid, name)
            raise  # unreachable: _raise_for always raises

    def _streamed_smaps(self, pid: int, name: str | None) -> RegionTable | bytes | None:
        """smaps scanned natively as it is read, never held whole (tens of megabytes
        for a large process). Where the text is not regular, or empty, the whole-text
        parse decides: on the text as read, which the scan hands back where it kept it
        all (always, but for a long text found irregular only after its start was let
        go: None, and the file is read again; no kernel writes such text)."""
        accel = native.accel
        assert accel is not None
        try:
            fd = os.open(self._path(pid, "smaps"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                with _gc_paused():
                    scan = accel.scan_smaps_fd(fd, _SMAPS_KEYS_BYTES, *_SCAN_DECISIONS)
                    if scan is None or isinstance(scan, bytes):
                        return scan
                    return _table_from_smaps_scan(accel, scan)
            finally:
                os.close(fd)
        except OSError as exc:
            self._raise_for(exc, pid, name)
            raise  # unreachable: _raise_for always raises

    def snapshot(
        self, pid: int, *, include_free: bool = False, include_residency: bool = False
    ) -> Snapshot:
        host = self.host()
        process = self.process(pid, host)
        table = self.regions(pid, residency=include_residency, name=process.name)
        capture_time = time.time()
        summary = summarize_process(table, host, process)
        if include_free:
            table = insert_free(table, process.user_address_min, process.user_address_max)
        return Snapshot(
            host=host,
            process=process,
            capture_time=capture_time,
            summary=summary,
            regions=table,
            view=SnapshotView.NATIVE,
            includes_free=include_free,
            includes_residency=include_residency,
        )

    def process_summary(self, pid: int, host: Host | None = None) -> ProcessSummary:
        host = host or self.host()
        process, kernel_thread = self._identity(pid, host)
        if kernel_thread:
            # No address space (its maps is empty by the kernel's definition): the
            # summary of no regions over its range, the same for every kernel thread.
            summary = _empty_summary(host, process.user_address_min, process.user_address_max)
        else:
            # Only the columns the summary reads are laid out.
            table = None
            if native.accel is not None:
                table = self._streamed_maps(pid, process.name, summary_only=True)
            if table is None:
                table = self._regions_of_text(pid, False, process.name)
            summary = summarize_process(table, host, process)
        return ProcessSummary(process=process, summary=summary, capture_time=time.time())

    def process_summaries(self) -> Iterator[ProcessSummary | errors.Error]:
        """A summary of every process, or the error that stopped one being read."""
        self._new_image_generation()
        return sweep(self)


@lru_cache(maxsize=16)
def _empty_summary(host: Host, range_min: int, range_max: int) -> Summary:
    """The summary of an address space with no regions (a kernel thread's)."""
    return summarize_process(
        RegionTable(), host, Process(pid=0, user_address_min=range_min, user_address_max=range_max)
    )


# Process images whose pointer width is kept between sweeps, at most (a generation).
_IMAGES_KEPT = 16384

# Most processes of a host share a few cgroup texts.
_container_of = lru_cache(maxsize=256)(container_of)

# What one read() asks for. The kernel hands out procfs text a page at a time whatever
# is asked, but cmdline (and anything else not written through seq_file) fills it.
_READ_BYTES = 1 << 16


def _read_all(path: str, record: bool = False) -> bytes:
    """The whole of a procfs file, read to its end by os.read: a buffered file object
    costs four more system calls (two fstat, an ioctl, lseek) and more Python to set up
    than the reads of a small file take.

    ``record``: a file the kernel writes as one record (stat, cmdline, cgroup: one
    show, or a copy up to the size asked), where a read that comes back short holds
    all of it: no second read is made to find the end."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, _READ_BYTES)
        if data and not (record and len(data) < _READ_BYTES):
            parts = [data]
            while chunk := os.read(fd, _READ_BYTES):
                parts.append(chunk)
            if len(parts) > 1:
                data = b"".join(parts)
    finally:
        os.close(fd)
    return data


@lru_cache(maxsize=1024)
def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
