"""Faults against real processes on loopback: an agent that loses its server buffers
its pushes and delivers them once, in order; a server killed with SIGKILL keeps every
acknowledged snapshot and push and passes its integrity check; SIGTERM drains the
server and the agent, finishing what is in flight, and both exit 0."""

from __future__ import annotations

import bisect
import logging
import os
import random
import re
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
from vmatlas.server.store.sqlite import SQLiteStore
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


def refused(target: str) -> bool:
    """Whether the server refuses a new client's call (it is draining, or gone). A new
    channel each time: a call on a connection the server is closing may be cancelled
    instead, or on a loaded machine outlast its deadline, and is tried again."""
    with FleetCalls(target) as calls:
        try:
            calls.stub.ListHosts(fleet_pb2.ListHostsRequest(), timeout=5)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                return False
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return True
    return False


def thread_reads(pid: int) -> dict[int, int]:
    """Bytes each thread of process ``pid`` has read so far (rchar), by thread id."""
    reads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/io") as f:
                reads[int(tid)] = int(f.read().split("rchar:")[1].split()[0])
        except (OSError, IndexError):
            continue  # the thread ended
    return reads


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


class RecordingReader(FewProcesses):
    """FewProcesses over one pid that records the capture time of every read, and
    that the test can park at the start of a read (the uplink then makes no push)."""

    def __init__(self, pid: int):
        super().__init__(pid)
        self.captured: list[float] = []
        self.hold = threading.Event()
        self.parked = threading.Event()
        self.released = threading.Event()

    def process_summaries(self) -> Iterator[ProcessSummary | errors.Error]:
        if self.hold.is_set():
            self.parked.set()
            self.released.wait(60)
        for item in super().process_summaries():
            if isinstance(item, ProcessSummary):
                self.captured.append(item.capture_time)
            yield item


DROPPED = re.compile(r"dropped push (\d+),")


def dropped_sequences(caplog: pytest.LogCaptureFixture) -> list[int]:
    """The sequence numbers of the pushes the uplink logged as dropped, in order."""
    return [
        int(match.group(1))
        for record in list(caplog.records)
        if record.name == "vmatlas.agents.uplink" and (match := DROPPED.search(record.getMessage()))
    ]


def push_of(capture_time: float, captured: list[float]) -> int:
    """The sequence number of the push whose summary was captured at
    ``capture_time``."""
    k = bisect.bisect_left(captured, capture_time - 1e-6)
    assert k < len(captured) and abs(captured[k] - capture_time) < 1e-6, (
        f"stored a summary captured at {capture_time}, which the uplink never pushed"
    )
    return k + 1


