"""32-bit (WOW64) programs: the large-address-aware bit that sets a 32-bit process's
range (2 GiB, or 4 GiB with it) is read from real i686 MinGW builds of the planter.

Running those programs needs Wine's 32-bit loader (Debian's wine32:i386), which this
suite does not yet require; the range itself is applied by the reader from this bit and
IsWow64Process."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vmatlas.agents.windows.reader import _large_address_aware
from vmatlas.agents.windows.wine import MINGW_GCC_32

from .conftest import require

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    if shutil.which(MINGW_GCC_32) is None:
        require(
            MINGW_GCC_32,
            "run `sudo tools/system-deps`; on Debian or Ubuntu: apt-get install gcc-mingw-w64-i686",
        )
    out = tmp_path_factory.mktemp("planter32")
    built = {}
    for large in (False, True):
        exe = out / f"planter32{'-laa' if large else ''}.exe"
        command = [MINGW_GCC_32, "-O1", "-municode", "-o", str(exe), str(HERE / "planter.c")]
        if large:
            command.append("-Wl,--large-address-aware")
        subprocess.run([*command, "-lpsapi"], check=True)
        built[large] = exe
    return built


def test_the_large_address_aware_bit_of_real_32_bit_builds(builds: dict[bool, Path]) -> None:
    assert _large_address_aware(str(builds[True])) is True
    assert _large_address_aware(str(builds[False])) is False
    # A 32-bit image, not a 64-bit one: its PE machine is i386.
    header = builds[True].read_bytes()[:4096]
    pe = int.from_bytes(header[60:64], "little")
    assert header[pe + 4 : pe + 6] == (0x14C).to_bytes(2, "little")


def test_not_a_pe_file(tmp_path: Path) -> None:
    text = tmp_path / "x.exe"
    text.write_bytes(b"MZ" + b"\0" * 100)
    assert _large_address_aware(str(text)) is False
    assert _large_address_aware(str(tmp_path / "missing.exe")) is False
