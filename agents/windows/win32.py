"""The narrow Win32 seam of the Windows reader, and the decoding both sides share.

:class:`Win32Api` is exactly the set of calls the reader makes. Two implementations:
:mod:`.ctypes_win32` calls kernel32 and psapi directly on Windows; :mod:`.wine` asks a
small Win32 program running under Wine to make the same calls. Both hand back what
Windows returned, uninterpreted (raw ``MEMORY_BASIC_INFORMATION`` bytes, raw
``PROCESSENTRY32W`` bytes, text, ``GetLastError`` values); the structures are decoded
here, once, by :func:`decode_mbi` and friends.
"""

from __future__ import annotations

import ctypes
import logging
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from vmatlas import errors

# OpenProcess rights. VirtualQueryEx and GetMappedFileNameW need QUERY_INFORMATION
# (which includes QUERY_LIMITED_INFORMATION, enough for every other call here).
PROCESS_QUERY_INFORMATION = 0x0400
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
PROCESS_ACCESS = PROCESS_QUERY_INFORMATION

# GetLastError values the reader acts on.
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_HANDLE = 6
ERROR_INVALID_PARAMETER = 87
ERROR_PARTIAL_COPY = 299
STILL_ACTIVE = 259

MEM_COMMIT = 0x1000
MEM_RESERVE = 0x2000
MEM_FREE = 0x10000
MEM_PRIVATE = 0x20000
MEM_MAPPED = 0x40000
MEM_IMAGE = 0x1000000

PAGE_NOACCESS = 0x01
PAGE_READONLY = 0x02
PAGE_READWRITE = 0x04
PAGE_WRITECOPY = 0x08
PAGE_EXECUTE = 0x10
PAGE_EXECUTE_READ = 0x20
PAGE_EXECUTE_READWRITE = 0x40
PAGE_EXECUTE_WRITECOPY = 0x80
PAGE_GUARD = 0x100
PAGE_NOCACHE = 0x200
PAGE_WRITECOMBINE = 0x400

# 100 ns FILETIME ticks between 1601-01-01 and 1970-01-01.
_FILETIME_EPOCH = 116444736000000000

log = logging.getLogger(__name__)


class Win32Error(OSError):
    """A failed Win32 call, carrying its ``GetLastError`` value (OSError only fills
    ``winerror`` on Windows; this works on both sides of the seam)."""

    def __init__(self, function: str, winerror: int):
        super().__init__(f"{function} failed: Windows error {winerror}")
        self.function = function
        self.winerror = winerror


class MemoryBasicInformation(ctypes.Structure):
    """``MEMORY_BASIC_INFORMATION`` as a 64-bit process sees it (48 bytes)."""

    _fields_ = [
        ("BaseAddress", ctypes.c_uint64),
        ("AllocationBase", ctypes.c_uint64),
        ("AllocationProtect", ctypes.c_uint32),
        ("PartitionId", ctypes.c_uint16),
        ("RegionSize", ctypes.c_uint64),
        ("State", ctypes.c_uint32),
        ("Protect", ctypes.c_uint32),
        ("Type", ctypes.c_uint32),
    ]


class SystemInfoStruct(ctypes.Structure):
    """``SYSTEM_INFO`` for a 64-bit process (48 bytes)."""

    _fields_ = [
        ("wProcessorArchitecture", ctypes.c_uint16),
        ("wReserved", ctypes.c_uint16),
        ("dwPageSize", ctypes.c_uint32),
        ("lpMinimumApplicationAddress", ctypes.c_uint64),
        ("lpMaximumApplicationAddress", ctypes.c_uint64),
        ("dwActiveProcessorMask", ctypes.c_uint64),
        ("dwNumberOfProcessors", ctypes.c_uint32),
        ("dwProcessorType", ctypes.c_uint32),
        ("dwAllocationGranularity", ctypes.c_uint32),
        ("wProcessorLevel", ctypes.c_uint16),
        ("wProcessorRevision", ctypes.c_uint16),
    ]


class ProcessEntry32W(ctypes.Structure):
    """``PROCESSENTRY32W`` for a 64-bit process (568 bytes)."""

    _fields_ = [
        ("dwSize", ctypes.c_uint32),
        ("cntUsage", ctypes.c_uint32),
        ("th32ProcessID", ctypes.c_uint32),
        ("th32DefaultHeapID", ctypes.c_uint64),
        ("th32ModuleID", ctypes.c_uint32),
        ("cntThreads", ctypes.c_uint32),
        ("th32ParentProcessID", ctypes.c_uint32),
        ("pcPriClassBase", ctypes.c_int32),
        ("dwFlags", ctypes.c_uint32),
        ("szExeFile", ctypes.c_wchar * 260),
    ]


assert ctypes.sizeof(MemoryBasicInformation) == 48
assert ctypes.sizeof(SystemInfoStruct) == 48
# c_wchar is 4 bytes on Linux: szExeFile is decoded from UTF-16 by hand there.
MBI_SIZE = 48
SYSTEM_INFO_SIZE = 48
PROCESSENTRY32W_SIZE = 568
_EXE_FILE_OFFSET = 44


@dataclass(frozen=True, slots=True)
class SystemInfo:
    page_size_bytes: int
    allocation_granularity_bytes: int
    minimum_application_address: int
    maximum_application_address: int
    processor_count: int


@dataclass(frozen=True, slots=True)
class MemoryRegion:
    """One decoded ``MEMORY_BASIC_INFORMATION`` record."""

    base_address: int
    allocation_base: int
    allocation_protect: int
    region_size: int
    state: int
    protect: int
    type: int


@dataclass(frozen=True, slots=True)
class ProcessEntry:
    pid: int
    parent_pid: int
    exe_file: str
    thread_count: int


