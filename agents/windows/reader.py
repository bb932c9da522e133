"""The Windows reader: VirtualQueryEx over a process's whole user range.

Every region is kept, free and reserved ones included, with its state, type, decoded
and raw protection, allocation base and (for image and mapped views) its file. The
Win32 calls go through a :class:`~.win32.Win32Api`, so the same code reads Windows
processes on Windows (:mod:`.ctypes_win32`) and Wine processes on Linux (:mod:`.wine`).
"""

from __future__ import annotations

import platform
import socket
import time
from collections.abc import Iterator

import psutil

from vmatlas import errors
from vmatlas.agents.base import sweep
from vmatlas.agents.windows.win32 import (
    ERROR_ACCESS_DENIED,
    MEM_COMMIT,
    MEM_FREE,
    MEM_IMAGE,
    MEM_MAPPED,
    MEM_PRIVATE,
    MEM_RESERVE,
    PAGE_EXECUTE,
    PAGE_EXECUTE_READ,
    PAGE_EXECUTE_READWRITE,
    PAGE_EXECUTE_WRITECOPY,
    PAGE_GUARD,
    PAGE_NOACCESS,
    PAGE_NOCACHE,
    PAGE_READONLY,
    PAGE_READWRITE,
    PAGE_WRITECOMBINE,
    PAGE_WRITECOPY,
    STILL_ACTIVE,
    MemoryRegion,
    ProcessEntry,
    Win32Api,
    Win32Error,
    decode_mbi,
    filetime_to_epoch,
    opened,
)
from vmatlas.model import (
    Host,
    OperatingSystem,
    Process,
    ProcessSummary,
    Protection,
    RegionState,
    RegionTable,
    RegionType,
    Snapshot,
    SnapshotView,
)
from vmatlas.summary import summarize_process

R, W, X = Protection.READ, Protection.WRITE, Protection.EXECUTE
COW = Protection.COPY_ON_WRITE
_ACCESS = {
    0: Protection.NONE,  # reserved and free regions carry no protection
    PAGE_NOACCESS: Protection.NONE,
    PAGE_READONLY: R,
    PAGE_READWRITE: R | W,
    PAGE_WRITECOPY: R | W | COW,
    PAGE_EXECUTE: X,
    PAGE_EXECUTE_READ: R | X,
    PAGE_EXECUTE_READWRITE: R | W | X,
    PAGE_EXECUTE_WRITECOPY: R | W | X | COW,
}
_MODIFIERS = (
    (PAGE_GUARD, Protection.GUARD),
    (PAGE_NOCACHE, Protection.NO_CACHE),
    (PAGE_WRITECOMBINE, Protection.WRITE_COMBINE),
)
_STATES = {
    MEM_FREE: RegionState.FREE,
    MEM_RESERVE: RegionState.RESERVED,
    MEM_COMMIT: RegionState.COMMITTED,
}
_TYPES = {
    MEM_IMAGE: RegionType.IMAGE,
    MEM_MAPPED: RegionType.MAPPED,
    MEM_PRIVATE: RegionType.PRIVATE,
}
# A 32-bit process's own range, as GetSystemInfo reports it to the process (highest
# address + 1): its 2 GiB, or 4 GiB when large-address-aware, less the 64 KiB no-access
# regions at either end. A 64-bit reader's walk can go past the top (WOW64's own
# reservations, 64-bit modules), which is not the process's to allocate.
_WOW64_ADDRESS_MIN = 0x10000
_WOW64_ADDRESS_MAX = 0x7FFF0000
_WOW64_LARGE_ADDRESS_MAX = 0xFFFF0000
_IMAGE_FILE_LARGE_ADDRESS_AWARE = 0x0020


def decode_protection(raw: int, region_type: int) -> Protection:
    """A PAGE_* value -> Protection bits. Image and mapped views are SHARED unless they
    are a copy-on-write form (PAGE_WRITECOPY, PAGE_EXECUTE_WRITECOPY)."""
    bits = _ACCESS.get(raw & 0xFF, Protection.NONE)
    for flag, bit in _MODIFIERS:
        if raw & flag:
            bits |= bit
    if region_type in (MEM_IMAGE, MEM_MAPPED) and raw and not bits & COW:
        bits |= Protection.SHARED
    return bits


