"""The agent's gRPC service answers for a Wine process with the same schema as for a
Linux one: the Windows view through the helper, the Linux view through /proc."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.windows.planting import Planter
from vmatlas.agents.linux import LinuxReader
from vmatlas.agents.service import SERVICE_NAME, AgentServicer, add_to_server
from vmatlas.agents.windows.wine import WineView
from vmatlas.client import Client
from vmatlas.grpcutil import build_server
from vmatlas.model import OperatingSystem, RegionState, SnapshotView


@pytest.fixture(scope="module")
def client(wine_env: dict[str, str]) -> Iterator[Client]:
    view = WineView(wine_env["WINEPREFIX"], cache_dir=wine_env["XDG_CACHE_HOME"])
    servicer = AgentServicer(LinuxReader(host_id="wine-host"), windows_view=view)
    server, port, _ = build_server(
        services=[(add_to_server, servicer, SERVICE_NAME)],
        address="127.0.0.1:0",
    )
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as c:
            yield c
    finally:
        server.stop(0)
        view.close()


def test_windows_and_linux_views_of_one_wine_process(client: Client, planter: Planter) -> None:
    linux_pid = planter.process.pid
    windows = client.snapshot(linux_pid, view=SnapshotView.WINDOWS, include_free=True)
    assert windows.view is SnapshotView.WINDOWS
    assert windows.host.os is OperatingSystem.WINDOWS
    assert windows.host.allocation_granularity_bytes == 65536
    assert windows.process.pid == planter.windows_pid
    assert windows.summary.allocation_count > 0
    states = {r.state for r in windows.regions}
    assert states == {RegionState.FREE, RegionState.RESERVED, RegionState.COMMITTED}
    assert any(r.allocation_base for r in windows.regions)

    native = client.snapshot(linux_pid)
    assert native.view is SnapshotView.NATIVE
    assert native.host.os is OperatingSystem.LINUX
    assert native.process.pid == linux_pid
    assert native.summary.allocation_count == 0
    assert native.summary.region_count > 0


def test_snapshot_command_shows_the_windows_view_locally(
    planter: Planter, wine_env: dict[str, str]
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmatlas",
            "snapshot",
            "--local",
            "--windows",
            str(planter.process.pid),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=wine_env,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["view"] == "windows"
    assert doc["host"]["os"] == "windows"
    assert doc["process"]["pid"] == planter.windows_pid
    reserved = [r for r in doc["regions"] if r["start"] == hex(planter.plants["reserved"])]
    assert [(r["state"], r["allocation_base"]) for r in reserved] == [
        ("reserved", hex(planter.plants["reserved"]))
    ]
