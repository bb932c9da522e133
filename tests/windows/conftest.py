"""One Wine prefix per test session, one helper in it, and the planter program.

The tests skip when Wine or MinGW-w64 is missing, unless VMATLAS_REQUIRE_WINE is set
(CI sets it): then a missing tool is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmatlas.agents.windows.wine import MINGW_GCC, WINE, WineApi

from .planting import Planter, start_planter

HERE = Path(__file__).parent


def _require_tools() -> None:
    missing = [tool for tool in (WINE, MINGW_GCC) if shutil.which(tool) is None]
    if not missing:
        return
    message = f"missing {', '.join(missing)}"
    if os.environ.get("VMATLAS_REQUIRE_WINE"):
        pytest.fail(f"{message} (VMATLAS_REQUIRE_WINE is set)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def wine_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    _require_tools()
    prefix = tmp_path_factory.mktemp("wineprefix")
    env = dict(os.environ)
    env.update(
        WINEPREFIX=str(prefix),
        WINEDEBUG="-all",
        WINEDLLOVERRIDES="mscoree,mshtml=",
        XDG_CACHE_HOME=str(tmp_path_factory.mktemp("cache")),
    )
    return env


@pytest.fixture(scope="session")
def wine_api(wine_env: dict[str, str]) -> Iterator[WineApi]:
    """The session's helper; its start creates the prefix (the one slow Wine start)."""
    api = WineApi(wine_env["WINEPREFIX"], env=wine_env, cache_dir=wine_env["XDG_CACHE_HOME"])
    api.get_system_info()
    yield api
    api.close()
    subprocess.run(["wineserver", "-k"], env=wine_env, check=False, capture_output=True)


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
    planter_exe: Path,
    wine_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Planter]:
    view_file = tmp_path_factory.mktemp("view") / "view.bin"
    planted = start_planter(planter_exe, wine_env, view_file)
    yield planted
    planted.exit()


@pytest.fixture
def short_planter(
    wine_api: WineApi, planter_exe: Path, wine_env: dict[str, str], tmp_path: Path
) -> Iterator[Planter]:
    planted = start_planter(planter_exe, wine_env, tmp_path / "view.bin")
    yield planted
    if planted.process.poll() is None:
        planted.process.kill()
        planted.process.wait()