def dos_path(name: str, dos_devices: dict[str, str]) -> str:
    """An NT path (``\\Device\\HarddiskVolume3\\x``, ``\\??\\C:\\x``) -> ``C:\\x``."""
    if name.startswith(("\\??\\", "\\\\?\\")):
        return name[4:]
    folded = name.casefold()
    for drive, device in dos_devices.items():
        prefix = device.casefold().rstrip("\\") + "\\"
        if folded.startswith(prefix):
            return drive + name[len(prefix) - 1 :]
    return name


def _large_address_aware(path: str) -> bool:
    """The IMAGE_FILE_LARGE_ADDRESS_AWARE bit of a PE file's header."""
    try:
        with open(path, "rb") as f:
            header = f.read(4096)
    except OSError:
        return False
    if header[:2] != b"MZ" or len(header) < 64:
        return False
    pe = int.from_bytes(header[60:64], "little")
    if header[pe : pe + 4] != b"PE\0\0" or len(header) < pe + 24:
        return False
    characteristics = int.from_bytes(header[pe + 22 : pe + 24], "little")
    return bool(characteristics & _IMAGE_FILE_LARGE_ADDRESS_AWARE)


class WindowsReader:
    """Reads processes through a Win32 API object into the model."""

    os = OperatingSystem.WINDOWS

    def __init__(
        self,
        api: Win32Api,
        host_id: str | None = None,
        *,
        os_version: str | None = None,
        kernel_version: str | None = None,
        view: SnapshotView = SnapshotView.NATIVE,
    ):
        self.api = api
        self._host_id = host_id
        self._os_version = os_version if os_version is not None else platform.platform()
        self._kernel_version = kernel_version if kernel_version is not None else platform.version()
        self._view = view
        self._host: Host | None = None

    # -- host -------------------------------------------------------------------------

    def host(self) -> Host:
        if self._host is None:
            info = self.api.get_system_info()
            hostname = socket.gethostname()
            self._host = Host(
                host_id=self._host_id or hostname,
                hostname=hostname,
                os=OperatingSystem.WINDOWS,
                os_version=self._os_version,
                kernel_version=self._kernel_version,
                page_size_bytes=info.page_size_bytes,
                allocation_granularity_bytes=info.allocation_granularity_bytes,
                user_address_min=info.minimum_application_address,
                user_address_max=info.maximum_application_address + 1,
                max_map_count=0,
                overcommit_mode=-1,
                cpu_count=info.processor_count,
                memory_total_bytes=psutil.virtual_memory().total,
            )
        return self._host

    # -- processes ----------------------------------------------------------------------

    def _entries(self) -> dict[int, ProcessEntry]:
        return {entry.pid: entry for entry in self.api.process_entries()}

    def pids(self) -> list[int]:
        return sorted(self._entries())

    def process(self, pid: int) -> Process:
        """Identity of ``pid``: NoSuchProcess when it does not exist. A process this
        reader may not open is still named (from the process list)."""
        entry = self._entries().get(pid)
        if entry is None:
            raise errors.NoSuchProcess(pid=pid)
        try:
            with opened(self.api, pid) as handle:
                return self._identify(pid, handle, entry)
        except errors.AccessDenied:
            host = self.host()
            return Process(
                pid=pid,
                parent_pid=entry.parent_pid,
                name=entry.exe_file,
                user_address_min=host.user_address_min,
                user_address_max=host.user_address_max,
            )

    def _identify(self, pid: int, handle: int, entry: ProcessEntry | None) -> Process:
        host = self.host()
        try:
            executable = self.api.query_full_process_image_name(handle)
        except Win32Error:
            executable = ""
        try:
            start_time = filetime_to_epoch(self.api.get_process_creation_time(handle))
        except Win32Error:
            start_time = 0.0
        low, high, bits = host.user_address_min, host.user_address_max, 64
        if self.api.is_wow64_process(handle):
            bits, low = 32, _WOW64_ADDRESS_MIN
            large = executable and _large_address_aware(self.api.local_path(executable))
            high = _WOW64_LARGE_ADDRESS_MAX if large else _WOW64_ADDRESS_MAX
        name = entry.exe_file if entry else executable.rsplit("\\", 1)[-1]
        return Process(
            pid=pid,
            parent_pid=entry.parent_pid if entry else 0,
            name=name,
            executable=executable,
            start_time=start_time,
            pointer_bits=bits,
            user_address_min=low,
            user_address_max=high,
        )

    def _raise_for(self, exc: Win32Error, pid: int, handle: int, name: str) -> None:
        if self._exited(handle):
            raise errors.NoSuchProcess(pid=pid, name=name) from None
        if exc.winerror == ERROR_ACCESS_DENIED:
            raise errors.AccessDenied(
                f"access denied reading pid {pid} ({name})", pid=pid, name=name
            ) from None
        raise errors.Error(f"reading pid {pid} ({name}): {exc}", pid=pid, name=name) from exc

    def _exited(self, handle: int) -> bool:
        try:
            return self.api.get_exit_code_process(handle) != STILL_ACTIVE
        except Win32Error:
            return True

    def _walk(self, pid: int, handle: int, process: Process) -> RegionTable:
        """Every region of ``process``'s user range, FREE ones included."""
        low, high = process.user_address_min, process.user_address_max
        try:
            records = self.api.virtual_query_walk(handle, low, high)
            if self._exited(handle):
                raise errors.NoSuchProcess(pid=pid, name=process.name)
            regions = [decode_mbi(raw) for raw in records]
            paths = self._paths(handle, regions)
        except Win32Error as exc:
            self._raise_for(exc, pid, handle, process.name)
            raise  # unreachable: _raise_for always raises
        if not regions:
            # A live process always has its image mapped: an empty walk means it went.
            raise errors.NoSuchProcess(pid=pid, name=process.name)
        return _table(regions, paths, low, high)

    def _paths(self, handle: int, regions: list[MemoryRegion]) -> dict[int, str]:
        """Allocation base -> file, for image and mapped views (one lookup per view)."""
        paths: dict[int, str] = {}
        devices: dict[str, str] | None = None
        for region in regions:
            base = region.allocation_base
            if region.type not in (MEM_IMAGE, MEM_MAPPED) or base in paths:
                continue
            name = self.api.get_mapped_file_name(handle, region.base_address)
            if name and not name.startswith("\\??\\"):
                devices = self.api.dos_devices() if devices is None else devices
            paths[base] = dos_path(name, devices or {}) if name else ""
        return paths

    def regions(self, pid: int) -> tuple[Process, RegionTable]:
        """The identity and every region of ``pid``; NoSuchProcess or AccessDenied."""
        entry = self._entries().get(pid)
        with opened(self.api, pid) as handle:
            process = self._identify(pid, handle, entry)
            return process, self._walk(pid, handle, process)

    def snapshot(
        self, pid: int, *, include_free: bool = False, include_residency: bool = False
    ) -> Snapshot:
        """``pid``'s address space. Residency (working-set detail) is not read on
        Windows: ``include_residency`` is accepted and ignored."""
        host = self.host()
        process, table = self.regions(pid)
        capture_time = time.time()
        summary = summarize_process(table, host, process)
        if not include_free:
            table = table.without_free()
        return Snapshot(
            host=host,
            process=process,
            capture_time=capture_time,
            summary=summary,
            regions=table,
            view=self._view,
            includes_free=include_free,
            includes_residency=False,
        )

    def process_summary(self, pid: int, host: Host | None = None) -> ProcessSummary:
        host = host or self.host()
        process, table = self.regions(pid)
        return ProcessSummary(
            process=process,
            summary=summarize_process(table, host, process),
            capture_time=time.time(),
        )

    def process_summaries(self) -> Iterator[ProcessSummary | errors.Error]:
        """A summary of every process, or the error that stopped one being read."""
        return sweep(self)


def _table(regions: list[MemoryRegion], paths: dict[int, str], low: int, high: int) -> RegionTable:
    table = RegionTable()
    for region in regions:
        start = max(region.base_address, low)
        end = min(region.base_address + region.region_size, high)
        if end <= start:
            continue
        free = region.state == MEM_FREE
        table.start.append(start)
        table.end.append(end)
        table.state.append(int(_STATES.get(region.state, RegionState.UNSPECIFIED)))
        table.type.append(0 if free else int(_TYPES.get(region.type, RegionType.UNSPECIFIED)))
        table.protection.append(int(decode_protection(region.protect, region.type)))
        table.protection_raw.append(region.protect)
        table.kind.append(0)
        table.path.append("" if free else paths.get(region.allocation_base, ""))
        table.offset.append(0)
        table.device.append(0)
        table.inode.append(0)
        table.deleted.append(False)
        table.allocation_base.append(0 if free else region.allocation_base)
        table.allocation_protection.append(
            0 if free else int(decode_protection(region.allocation_protect, region.type))
        )
        table.allocation_protection_raw.append(0 if free else region.allocation_protect)
    return table
