"""The Win32 seam on Windows: kernel32 and psapi through ctypes.

After GRR's ``windows/process.py``, with its mistakes fixed: ``use_last_error`` and
``ctypes.get_last_error()``, ``argtypes`` and ``restype`` on every function (a HANDLE
return, not an int that truncates on 64-bit), the least access right that works, and
handles closed by the caller's context manager (:func:`.win32.opened`).

Importing this module is safe anywhere; the DLLs are loaded when :class:`CtypesApi` is
built, which works on 64-bit Windows only.
"""

from __future__ import annotations

import ctypes
import sys
from ctypes import wintypes
from typing import Any

from vmatlas import errors
from vmatlas.agents.windows.win32 import (
    ERROR_INVALID_PARAMETER,
    MBI_SIZE,
    PROCESS_ACCESS,
    PROCESSENTRY32W_SIZE,
    SYSTEM_INFO_SIZE,
    MemoryBasicInformation,
    ProcessEntry,
    SystemInfo,
    SystemInfoStruct,
    Win32Error,
    decode_multi_wide,
    decode_process_entries,
    decode_system_info,
    open_error,
    walk_by_query,
)

TH32CS_SNAPPROCESS = 0x00000002
ERROR_NO_MORE_FILES = 18
INVALID_HANDLE_VALUE = ctypes.c_void_p(-1).value
_WIDE_CHARS = 32768


class _ProcessEntryBuffer(ctypes.Structure):
    """PROCESSENTRY32W as raw bytes, with its leading dwSize."""

    _fields_ = [("dwSize", ctypes.c_uint32), ("rest", ctypes.c_ubyte * (PROCESSENTRY32W_SIZE - 4))]


def _load(name: str) -> Any:
    if sys.platform == "win32":
        return ctypes.WinDLL(name, use_last_error=True)
    raise errors.FailedPrecondition("the ctypes Win32 API runs on Windows only")


def _last_error() -> int:
    if sys.platform == "win32":
        return ctypes.get_last_error()
    return 0


def _bind(dll: Any, name: str, restype: Any, *argtypes: Any) -> Any:
    function = getattr(dll, name)
    function.restype = restype
    function.argtypes = list(argtypes)
    return function


