"""Faults against real processes on loopback: an agent that loses its server buffers
its pushes and delivers them once, in order; a server killed with SIGKILL keeps every
acknowledged snapshot and push and passes its integrity check; SIGTERM drains the
server and the agent, finishing what is in flight, and both exit 0."""

from __future__ import annotations

import itertools
import logging
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from vmatlas import errors, wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.agents.uplink import Uplink
from vmatlas.client import Client
from vmatlas.model import ProcessSummary, Snapshot
from vmatlas.server.app import FleetServer
from vmatlas.server.sqlite_store import SQLiteStore
from vmatlas.v1 import fleet_pb2, fleet_pb2_grpc, hub_pb2

from .conftest import PYTHON, Child, RawAgent, start, start_server, wait_for


class FewProcesses(LinuxReader):
    """The real reader over a few chosen pids: pushes every tenth of a second stay
    cheap."""

    def __init__(self, *pids: int):
        super().__init__()
        self.chosen = pids

    def process_summaries(self) -> Iterator[ProcessSummary | errors.Error]:
        host = self.host()
        for pid in self.chosen:
            try:
                yield self.process_summary(pid, host)
            except errors.Error as exc:
                yield exc


class FleetCalls:
    """The fleet calls this test makes, on a channel of its own (not shared through
    gRPC's process-wide subchannel pool, whose reconnect backoff outlasts a restart)."""

    def __init__(self, target: str):
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.stub = fleet_pb2_grpc.FleetServiceStub(self.channel)

    def __enter__(self) -> FleetCalls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()

    def fresh(self, host_id: str, pid: int) -> tuple[str, Snapshot]:
        request = fleet_pb2.GetHostSnapshotRequest(host_id=host_id, pid=pid, fresh=True)
        response = self.stub.GetHostSnapshot(request, timeout=5)
        return response.snapshot_id, wire.snapshot_from_bytes(response.snapshot)

    def stored(self, snapshot_id: str) -> Snapshot:
        request = fleet_pb2.GetStoredSnapshotRequest(snapshot_id=snapshot_id)
        response = self.stub.GetStoredSnapshot(request, timeout=10, wait_for_ready=True)
        return wire.snapshot_from_bytes(response.snapshot)

    def summaries(self, host_id: str, pid: int) -> int:
        request = fleet_pb2.ListProcessHistoryRequest(host_id=host_id, pid=pid)
        return len(self.stub.ListProcessHistory(request, timeout=10).summaries)


def reachable(client: Client) -> bool:
    """Whether the server answers yet (a restarted server's port refused connections
    a moment ago, and gRPC retries with backoff)."""
    try:
        client.hosts()
    except errors.Unavailable:
        return False
    return True


# The test's client calls many times a second; the default per-client limit is for
# people.
UNLIMITED = ("--rate-limit", "10000", "--rate-burst", "10000")