def decode_mbi(raw: bytes) -> MemoryRegion:
    if len(raw) != MBI_SIZE:
        raise ValueError(f"MEMORY_BASIC_INFORMATION is {MBI_SIZE} bytes, got {len(raw)}")
    mbi = MemoryBasicInformation.from_buffer_copy(raw)
    return MemoryRegion(
        base_address=mbi.BaseAddress,
        allocation_base=mbi.AllocationBase,
        allocation_protect=mbi.AllocationProtect,
        region_size=mbi.RegionSize,
        state=mbi.State,
        protect=mbi.Protect,
        type=mbi.Type,
    )


def decode_system_info(raw: bytes) -> SystemInfo:
    info = SystemInfoStruct.from_buffer_copy(raw[:SYSTEM_INFO_SIZE])
    return SystemInfo(
        page_size_bytes=info.dwPageSize,
        allocation_granularity_bytes=info.dwAllocationGranularity,
        minimum_application_address=info.lpMinimumApplicationAddress,
        maximum_application_address=info.lpMaximumApplicationAddress,
        processor_count=info.dwNumberOfProcessors,
    )


def decode_process_entries(raw: bytes) -> list[ProcessEntry]:
    """Concatenated ``PROCESSENTRY32W`` records -> entries."""
    entries = []
    for offset in range(0, len(raw) - PROCESSENTRY32W_SIZE + 1, PROCESSENTRY32W_SIZE):
        _size, _usage, pid, _heap, _module, threads, ppid = struct.unpack_from(
            "<IIIQIII", raw, offset
        )
        name = raw[offset + _EXE_FILE_OFFSET : offset + PROCESSENTRY32W_SIZE]
        entries.append(
            ProcessEntry(
                pid=pid,
                parent_pid=ppid,
                exe_file=decode_wide(name),
                thread_count=threads,
            )
        )
    return entries


def decode_wide(raw: bytes) -> str:
    """UTF-16LE text up to its first NUL."""
    text = raw.decode("utf-16-le", "surrogatepass")
    end = text.find("\0")
    return text if end < 0 else text[:end]


def decode_multi_wide(raw: bytes) -> list[str]:
    """A ``REG_MULTI_SZ``-style UTF-16LE list (as QueryDosDeviceW returns)."""
    return [s for s in raw.decode("utf-16-le", "surrogatepass").split("\0") if s]


def filetime_to_epoch(ticks: int) -> float:
    return (ticks - _FILETIME_EPOCH) / 1e7 if ticks else 0.0


class Win32Api(Protocol):
    """Exactly the Win32 calls the reader makes. Failures raise :class:`Win32Error`,
    except :meth:`open_process`, which raises the vmatlas error for the pid."""

    def get_system_info(self) -> SystemInfo:
        """GetSystemInfo."""

    def process_entries(self) -> list[ProcessEntry]:
        """CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS) with Process32FirstW/NextW."""

    def open_process(self, pid: int) -> int:
        """OpenProcess(PROCESS_ACCESS); NoSuchProcess or AccessDenied."""

    def close_handle(self, handle: int) -> None:
        """CloseHandle."""

    def is_wow64_process(self, handle: int) -> bool:
        """IsWow64Process."""

    def virtual_query_ex(self, handle: int, address: int) -> bytes | None:
        """VirtualQueryEx: raw MEMORY_BASIC_INFORMATION, or None past the last region."""

    def virtual_query_walk(self, handle: int, start: int, end: int) -> list[bytes]:
        """VirtualQueryEx from ``start`` on, record after record, while below ``end``."""

    def get_mapped_file_name(self, handle: int, address: int) -> str:
        """GetMappedFileNameW (an NT device path); "" when nothing is mapped there."""

    def dos_devices(self) -> dict[str, str]:
        """Drive ("C:") -> its NT device (QueryDosDeviceW over GetLogicalDrives)."""

    def get_exit_code_process(self, handle: int) -> int:
        """GetExitCodeProcess; STILL_ACTIVE while the process runs."""

    def query_full_process_image_name(self, handle: int) -> str:
        """QueryFullProcessImageNameW (a Win32 path)."""

    def get_process_creation_time(self, handle: int) -> int:
        """GetProcessTimes' creation time, as FILETIME ticks."""

    def local_path(self, path: str) -> str:
        """A Win32 path as this Python process can open it."""


def open_error(pid: int, winerror: int) -> errors.Error:
    """The vmatlas error for a failed OpenProcess."""
    if winerror == ERROR_INVALID_PARAMETER:
        return errors.NoSuchProcess(pid=pid)
    if winerror == ERROR_ACCESS_DENIED:
        return errors.AccessDenied(f"access denied opening pid {pid}", pid=pid)
    return errors.Error(f"OpenProcess({pid}) failed: Windows error {winerror}", pid=pid)


@contextmanager
def opened(api: Win32Api, pid: int) -> Iterator[int]:
    """A process handle for the length of a ``with`` block. A failure to close it is
    logged, never raised over the error that ended the block."""
    handle = api.open_process(pid)
    try:
        yield handle
    finally:
        try:
            api.close_handle(handle)
        except (Win32Error, errors.Error) as exc:
            log.warning("closing the handle of pid %d failed: %s", pid, exc)


def walk_by_query(api: Win32Api, handle: int, start: int, end: int) -> list[bytes]:
    """:meth:`Win32Api.virtual_query_walk` by one VirtualQueryEx call per region."""
    records = []
    address = start
    while address < end:
        raw = api.virtual_query_ex(handle, address)
        if raw is None:
            break
        records.append(raw)
        mbi = decode_mbi(raw)
        following = mbi.base_address + mbi.region_size
        if following <= address:
            break
        address = following
    return records
