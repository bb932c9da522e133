"""The agent as a Windows service, under Wine's service manager: installed, started
(the manager runs the agent, which registers with the server), stopped (it drains and
logs to its file), removed. Wine's manager is not Windows': what this proves is the
agent's side of the protocol, not how a real Windows host treats the service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from vmatlas.client import Client
from vmatlas.server.app import FleetServer, ServerConfig

from .planting import Planter
from .winpython import Installation, run_windows

pytestmark = pytest.mark.timeout(900)

NAME = "vmatlas-test-agent"
HOST_ID = "wine-service"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FleetServer]:
    config = ServerConfig(
        listen="127.0.0.1:0",
        data_dir=str(tmp_path / "server"),
        heartbeat_seconds=1.0,
        offline_after_seconds=30.0,
        agent_timeout_seconds=60.0,
    )
    server = FleetServer(config).start()
    yield server
    server.stop(1.0)


def test_install_start_stop_remove(
    winpython: Installation,
    wine: str,
    wine_env: dict[str, str],
    server: FleetServer,
    planter: Planter,
    tmp_path: Path,
) -> None:
    # The planter also keeps the prefix up: Wine ends its services (the agent with
    # them) once no other Windows program runs.
    env = winpython.env(wine_env)
    log_file = Path(wine_env["WINEPREFIX"], "drive_c", "vmatlas-service", "agent.log")

    def service(*args: str) -> str:
        command = [wine, str(winpython.python), "-m", "vmatlas", "agent", "service", *args]
        status, output = run_windows([*command, "--name", NAME], env, tmp_path)
        assert status == 0, output
        return output

    installed = service(
        "install",
        "--start",
        "demand",
        "--server",
        server.address,
        "--host-id",
        HOST_ID,
        "--listen",
        "127.0.0.1:0",
        "--log-file",
        "C:\\vmatlas-service\\agent.log",
    )
    try:
        assert f"service {NAME} installed:" in installed
        assert "agent service run" in installed and "--start" not in installed
        assert service("status").strip() == "stopped"

        service("start")
        with Client(server.address, timeout=30) as client:

            def planter_pushed() -> bool:
                if HOST_ID not in {h.host_id for h in client.hosts()}:
                    return False
                pids = {p.item.process.pid for p in client.fleet_processes(host=HOST_ID)}
                return planter.windows_pid in pids

            wait_for(planter_pushed, timeout=180, what="the service's agent to push")
        assert service("status").strip() == "running"

        service("stop")
        wait_for(lambda: service("status").strip() == "stopped", timeout=120, what="a stop")
        log = log_file.read_text()
        assert f"service {NAME} running" in log
        assert f"service {NAME}: stop requested" in log
        assert f"service {NAME} stopped (exit status 0)" in log
    finally:
        removed = service("remove")
    assert f"service {NAME} removed" in removed
    status, output = run_windows(
        [
            wine,
            str(winpython.python),
            "-m",
            "vmatlas",
            "agent",
            "service",
            "status",
            "--name",
            NAME,
        ],
        env,
        tmp_path,
    )
    assert status == 1 and f"no service '{NAME}'" in output, output


def test_run_by_hand_says_what_to_do_instead(
    winpython: Installation, wine: str, wine_env: dict[str, str], tmp_path: Path
) -> None:
    command = [wine, str(winpython.python), "-m", "vmatlas", "agent", "service", "run"]
    command += ["--log-file", "C:\\vmatlas-service\\by-hand.log"]
    status, _ = run_windows(command, winpython.env(wine_env), tmp_path)
    assert status == 1
    log = Path(wine_env["WINEPREFIX"], "drive_c", "vmatlas-service", "by-hand.log").read_text()
    assert "vmatlas agent service install" in log