def check_store(data: Path) -> None:
    """``vmatlas server --check`` on the data directory passes."""
    done = subprocess.run(
        [*PYTHON, "server", "--check", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "consistent" in done.stdout


def test_agent_buffers_pushes_while_the_server_is_down(
    tmp_path: Path, children: list[Child], make_uplink: Callable[..., Uplink]
) -> None:
    data = tmp_path / "data"
    server, port = start_server(children, data)
    uplink = make_uplink(
        f"127.0.0.1:{port}",
        "buffered",
        reader=FewProcesses(os.getpid()),
        interval_seconds=0.1,
        buffer_pushes=5,
        backoff_max_seconds=0.3,
    )
    wait_for(lambda: uplink.acked_sequence >= 3, 20, "pushes acknowledged")
    server.kill()
    # Offline for a while: the buffer fills, then the oldest pushes go.
    wait_for(lambda: uplink.dropped_pushes >= 8, 20, "a full buffer dropping pushes")
    assert uplink.buffered() == 5
    server, _ = start_server(children, data, port)
    wait_for(lambda: uplink.acked_sequence > uplink.pushes - 2, 20, "the buffer delivered")
    uplink.stop()  # delivers the rest, then closes its stream
    assert uplink.buffered() == 0
    assert uplink.acked_sequence == uplink.pushes

    with Client(f"127.0.0.1:{port}", timeout=10) as client:
        wait_for(lambda: reachable(client), 20, "the restarted server")
        stored = client.history(host="buffered", pid=os.getpid()).summaries
        (status,) = client.hosts()
    times = [s.capture_time for s in stored]
    # Every push not dropped is stored exactly once, and in the order it was made.
    assert len(times) == uplink.pushes - uplink.dropped_pushes
    assert times == sorted(set(times))
    # The drop is reported and kept with the host.
    assert status.dropped_push_count == uplink.dropped_pushes >= 8
    # The gap the drop left is where the server was down, and no wider.
    gaps = [b - a for a, b in itertools.pairwise(times)]
    widest = max(gaps)
    assert widest >= uplink.dropped_pushes * 0.1
    assert sorted(gaps)[-2] < widest / 2


def test_kill_9_loses_nothing_acknowledged(
    tmp_path: Path,
    children: list[Child],
    make_uplink: Callable[..., Uplink],
    planter: object,
) -> None:
    data = tmp_path / "data"
    server, port = start_server(children, data, 0, *UNLIMITED)
    target = f"127.0.0.1:{port}"
    pid = planter.pid  # type: ignore[attr-defined]
    planter.grow(200)  # type: ignore[attr-defined]
    hosts = [f"pusher-{i}" for i in range(3)]
    uplinks = [
        make_uplink(
            target,
            host_id,
            reader=FewProcesses(os.getpid(), pid),
            interval_seconds=0.05,
            backoff_initial_seconds=0.05,
            backoff_max_seconds=0.2,
        )
        for host_id in hosts
    ]
    acknowledged: dict[str, Snapshot] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def ask(first: int) -> None:
        calls = FleetCalls(target)
        for n in range(first, 1_000_000):
            if stop.is_set():
                break
            try:
                snapshot_id, snapshot = calls.fresh(hosts[n % len(hosts)], pid)
            except grpc.RpcError:
                # The server is down or the agent not back yet: a new channel, so as
                # to try again at once.
                calls.channel.close()
                time.sleep(0.05)
                calls = FleetCalls(target)
                continue
            with lock:
                assert snapshot_id not in acknowledged
                acknowledged[snapshot_id] = snapshot
        calls.channel.close()

    askers = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for asker in askers:
        asker.start()
    rounds = random.Random(20261126)
    try:
        for _ in range(6):
            before = len(acknowledged)
            wait_for(lambda b=before: len(acknowledged) >= b + 3, 20, "snapshots acknowledged")
            time.sleep(rounds.uniform(0.0, 0.3))
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait()
            with lock:
                taken = dict(acknowledged)
            pushed = {u.host_id: u.acked_sequence for u in uplinks}
            check_store(data)
            server, _ = start_server(children, data, port, *UNLIMITED)
            with FleetCalls(target) as calls:
                for snapshot_id, snapshot in taken.items():
                    assert calls.stored(snapshot_id) == snapshot
                # Each acknowledged push carried one summary of this process.
                for host_id, sequence in pushed.items():
                    assert calls.summaries(str(host_id), os.getpid()) >= sequence
    finally:
        stop.set()
        for asker in askers:
            asker.join(10)
    assert all(u.dropped_pushes == 0 for u in uplinks)
    assert len(acknowledged) >= 18


def test_server_sigterm_finishes_a_fresh_snapshot_in_flight(
    tmp_path: Path,
    children: list[Child],
    raw_agent: Callable[..., RawAgent],
    reader: LinuxReader,
    planter: object,
) -> None:
    data = tmp_path / "data"
    server, port = start_server(children, data, 0, "--grace", "8")
    target = f"127.0.0.1:{port}"
    agent = raw_agent(target, "slow")
    wait_for(lambda: agent.received, what="registration")
    pid = planter.pid  # type: ignore[attr-defined]
    answer: dict[str, object] = {}

    def ask() -> None:
        with Client(target, timeout=20) as client:
            try:
                answer["snapshot"] = client.host_snapshot("slow", pid)
            except errors.Error as exc:
                answer["error"] = exc

    asker = threading.Thread(target=ask)
    asker.start()
    command = wait_for(
        lambda: next((m for m in agent.received if m.HasField("snapshot_command")), None),
        what="the snapshot command",
    ).snapshot_command
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # Draining: new calls are refused, the one in flight still waits for its agent.
    with Client(target, timeout=2) as client, pytest.raises(errors.Unavailable):
        client.hosts()
    assert asker.is_alive() and server.proc.poll() is None

    snapshot = reader.snapshot(pid)
    snapshot = replace(snapshot, host=replace(snapshot.host, host_id="slow"))
    result = hub_pb2.ConnectRequest()
    result.snapshot_result.request_id = command.request_id
    header, regions = wire.snapshot_parts(snapshot)
    result.snapshot_result.snapshot_header = header
    result.snapshot_result.regions = regions
    agent.outbox.put(result)
    asker.join(15)

    assert "error" not in answer, answer
    snapshot_id, received = answer["snapshot"]  # type: ignore[misc]
    assert received == snapshot
    out = server.finish(20)
    assert server.proc.returncode == 0, out
    assert "Traceback" not in out
    # Stored before the server exited, and the store closed clean.
    store = SQLiteStore(data, read_only=True)
    assert store.get_snapshot(snapshot_id)[0] == "slow"
    assert store.check() == []
    store.close()


def test_agent_sigterm_answers_a_snapshot_in_flight_and_closes_its_stream(
    make_server: Callable[..., FleetServer],
    children: list[Child],
    planter: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vmatlas.server.hub")
    server = make_server()
    pid = planter.pid  # type: ignore[attr-defined]
    planter.grow(60000)  # type: ignore[attr-defined]
    agent = start(
        children,
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--server",
        server.address,
        "--host-id",
        "leaving",
        "--interval",
        "0.2",
        "--grace",
        "8",
    )
    agent.wait_line(r"connecting to server")
    answer: dict[str, object] = {}

    def ask() -> None:
        with Client(server.address, timeout=20) as client:
            try:
                # Residency makes the agent read smaps: a while for 60K mappings.
                answer["snapshot"] = client.host_snapshot("leaving", pid, include_residency=True)
            except errors.Error as exc:
                answer["error"] = exc

    with Client(server.address, timeout=10) as client:
        wait_for(lambda: client.hosts() and client.hosts()[0].online, 20, "registration")
    asker = threading.Thread(target=ask)
    asker.start()
    session = server.hub.session("leaving")
    wait_for(lambda: session._pending, what="the command sent")
    time.sleep(0.15)  # on the loopback wire and taken up by the agent
    agent.proc.send_signal(signal.SIGTERM)
    asker.join(20)

    assert "error" not in answer, answer
    _, snapshot = answer["snapshot"]  # type: ignore[misc]
    assert snapshot.process.pid == pid and len(snapshot.regions) > 60000
    out = agent.finish(20)
    assert agent.proc.returncode == 0, out
    assert "Traceback" not in out and "never delivered" not in out
    # The agent ended its stream itself rather than breaking it.
    wait_for(lambda: not server.hub.online(), 5, "the host offline")
    assert "host leaving offline: agent disconnected" in caplog.text
