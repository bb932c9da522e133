"""Fixtures for the web view: a real fleet server with a real agent (the Linux reader,
pushing every second) and a planted child, and the web routes on a loopback HTTP port."""

from __future__ import annotations

import json
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