class CtypesApi:
    """:class:`~.win32.Win32Api` calling kernel32 and psapi in this process."""

    def __init__(self) -> None:
        if ctypes.sizeof(ctypes.c_void_p) != 8:
            raise errors.FailedPrecondition("the Windows reader needs 64-bit Python")
        kernel32 = _load("kernel32")
        psapi = _load("psapi")
        handle, dword, bool_ = wintypes.HANDLE, wintypes.DWORD, wintypes.BOOL
        self._GetSystemInfo = _bind(
            kernel32, "GetSystemInfo", None, ctypes.POINTER(SystemInfoStruct)
        )
        self._CreateToolhelp32Snapshot = _bind(
            kernel32, "CreateToolhelp32Snapshot", handle, dword, dword
        )
        self._Process32FirstW = _bind(
            kernel32, "Process32FirstW", bool_, handle, ctypes.POINTER(_ProcessEntryBuffer)
        )
        self._Process32NextW = _bind(
            kernel32, "Process32NextW", bool_, handle, ctypes.POINTER(_ProcessEntryBuffer)
        )
        self._OpenProcess = _bind(kernel32, "OpenProcess", handle, dword, bool_, dword)
        self._CloseHandle = _bind(kernel32, "CloseHandle", bool_, handle)
        self._IsWow64Process = _bind(
            kernel32, "IsWow64Process", bool_, handle, ctypes.POINTER(bool_)
        )
        self._VirtualQueryEx = _bind(
            kernel32,
            "VirtualQueryEx",
            ctypes.c_size_t,
            handle,
            wintypes.LPCVOID,
            ctypes.POINTER(MemoryBasicInformation),
            ctypes.c_size_t,
        )
        self._GetMappedFileNameW = _bind(
            psapi, "GetMappedFileNameW", dword, handle, wintypes.LPVOID, wintypes.LPWSTR, dword
        )
        self._QueryDosDeviceW = _bind(
            kernel32, "QueryDosDeviceW", dword, wintypes.LPCWSTR, wintypes.LPWSTR, dword
        )
        self._GetLogicalDrives = _bind(kernel32, "GetLogicalDrives", dword)
        self._GetExitCodeProcess = _bind(
            kernel32, "GetExitCodeProcess", bool_, handle, ctypes.POINTER(dword)
        )
        self._QueryFullProcessImageNameW = _bind(
            kernel32,
            "QueryFullProcessImageNameW",
            bool_,
            handle,
            dword,
            wintypes.LPWSTR,
            ctypes.POINTER(dword),
        )
        self._GetProcessTimes = _bind(
            kernel32,
            "GetProcessTimes",
            bool_,
            handle,
            ctypes.POINTER(wintypes.FILETIME),
            ctypes.POINTER(wintypes.FILETIME),
            ctypes.POINTER(wintypes.FILETIME),
            ctypes.POINTER(wintypes.FILETIME),
        )

    @staticmethod
    def _fail(function: str) -> Win32Error:
        return Win32Error(function, _last_error())

    def get_system_info(self) -> SystemInfo:
        info = SystemInfoStruct()
        self._GetSystemInfo(ctypes.byref(info))
        return decode_system_info(bytes(info)[:SYSTEM_INFO_SIZE])

    def process_entries(self) -> list[ProcessEntry]:
        snapshot = self._CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0)
        if snapshot is None or snapshot == INVALID_HANDLE_VALUE:
            raise self._fail("CreateToolhelp32Snapshot")
        try:
            raw = bytearray()
            entry = _ProcessEntryBuffer(dwSize=PROCESSENTRY32W_SIZE)
            call = "Process32FirstW"
            more = self._Process32FirstW(snapshot, ctypes.byref(entry))
            while more:
                raw += bytes(entry)
                entry.dwSize = PROCESSENTRY32W_SIZE
                call = "Process32NextW"
                more = self._Process32NextW(snapshot, ctypes.byref(entry))
            error = _last_error()
            if error != ERROR_NO_MORE_FILES:
                raise Win32Error(call, error)
        finally:
            self._CloseHandle(snapshot)
        return decode_process_entries(bytes(raw))

    def open_process(self, pid: int) -> int:
        handle = self._OpenProcess(PROCESS_ACCESS, False, pid)
        if not handle:
            raise open_error(pid, _last_error())
        return int(handle)

    def close_handle(self, handle: int) -> None:
        if not self._CloseHandle(handle):
            raise self._fail("CloseHandle")

    def is_wow64_process(self, handle: int) -> bool:
        result = wintypes.BOOL()
        if not self._IsWow64Process(handle, ctypes.byref(result)):
            raise self._fail("IsWow64Process")
        return bool(result.value)

    def virtual_query_ex(self, handle: int, address: int) -> bytes | None:
        mbi = MemoryBasicInformation()
        if not self._VirtualQueryEx(handle, address, ctypes.byref(mbi), MBI_SIZE):
            error = _last_error()
            if error == ERROR_INVALID_PARAMETER:
                return None
            raise Win32Error("VirtualQueryEx", error)
        return bytes(mbi)

    def virtual_query_walk(self, handle: int, start: int, end: int) -> list[bytes]:
        return walk_by_query(self, handle, start, end)

    def get_mapped_file_name(self, handle: int, address: int) -> str:
        buffer = ctypes.create_unicode_buffer(_WIDE_CHARS)
        length = self._GetMappedFileNameW(handle, address, buffer, _WIDE_CHARS)
        return buffer.value[:length] if length else ""

    def dos_devices(self) -> dict[str, str]:
        mask = self._GetLogicalDrives()
        devices = {}
        buffer = ctypes.create_unicode_buffer(_WIDE_CHARS)
        for i in range(26):
            if mask & (1 << i):
                drive = f"{chr(ord('A') + i)}:"
                length = self._QueryDosDeviceW(drive, buffer, _WIDE_CHARS)
                text = ctypes.wstring_at(buffer, length) if length else ""
                targets = decode_multi_wide(text.encode("utf-16-le"))
                if targets:
                    devices[drive] = targets[0]
        return devices

    def get_exit_code_process(self, handle: int) -> int:
        code = wintypes.DWORD()
        if not self._GetExitCodeProcess(handle, ctypes.byref(code)):
            raise self._fail("GetExitCodeProcess")
        return int(code.value)

    def query_full_process_image_name(self, handle: int) -> str:
        buffer = ctypes.create_unicode_buffer(_WIDE_CHARS)
        size = wintypes.DWORD(_WIDE_CHARS)
        if not self._QueryFullProcessImageNameW(handle, 0, buffer, ctypes.byref(size)):
            raise self._fail("QueryFullProcessImageNameW")
        return buffer.value[: size.value]

    def get_process_creation_time(self, handle: int) -> int:
        times = [wintypes.FILETIME() for _ in range(4)]
        if not self._GetProcessTimes(handle, *(ctypes.byref(t) for t in times)):
            raise self._fail("GetProcessTimes")
        creation = times[0]
        return (int(creation.dwHighDateTime) << 32) | int(creation.dwLowDateTime)

    def local_path(self, path: str) -> str:
        return path
