"""The parts of the Win32 seam that need no Wine: decoding and missing tools."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from vmatlas import errors
from vmatlas.agents.windows import reader as windows_reader
from vmatlas.agents.windows import win32, wine
from vmatlas.model import Protection

R, W, X = Protection.READ, Protection.WRITE, Protection.EXECUTE
SHARED, COW = Protection.SHARED, Protection.COPY_ON_WRITE


@pytest.mark.parametrize(
    ("raw", "bits"),
    [
        (0x00, Protection.NONE),
        (0x01, Protection.NONE),
        (0x02, R),
        (0x04, R | W),
        (0x08, R | W | COW),
        (0x10, X),
        (0x20, R | X),
        (0x40, R | W | X),
        (0x80, R | W | X | COW),
        (0x104, R | W | Protection.GUARD),
        (0x204, R | W | Protection.NO_CACHE),
        (0x404, R | W | Protection.WRITE_COMBINE),
        (0x302, R | Protection.GUARD | Protection.NO_CACHE),
    ],
)
def test_private_protection(raw: int, bits: Protection) -> None:
    assert windows_reader.decode_protection(raw, win32.MEM_PRIVATE) == bits


@pytest.mark.parametrize(
    ("raw", "bits"),
    [
        (0x02, R | SHARED),
        (0x04, R | W | SHARED),
        (0x08, R | W | COW),
        (0x20, R | X | SHARED),
        (0x80, R | W | X | COW),
        (0x00, Protection.NONE),
    ],
)
def test_view_protection(raw: int, bits: Protection) -> None:
    for region_type in (win32.MEM_MAPPED, win32.MEM_IMAGE):
        assert windows_reader.decode_protection(raw, region_type) == bits


def test_mbi_layout() -> None:
    raw = struct.pack("<QQIHxxQIIIxxxx", 0x10000, 0x20000, 0x4, 0, 0x3000, 0x1000, 0x104, 0x20000)
    assert win32.decode_mbi(raw) == win32.MemoryRegion(
        base_address=0x10000,
        allocation_base=0x20000,
        allocation_protect=0x4,
        region_size=0x3000,
        state=0x1000,
        protect=0x104,
        type=0x20000,
    )


def test_dos_paths() -> None:
    devices = {"C:": "\\Device\\HarddiskVolume3", "D:": "\\Device\\HarddiskVolume10"}
    assert (
        windows_reader.dos_path("\\Device\\HarddiskVolume3\\Windows\\x.dll", devices)
        == "C:\\Windows\\x.dll"
    )
    assert windows_reader.dos_path("\\Device\\HarddiskVolume10\\a", devices) == "D:\\a"
    assert windows_reader.dos_path("\\??\\C:\\windows\\a.nls", devices) == "C:\\windows\\a.nls"
    assert windows_reader.dos_path("\\Device\\Mup\\srv\\a", devices) == "\\Device\\Mup\\srv\\a"


def test_missing_compiler(tmp_path: Path) -> None:
    with pytest.raises(errors.FailedPrecondition, match="MinGW"):
        wine.build_helper(tmp_path, compiler="vmatlas-no-such-compiler")


def test_missing_wine(tmp_path: Path) -> None:
    with pytest.raises(errors.FailedPrecondition, match="Wine"):
        wine.WineApi(tmp_path, wine="vmatlas-no-such-wine", loaders=(), cache_dir=tmp_path)


def test_ctypes_api_imports_anywhere() -> None:
    from vmatlas.agents.windows import ctypes_win32

    assert ctypes_win32.CtypesApi.__name__ == "CtypesApi"
