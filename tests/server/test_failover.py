"""An agent given several servers, on loopback: it skips one that is down, moves to
another when the one it holds goes away, tries every record of a name, and delivers
its buffered pushes to whichever server it reaches."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from vmatlas.agents.uplink import Uplink
from vmatlas.client import Client
from vmatlas.server.app import FleetServer

from .conftest import Child, start, start_server, wait_for
from .test_faults import FewProcesses


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound for a moment, then released)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def online(target: str, host_id: str) -> bool:
    try:
        with Client(target, timeout=5) as client:
            return any(h.host.host_id == host_id and h.online for h in client.hosts())
    except Exception:
        return False


def test_an_agent_skips_a_server_that_is_down(
    make_server: Callable[..., FleetServer],
    make_uplink: Callable[..., Uplink],
    tmp_path: Path,
) -> None:
    server = make_server(data_dir=str(tmp_path / "live"))
    down = f"127.0.0.1:{free_port()}"
    uplink = make_uplink(
        [down, server.address],
        "two-addresses",
        reader=FewProcesses(os.getpid()),
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.2,
    )
    wait_for(uplink.connected.is_set, 20, "the agent registered")
    assert uplink.target == server.address
    assert server.hub.online() == ["two-addresses"]
    wait_for(lambda: uplink.acked_sequence >= 1, 20, "a push acknowledged")


def test_an_agent_moves_to_another_server_when_its_own_stops(
    make_server: Callable[..., FleetServer],
    make_uplink: Callable[..., Uplink],
    tmp_path: Path,
) -> None:
    first = make_server(data_dir=str(tmp_path / "first"))
    second = make_server(data_dir=str(tmp_path / "second"))
    uplink = make_uplink(
        [first.address, second.address],
        "mover",
        reader=FewProcesses(os.getpid()),
        interval_seconds=0.1,
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.2,
    )
    wait_for(lambda: first.hub.online() == ["mover"], 20, "the agent on the first server")
    assert second.hub.online() == []
    wait_for(lambda: uplink.acked_sequence >= 2, 20, "pushes acknowledged by the first")
    first.stop(0.5)
    wait_for(lambda: uplink.registrations == 2, 20, "the agent registered again")
    assert second.hub.online() == ["mover"]
    assert uplink.target == second.address
    # Pushing goes on through the second server, in sequence.
    moved_at = uplink.acked_sequence
    wait_for(lambda: uplink.acked_sequence >= moved_at + 3, 20, "pushes acknowledged again")
    with Client(second.address, timeout=10) as client:
        assert client.history(host="mover", pid=os.getpid()).summaries


def test_every_record_of_a_name_is_tried(
    make_server: Callable[..., FleetServer],
    make_uplink: Callable[..., Uplink],
    tmp_path: Path,
) -> None:
    # Two servers on one port of two loopback addresses: the two A records of one
    # name. (No name here has two records in the hosts file, so the resolver is given.)
    a = make_server(listen="127.0.0.1:0", data_dir=str(tmp_path / "a"))
    b = make_server(listen=f"127.0.0.2:{a.port}", data_dir=str(tmp_path / "b"))
    name = f"fleet.test:{a.port}"
    records = {name: [a.address, b.address]}
    uplink = make_uplink(
        name,
        "by-name",
        reader=FewProcesses(os.getpid()),
        resolve=lambda target: records[target],
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.2,
    )
    wait_for(uplink.connected.is_set, 20, "the agent registered")
    held, other = (a, b) if a.hub.online() else (b, a)
    assert held.hub.online() == ["by-name"]
    held.stop(0.5)
    wait_for(lambda: uplink.registrations == 2, 20, "the agent registered again")
    assert other.hub.online() == ["by-name"]
    assert uplink.target == other.address


def test_the_agent_command_takes_several_servers_and_survives_kill_9(
    tmp_path: Path, children: list[Child]
) -> None:
    down = f"127.0.0.1:{free_port()}"
    one, one_port = start_server(children, tmp_path / "one")
    two, two_port = start_server(children, tmp_path / "two")
    servers = {f"127.0.0.1:{one_port}": one, f"127.0.0.1:{two_port}": two}
    agent = start(
        children,
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--host-id",
        "replicated",
        "--interval",
        "1",
        "--server",
        ",".join([down, *servers]),
    )
    agent.wait_line(r"connecting to server " + ",".join([down, *servers]).replace(".", r"\."))
    held = wait_for(
        lambda: next((t for t in servers if online(t, "replicated")), None),
        30,
        "the agent on one of the servers",
    )
    servers.pop(held).kill()
    (other,) = servers
    wait_for(lambda: online(other, "replicated"), 30, "the agent on the other server")
    assert agent.proc.poll() is None
