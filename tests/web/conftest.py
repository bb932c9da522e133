"""Fixtures for the web view: a real fleet server with a real agent (the Linux reader,
pushing every second) and a planted child, and the web routes on a loopback HTTP port."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Planter, wait_for
from vmatlas.agents.linux import LinuxReader
from vmatlas.agents.uplink import Uplink
from vmatlas.security.tokens import Role, TokenStore, add_token
from vmatlas.server.app import FleetServer, ServerConfig
from vmatlas.server.http.listener import HttpConfig
from vmatlas.server.store import ProcessFilter

HOST_ID = "web-test-host"
PLANTED_REGIONS = 3000


@dataclass
class Fleet:
    server: FleetServer
    uplink: Uplink
    planter: Planter
    tokens: dict[str, str]
    token_file: Path | None

    @property
    def url(self) -> str:
        assert self.server.http_url is not None
        return self.server.http_url.rstrip("/")

    @property
    def pid(self) -> int:
        return self.planter.proc.pid


@dataclass
class Response:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str,
    *,
    method: str = "GET",
    token: str | None = None,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> Response:
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, method=method, headers=all_headers, data=data)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=30) as response:
            return Response(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.headers, exc.read())


def _start_fleet(data_dir: Path, planter: Planter, token_file: Path | None) -> Fleet:
    # A browser starting on two shared cores can stall the agent's heartbeats for
    # seconds: a wide offline window.
    config = ServerConfig(
        listen="127.0.0.1:0",
        data_dir=str(data_dir),
        heartbeat_seconds=2.0,
        offline_after_seconds=15.0,
        agent_timeout_seconds=10.0,
        retain_seconds=0.0,
        max_agents=8,
        http=HttpConfig(
            listen="127.0.0.1:0",
            tokens=TokenStore(token_file) if token_file is not None else None,
        ),
    )
    server = FleetServer(config).start()
    planter.grow(PLANTED_REGIONS)
    uplink = Uplink(
        LinuxReader(),
        server.address,
        host_id=HOST_ID,
        interval_seconds=1.0,
        backoff_max_seconds=0.5,
    ).start()
    pid = planter.proc.pid

    def planted_stored() -> bool:
        if not any(h.host_id == HOST_ID for h in server.store.hosts()):
            return False
        listed = server.store.processes(ProcessFilter(host_id=HOST_ID))
        return any(p.item.process.pid == pid for p in listed)

    wait_for(planted_stored, what="the planted process in the store")
    return Fleet(server, uplink, planter, {}, token_file)


def _stop(fleet: Fleet) -> None:
    fleet.uplink.stop()
    fleet.server.stop(0.5)


@pytest.fixture
def fleet(planter: Planter, tmp_path: Path) -> Iterator[Fleet]:
    """No tokens: loopback, everyone the anonymous admin."""
    f = _start_fleet(tmp_path / "data", planter, None)
    yield f
    _stop(f)


@pytest.fixture
def secured_fleet(planter: Planter, tmp_path: Path) -> Iterator[Fleet]:
    """Tokens for a viewer, an inspector and an admin."""
    token_file = tmp_path / "tokens.json"
    tokens = {role.name.lower(): add_token(token_file, role.name.lower(), role) for role in Role}
    f = _start_fleet(tmp_path / "data", planter, token_file)
    f.tokens = tokens
    yield f
    _stop(f)


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
)


def require_chromium() -> None:
    """Skip without Debian's chromium and chromium-driver, unless CI requires them."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if not missing:
        return
    message = f"missing {', '.join(missing)} (tools/system-deps installs chromium)"
    if os.environ.get("VMATLAS_REQUIRE_CHROMIUM"):
        pytest.fail(f"{message} (VMATLAS_REQUIRE_CHROMIUM is set)")
    pytest.skip(message)


def new_browser(user_data_dir: Path) -> Any:
    """Headless Debian Chromium through chromedriver, with a fresh profile and nothing
    fetched from the network (no driver or browser download either)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def chromium(tmp_path: Path) -> Iterator[Any]:
    """The body of a ``browser`` fixture: a fresh headless Chromium, quit after."""
    require_chromium()
    driver = new_browser(tmp_path / "chromium-profile")
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    yield from chromium(tmp_path)


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser tests save a screenshot of each page ($VMATLAS_ARTIFACT_DIR, or
    a temporary directory); printed at the end of the run."""
    root = os.environ.get("VMATLAS_ARTIFACT_DIR")
    path = Path(root) / "web-screenshots" if root else tmp_path_factory.mktemp("web-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    _SCREENSHOTS.append(path)
    return path


_SCREENSHOTS: list[Path] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for path in _SCREENSHOTS:
        shots = sorted(p.name for p in path.glob("*.png"))
        terminalreporter.write_line(f"web view screenshots ({len(shots)}): {path}")
