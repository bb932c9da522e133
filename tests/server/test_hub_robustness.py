"""The hub and the server's life cycle when things go wrong, on real gRPC streams over
loopback and the real SQLite store: a registration the server cannot read or cannot
record, a store write that stalls, a port that is taken, and what the agents report
beyond their summaries."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from vmatlas import errors
from vmatlas.agents.linux import LinuxReader
from vmatlas.client import Client
from vmatlas.model import Host
from vmatlas.server.app import FleetServer, ServerConfig
from vmatlas.server.store.sqlite import DATABASE_NAME, SQLiteStore
from vmatlas.v1 import hub_pb2

from .conftest import RawAgent, Stream, wait_for


def test_registration_with_an_unknown_os_is_invalid_argument(
    server: FleetServer, reader: LinuxReader, stream: Callable[..., Stream]
) -> None:
    host = replace(reader.host(), host_id="future-os")
    failure = stream(server.address, host, os_value=7).failure()
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.details() == ("the registration's host.os (7) is not a known operating system")
    assert "future-os" not in server.hub.online()


class DiskFailsOnce(SQLiteStore):
    """The real store, whose first host record meets a failing disk."""

    failed = False

    def put_host(self, host: Host, now: float) -> None:
        if not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("disk I/O error")
        super().put_host(host, now)


def test_registration_the_store_cannot_record_is_undone(
    tmp_path: Path, reader: LinuxReader, stream: Callable[..., Stream]
) -> None:
    store = DiskFailsOnce(str(tmp_path / "data"))
    config = ServerConfig(listen="127.0.0.1:0", data_dir=str(tmp_path / "data"))
    server = FleetServer(config, store=store).start()
    try:
        host = replace(reader.host(), host_id="unlucky")
        failure = stream(server.address, host).failure()
        assert failure.code() == grpc.StatusCode.INTERNAL
        assert failure.details() == "internal error registering the agent"
        assert "unlucky" not in server.hub.online()
        # Nothing holds the host id: another agent may take it at once.
        good = stream(server.address, host)
        assert good.next().HasField("registered")
        assert server.hub.online() == ["unlucky"]
        with Client(server.address) as client:
            assert [(h.host_id, h.online) for h in client.hosts()] == [("unlucky", True)]
    finally:
        server.stop(0.5)
        store.close()


def test_a_host_figure_no_store_column_holds_is_invalid_argument(
    server: FleetServer, reader: LinuxReader, stream: Callable[..., Stream]
) -> None:
    # A uint64 on the wire, but beyond a signed 64-bit column (and beyond any kernel).
    failure = stream(server.address, replace(reader.host(), max_map_count=1 << 63)).failure()
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_map_count" in failure.details()


def test_a_stalled_store_write_blocks_no_hub_lookup(
    server: FleetServer, raw_agent: Callable[..., RawAgent]
) -> None:
    agent = raw_agent(server.address, "beating")
    wait_for(lambda: server.hub.online() == ["beating"], what="the agent online")
    # Another connection holds SQLite's write lock: the heartbeat's last-seen record
    # (and the silence check's offline record after it) wait for it.
    other = sqlite3.connect(os.path.join(server.config.data_dir, DATABASE_NAME))
    other.isolation_level = None
    other.execute("BEGIN IMMEDIATE")
    try:
        # Heartbeats arrive and are answered meanwhile, and renewals fall due.
        acks = agent.heartbeat_acks()
        wait_for(lambda: agent.heartbeat_acks() >= acks + 3, what="heartbeats answered")
        answers: queue.Queue[list[str]] = queue.Queue()
        threading.Thread(target=lambda: answers.put(server.hub.online()), daemon=True).start()
        online = answers.get(timeout=5.0)
        # Store reads go on beside the stalled write too.
        with Client(server.address, timeout=5.0) as client:
            hosts = client.hosts()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert online == ["beating"]
    assert [h.host_id for h in hosts] == ["beating"]


def test_a_taken_port_leaves_nothing_open(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    data = tmp_path / "data"
    try:
        # grpc raises RuntimeError for a port it cannot bind.
        with pytest.raises((errors.Unavailable, RuntimeError)):
            FleetServer(
                ServerConfig(listen=f"127.0.0.1:{taken.getsockname()[1]}", data_dir=str(data))
            )
    finally:
        taken.close()
    assert not [t for t in threading.enumerate() if t.name == "vmatlas-hub"]
    assert not [f for f in _open_files() if f.startswith(str(data))]


def _open_files() -> list[str]:
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        # The listing's own descriptor is closed by now.
        with contextlib.suppress(FileNotFoundError):
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
    return paths


def test_stop_marks_the_hosts_offline_and_closes_the_store_once(
    make_server: Callable[..., FleetServer], raw_agent: Callable[..., RawAgent]
) -> None:
    server = make_server()
    raw_agent(server.address, "leaving")
    wait_for(lambda: server.hub.online() == ["leaving"], what="the agent online")
    server.stop(0.5)
    server.stop(0.5)  # a second stop does nothing
    with pytest.raises(errors.FailedPrecondition):
        server.store.hosts()
    store = SQLiteStore(server.config.data_dir, read_only=True)
    try:
        assert [(h.host_id, h.online) for h in store.hosts()] == [("leaving", False)]
    finally:
        store.close()


def _push(sequence: int, *, complete: bool, denied: int) -> hub_pb2.ConnectRequest:
    message = hub_pb2.ConnectRequest()
    message.summaries.complete = complete
    message.summaries.access_denied_count = denied
    message.summaries.sequence = sequence
    return message


def test_unreadable_processes_reach_the_fleet_calls(
    server: FleetServer,
    client: Client,
    reader: LinuxReader,
    stream: Callable[..., Stream],
) -> None:
    agent = stream(server.address, replace(reader.host(), host_id="guarded"))
    assert agent.next().HasField("registered")

    def pushed(message: hub_pb2.ConnectRequest) -> None:
        agent.outbox.put(message)
        while not agent.next().HasField("summaries_ack"):
            pass

    pushed(_push(1, complete=True, denied=3))
    assert client.processes(host="guarded").access_denied_count == 3
    assert [h.access_denied_count for h in client.hosts()] == [3]
    # A partial push (processes whose region count jumped) says nothing about the rest.
    pushed(_push(2, complete=False, denied=0))
    assert client.processes(host="guarded").access_denied_count == 3
    pushed(_push(3, complete=True, denied=1))
    assert client.processes(host="guarded").access_denied_count == 1