def test_agent_buffers_pushes_while_the_server_is_down(
    tmp_path: Path,
    children: list[Child],
    make_uplink: Callable[..., Uplink],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="vmatlas.agents.uplink")
    data = tmp_path / "data"
    server, port = start_server(children, data)
    reader = RecordingReader(os.getpid())
    # No polls between pushes: every read the reader records is one push, read k
    # being push k.
    uplink = make_uplink(
        f"127.0.0.1:{port}",
        "buffered",
        reader=reader,
        interval_seconds=0.1,
        poll_seconds=3600.0,
        buffer_pushes=5,
        backoff_max_seconds=0.3,
    )
    try:
        wait_for(lambda: uplink.acked_sequence >= 3, 20, "pushes acknowledged")
        server.kill()
        # Pushes up to here may have reached the old server; none after.
        made_before_kill = uplink.pushes
        wait_for(lambda: not uplink.connected.is_set(), 20, "the broken stream noticed")
        acked_before_kill = uplink.acked_sequence
        # Offline for a while: the buffer fills, then the oldest pushes go, among them
        # some made after the kill, which no server can have seen.
        wait_for(
            lambda: sum(d > made_before_kill for d in dropped_sequences(caplog)) >= 3,
            30,
            "a full buffer dropping pushes made while the server was down",
        )
        assert uplink.buffered() == 5
        dropped_while_down = dropped_sequences(caplog)
        server, _ = start_server(children, data, port)
        made_while_down = uplink.pushes
        wait_for(lambda: uplink.acked_sequence >= made_while_down, 30, "the buffer delivered")
        # Hold the uplink between pushes, so that none is being made while it stops.
        reader.hold.set()
        wait_for(reader.parked.is_set, 20, "the uplink between pushes")
        uplink.stop()  # delivers the rest, then closes its stream
        assert uplink.buffered() == 0
        assert uplink.acked_sequence == uplink.pushes
        made = uplink.pushes
        captured = reader.captured[:made]
    finally:
        reader.released.set()

    with Client(f"127.0.0.1:{port}", timeout=10) as client:
        stored = client.history(host="buffered", pid=os.getpid()).summaries
        (status,) = client.hosts()
    # Which push each stored summary came from, by its capture time (pushes are a
    # tenth of a second apart; the wire keeps nanoseconds).
    sequences = [push_of(s.capture_time, captured) for s in stored]
    # Stored once each, in the order made.
    assert sequences == sorted(set(sequences))
    dropped = dropped_sequences(caplog)
    # The drops are reported with the host, oldest first, and never an acknowledged
    # push.
    assert len(dropped) == uplink.dropped_pushes == status.dropped_push_count
    assert dropped == sorted(set(dropped))
    assert min(dropped) > acked_before_kill
    # Every push not dropped is stored; the pushes made and dropped while the server
    # was down are not. (A dropped push may have reached a server before its drop.)
    missing = set(range(1, made + 1)) - set(sequences)
    assert missing <= set(dropped)
    assert {d for d in dropped_while_down if d > made_before_kill} <= missing


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
            # Room for every push made while the server is down and restarting, however
            # long a loaded machine takes: a dropped push was never acknowledged, and
            # would leave fewer summaries than sequence numbers.
            buffer_pushes=100_000,
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
            assert all(u.dropped_pushes == 0 for u in uplinks)
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
    # The grace and the deadlines only bound a hang: the drain ends when the call in
    # flight is answered, and the waits for the drain below come out of its deadline.
    # The agent stays live for a minute unheard: on a loaded machine the hand-driven
    # stream's heartbeats (a Python thread) or keepalive answers may come late, and the
    # drain, not the liveness check, is what this tests.
    server, port = start_server(
        children, data, 0, "--grace", "60", "--agent-timeout", "60", "--offline-after", "60"
    )
    target = f"127.0.0.1:{port}"
    agent = raw_agent(target, "slow")
    wait_for(lambda: agent.received, what="registration")
    pid = planter.pid  # type: ignore[attr-defined]
    answer: dict[str, object] = {}

    def ask() -> None:
        with Client(target, timeout=60) as client:
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
    # Draining: new calls are refused, the one in flight still waits for its agent.
    wait_for(lambda: refused(target), 30, "new calls refused")
    assert asker.is_alive() and server.proc.poll() is None

    snapshot = reader.snapshot(pid)
    snapshot = replace(snapshot, host=replace(snapshot.host, host_id="slow"))
    result = hub_pb2.ConnectRequest()
    result.snapshot_result.request_id = command.request_id
    header, regions = wire.snapshot_parts(snapshot)
    result.snapshot_result.snapshot_header = header
    result.snapshot_result.regions = regions
    agent.outbox.put(result)
    asker.join(60)

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
    caplog.set_level(logging.INFO, logger="vmatlas.server.domain.hub")
    # An agent busy reading 60K mappings on a loaded machine may miss even the tests'
    # offline window: what is tested here is its own end of the stream.
    server = make_server(offline_after_seconds=60.0)
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
        # Only bounds a hang: the agent exits once the answer in hand is sent.
        "--grace",
        "60",
    )
    agent.wait_line(r"connecting to server")
    smaps_bytes = len(Path(f"/proc/{pid}/smaps").read_bytes())
    answer: dict[str, object] = {}

    def ask() -> None:
        with Client(server.address, timeout=60) as client:
            try:
                # Residency makes the agent read smaps: a while for 60K mappings.
                answer["snapshot"] = client.host_snapshot("leaving", pid, include_residency=True)
            except errors.Error as exc:
                answer["error"] = exc

    with Client(server.address, timeout=10) as client:
        wait_for(lambda: client.hosts() and client.hosts()[0].online, 20, "registration")
    # The agent takes a command up in a worker thread it starts for the first one; that
    # thread reading the planter's smaps (pushes read only maps, on another thread) is
    # the command in hand.
    threads_before = set(thread_reads(agent.proc.pid))

    def reading_smaps() -> bool:
        reads = thread_reads(agent.proc.pid)
        return any(n >= smaps_bytes // 4 for t, n in reads.items() if t not in threads_before)

    asker = threading.Thread(target=ask)
    asker.start()
    wait_for(reading_smaps, 30, "the agent reading the planter's smaps for the command")
    assert asker.is_alive(), "answered before the SIGTERM: nothing was in flight"
    agent.proc.send_signal(signal.SIGTERM)
    asker.join(60)

    assert "error" not in answer, answer
    _, snapshot = answer["snapshot"]  # type: ignore[misc]
    assert snapshot.process.pid == pid and len(snapshot.regions) > 60000
    out = agent.finish(60)
    assert agent.proc.returncode == 0, out
    assert "Traceback" not in out and "never delivered" not in out
    # The agent ended its stream itself rather than breaking it.
    wait_for(lambda: not server.hub.online(), 20, "the host offline")
    assert "host leaving offline: agent disconnected" in caplog.text
