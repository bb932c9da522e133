"""The server, agents and ``vmatlas up`` as real processes: crash the server, kill an
agent, stop ``up`` with SIGINT."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from vmatlas import errors
from vmatlas.client import Client

from .conftest import OFFLINE_AFTER_SECONDS, Child, server_args, start, wait_for


def test_server_crash_and_agent_death(tmp_path: Path, children: list[Child]) -> None:
    data = tmp_path / "data"
    server = start(children, *server_args(data, 0))
    port = int(server.wait_line(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    target = f"127.0.0.1:{port}"
    agent = start(
        children,
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--server",
        target,
        "--host-id",
        "crashy",
        "--interval",
        "0.5",
    )
    agent.wait_line(r"connecting to server")
    pid = agent.proc.pid
    with Client(target, timeout=10) as client:
        wait_for(lambda: [h.host_id for h in client.hosts()] == ["crashy"], 20)
        wait_for(lambda: len(client.history(host="crashy", pid=pid).summaries) >= 2, 20)
        snapshot_id, snapshot = client.host_snapshot("crashy", pid)
        before = client.history(host="crashy", pid=pid).summaries

    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    server = start(children, *server_args(data, port))
    server.wait_line(r"listening on")

    with Client(target, timeout=10) as client:
        # Everything acknowledged before the crash is there.
        assert client.stored_snapshot(snapshot_id) == snapshot
        assert client.history(host="crashy", pid=pid).summaries[: len(before)] == before
        # The agent comes back by itself and carries on pushing.
        wait_for(lambda: client.hosts()[0].online, 20, "the agent back online")
        wait_for(
            lambda: len(client.history(host="crashy", pid=pid).summaries) > len(before) + 1,
            20,
            "pushes after the restart",
        )
        assert client.snapshot(pid, host="crashy").process.pid == pid

        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait()
        # Its connection closed with it: offline at once, not after the offline window.
        wait_for(
            lambda: not client.hosts()[0].online,
            OFFLINE_AFTER_SECONDS / 2,
            "the killed agent's host offline",
        )
        with pytest.raises(errors.Unavailable):
            client.snapshot(pid, host="crashy")
        assert len(client.history(host="crashy", pid=pid).summaries) > len(before)
        assert client.snapshot(pid, host="crashy", fresh=False).process.pid == pid


def test_up_serves_until_sigint(tmp_path: Path, children: list[Child]) -> None:
    up = start(
        children,
        "up",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "up"),
        "--refresh",
        "0.3",
        "--interval",
        "1",
    )
    target = up.wait_line(r"listening on (127\.0\.0\.1:\d+)").group(1)
    host_id = up.wait_line(r"local agent is host (\S+)").group(1)
    with Client(target, timeout=10) as client:
        wait_for(lambda: client.hosts() and client.hosts()[0].process_count > 0, 20)
        assert [h.host_id for h in client.hosts()] == [host_id]
        listed = client.processes(host=host_id)
        assert up.proc.pid in {p.process.pid for p in listed}
        assert client.snapshot(up.proc.pid, host=host_id).process.pid == up.proc.pid
        # The local agent's own service shares the port.
        assert client.host().host_id == host_id
    up.wait_line(r"closest to their map limit")
    up.proc.send_signal(signal.SIGINT)
    out, _ = up.proc.communicate(timeout=20)
    assert up.proc.returncode == 0, "".join(up.lines) + out
    assert "Traceback" not in out


def test_an_agent_refused_its_host_id_exits(tmp_path: Path, children: list[Child]) -> None:
    server = start(children, *server_args(tmp_path / "data", 0))
    target = "127.0.0.1:" + server.wait_line(r"listening on 127\.0\.0\.1:(\d+)").group(1)
    agent = ["agent", "--listen", "127.0.0.1:0", "--server", target, "--host-id", "twin"]
    first = start(children, *agent)
    with Client(target, timeout=10) as client:
        wait_for(lambda: [h.online for h in client.hosts()] == [True], 20, "the first agent")
    second = start(children, *agent)
    # A second agent claiming a live host id would otherwise serve locally and look
    # healthy while its host never reported.
    assert second.proc.wait(timeout=30) == 1
    assert first.proc.poll() is None
