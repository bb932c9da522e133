"""The fleet server over real gRPC on loopback, with uplinks on the real Linux reader."""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vmatlas import errors
from vmatlas.agents.linux import LinuxReader
from vmatlas.agents.uplink import Uplink
from vmatlas.client import Client
from vmatlas.model import ProcessSummary
from vmatlas.server.app import FleetServer
from vmatlas.server.domain.hub import MAX_WAITING_SNAPSHOTS
from vmatlas.server.store.sqlite import DATABASE_NAME

from .conftest import RawAgent, wait_for


class OnePassReader(LinuxReader):
    """The real reader, but every process is read once and the summaries replayed:
    fifty hosts sharing one /proc would otherwise read it fifty times over."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._summaries: list[ProcessSummary | errors.Error] | None = None

    def process_summaries(self) -> Iterator[ProcessSummary | errors.Error]:
        with self._lock:
            if self._summaries is None:
                self._summaries = list(super().process_summaries())
        return iter(self._summaries)


def test_fifty_agents_all_listed_with_every_summary_stored(
    make_server: Callable[..., FleetServer],
    make_uplink: Callable[..., Uplink],
) -> None:
    server = make_server()
    shared = OnePassReader()
    host_ids = [f"host-{i:02d}" for i in range(50)]
    uplinks = {h: make_uplink(server.address, h, reader=shared) for h in host_ids}
    wait_for(lambda: all(u.pushes for u in uplinks.values()), 60, "every first push")
    with Client(server.address) as client:

        def stored_everything() -> bool:
            hosts = client.hosts()
            return [h.host_id for h in hosts] == host_ids and all(
                h.online and h.process_count == len(uplinks[h.host_id].last_push) for h in hosts
            )

        wait_for(stored_everything, 30, "every host and summary stored")
        for host_id, uplink in uplinks.items():
            pushed = {(p.process.pid, p.process.start_time): p for p in uplink.last_push}
            stored = client.fleet_processes(host=host_id, order="pid")
            assert {(p.item.process.pid, p.item.process.start_time) for p in stored} == set(pushed)
            for p in stored:
                assert p.host_id == host_id
                assert (
                    p.item.summary == pushed[p.item.process.pid, p.item.process.start_time].summary
                )
        everyone = client.fleet_processes()
        assert len(everyone) == sum(len(u.last_push) for u in uplinks.values())


def test_fresh_remote_snapshot_equals_direct_snapshot(
    server: FleetServer,
    client: Client,
    make_uplink: Callable[..., Uplink],
    reader: LinuxReader,
    planter: object,
) -> None:
    pid = planter.pid  # type: ignore[attr-defined]
    planter.grow(300)  # type: ignore[attr-defined]
    uplink = make_uplink(server.address, "solo")
    wait_for(uplink.connected.is_set, what="registration")
    snapshot_id, remote = client.host_snapshot("solo", pid)
    direct = reader.snapshot(pid)
    assert len(remote.regions) == len(direct.regions) > 300
    assert list(remote.regions) == list(direct.regions)
    assert remote.process == direct.process
    assert remote.summary == direct.summary
    assert remote.host.host_id == "solo"
    # Stored as answered: by id, as the latest, and the identical table only once.
    assert client.stored_snapshot(snapshot_id) == remote
    assert client.snapshot(pid, host="solo", fresh=False) == remote
    second_id, second = client.host_snapshot("solo", pid)
    assert second_id != snapshot_id and second.regions == remote.regions
    db = sqlite3.connect(Path(server.config.data_dir) / DATABASE_NAME)
    assert db.execute("SELECT count(*) FROM snapshots").fetchone() == (2,)
    assert db.execute("SELECT count(*) FROM region_tables").fetchone() == (1,)
    history = client.history(host="solo", pid=pid)
    assert [s.snapshot_id for s in history.snapshots] == [snapshot_id, second_id]


def test_jump_in_region_count_is_pushed_at_once(
    server: FleetServer,
    client: Client,
    make_uplink: Callable[..., Uplink],
    planter: object,
) -> None:
    pid = planter.pid  # type: ignore[attr-defined]
    uplink = make_uplink(server.address, "jumpy", poll_seconds=0.2, jump_regions=200)
    wait_for(uplink.connected.is_set, what="registration")

    def counts() -> list[int]:
        return [s.summary.map_count for s in client.history(host="jumpy", pid=pid).summaries]

    before = wait_for(counts, what="the first push")
    planter.grow(500)  # type: ignore[attr-defined]
    after = wait_for(lambda: counts()[len(before) :], what="a pushed jump")
    assert after[0] >= before[-1] + 500


def test_fresh_query_statuses(
    server: FleetServer,
    client: Client,
    make_uplink: Callable[..., Uplink],
    planter: object,
) -> None:
    uplink = make_uplink(server.address, "gone-soon")
    wait_for(uplink.connected.is_set, what="registration")
    with pytest.raises(errors.NotFound):
        client.snapshot(1, host="no-such-host")
    with pytest.raises(errors.NoSuchProcess) as exc:
        client.snapshot(2**22 + 7, host="gone-soon")
    assert exc.value.pid == 2**22 + 7
    with pytest.raises(errors.InvalidArgument):
        client.snapshot(0, host="gone-soon")
    with pytest.raises(errors.NotFound):
        client.snapshot(planter.pid, host="gone-soon", fresh=False)  # type: ignore[attr-defined]
    wait_for(lambda: client.history(host="gone-soon", pid=planter.pid).summaries)  # type: ignore[attr-defined]
    uplink.stop()
    wait_for(lambda: not client.hosts()[0].online, what="offline")
    with pytest.raises(errors.Unavailable):
        client.snapshot(planter.pid, host="gone-soon")  # type: ignore[attr-defined]
    # History outlives the agent.
    pushed = {p.process.pid for p in uplink.last_push}
    assert {p.item.process.pid for p in client.fleet_processes(host="gone-soon")} == pushed
    assert client.history(host="gone-soon", pid=planter.pid).summaries  # type: ignore[attr-defined]


def test_duplicate_host_id_is_refused(
    server: FleetServer,
    client: Client,
    make_uplink: Callable[..., Uplink],
    reader: LinuxReader,
) -> None:
    first = make_uplink(server.address, "taken")
    wait_for(first.connected.is_set, what="registration")
    second = Uplink(reader, server.address, host_id="taken")
    with pytest.raises(errors.AlreadyExists, match="taken"):
        second.run()
    assert first.connected.is_set()
    assert [(h.host_id, h.online) for h in client.hosts()] == [("taken", True)]


def snapshot_commands(agent: RawAgent) -> int:
    """Snapshot commands the server has sent the raw agent so far."""
    return sum(m.HasField("snapshot_command") for m in list(agent.received))


def test_hung_agent_times_out(
    make_server: Callable[..., FleetServer],
    raw_agent: Callable[..., RawAgent],
    planter: object,
) -> None:
    server = make_server(agent_timeout_seconds=1.0)
    hung = raw_agent(server.address, "hung")
    wait_for(lambda: hung.received, what="the hung agent's registration")
    with (
        Client(server.address, timeout=60) as c,
        pytest.raises(errors.DeadlineExceeded, match=r"'hung' did not answer within 1\.0 s"),
    ):
        c.snapshot(planter.pid, host="hung")  # type: ignore[attr-defined]
    assert snapshot_commands(hung) == 1


def test_hung_agent_does_not_block_other_hosts(
    make_server: Callable[..., FleetServer],
    make_uplink: Callable[..., Uplink],
    raw_agent: Callable[..., RawAgent],
    planter: object,
) -> None:
    # The agent timeout only bounds a hang: the hung agent's requests end when it
    # disconnects, after the healthy host has answered.
    server = make_server(agent_timeout_seconds=120.0)
    hung = raw_agent(server.address, "hung")
    healthy = make_uplink(server.address, "healthy")
    wait_for(healthy.connected.is_set, what="registration")
    wait_for(lambda: hung.received, what="the hung agent's registration")
    outcome: dict[int, object] = {}

    def ask_hung(k: int) -> None:
        with Client(server.address, timeout=180) as c:
            try:
                c.snapshot(planter.pid, host="hung")  # type: ignore[attr-defined]
            except errors.Error as exc:
                outcome[k] = exc

    threads = [threading.Thread(target=ask_hung, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: snapshot_commands(hung) == 3, what="three requests waiting on the hung agent")
    with Client(server.address) as c:
        assert c.snapshot(planter.pid, host="healthy").process.pid == planter.pid  # type: ignore[attr-defined]
    # Answered while all three still wait.
    assert not outcome and all(t.is_alive() for t in threads)
    hung.close()
    for t in threads:
        t.join(30)
    assert sorted(outcome) == [0, 1, 2]
    assert all(isinstance(e, errors.Unavailable) for e in outcome.values())


def test_silent_agent_goes_offline_after_missed_heartbeats(
    make_server: Callable[..., FleetServer],
    raw_agent: Callable[..., RawAgent],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vmatlas.server.domain.hub")
    # The window under test: ten heartbeats, so that a late heartbeat thread on a loaded
    # machine is not taken for silence (nor a late keepalive answer, given a third of it).
    heartbeat_seconds, offline_after_seconds = 0.5, 5.0
    server = make_server(
        heartbeat_seconds=heartbeat_seconds, offline_after_seconds=offline_after_seconds
    )
    before = time.monotonic()
    raw_agent(server.address, "quiet", heartbeat=False)
    beating = raw_agent(server.address, "beating", heartbeat_seconds=heartbeat_seconds)
    with Client(server.address, timeout=15.0) as client:
        wait_for(lambda: len(client.hosts()) == 2, what="both registered")
        # Logged once the store has it offline.
        wait_for(
            lambda: "host quiet offline" in caplog.text,
            4 * offline_after_seconds,
            "the silent host offline",
        )
        # Not before its window had passed (a lower bound, which load cannot break).
        assert time.monotonic() - before >= offline_after_seconds
        assert "host quiet offline: missed heartbeats" in caplog.text
        assert {h.host_id: h.online for h in client.hosts()} == {"beating": True, "quiet": False}
        # The beating host stays online for longer than a window after that: each
        # acknowledged heartbeat is at least a heartbeat interval after the one before.
        acks = beating.heartbeat_acks()
        beats = math.ceil(offline_after_seconds / heartbeat_seconds) + 2
        wait_for(
            lambda: beating.heartbeat_acks() >= acks + beats,
            4 * offline_after_seconds,
            "more heartbeats answered",
        )
        assert {h.host_id: h.online for h in client.hosts()}["beating"]
    assert "host beating offline" not in caplog.text


def test_a_hung_agent_ties_up_few_server_threads(
    make_server: Callable[..., FleetServer],
    make_uplink: Callable[..., Uplink],
    raw_agent: Callable[..., RawAgent],
    planter: object,
) -> None:
    # Two agents' streams and the 32 threads for queries: more callers asking the hung
    # host than that would, unbounded, leave no thread for anyone else. The agent
    # timeout only bounds a hang: the waiting requests end when the hung agent
    # disconnects, at the end.
    server = make_server(agent_timeout_seconds=120.0, max_agents=2)
    pid = planter.pid  # type: ignore[attr-defined]
    hung = raw_agent(server.address, "hung")
    healthy = make_uplink(server.address, "healthy")
    wait_for(healthy.connected.is_set, what="registration")
    wait_for(lambda: hung.received, what="the hung agent's registration")
    wait_for(lambda: healthy.acked_sequence, what="the healthy host's first push")
    outcomes: list[errors.Error] = []

    def ask_hung() -> None:
        with Client(server.address, timeout=180) as c:
            try:
                c.snapshot(pid, host="hung")
            except errors.Error as exc:
                outcomes.append(exc)

    threads = [threading.Thread(target=ask_hung) for _ in range(40)]
    for t in threads:
        t.start()
    refused = 40 - MAX_WAITING_SNAPSHOTS
    wait_for(lambda: len(outcomes) >= refused, 60, "the excess refused")
    wait_for(
        lambda: snapshot_commands(hung) >= MAX_WAITING_SNAPSHOTS,
        what="the admitted requests sent to the hung agent",
    )
    assert len(outcomes) == refused
    assert all(isinstance(e, errors.ResourceExhausted) for e in outcomes)
    assert snapshot_commands(hung) == MAX_WAITING_SNAPSHOTS
    # While the rest wait on the hung agent, every other query is answered.
    with Client(server.address, timeout=30) as c:
        assert c.snapshot(pid, host="healthy").process.pid == pid
        assert {h.host_id for h in c.hosts()} == {"hung", "healthy"}
        assert c.fleet_processes(host="healthy")
        assert c.history(host="healthy", pid=pid).summaries
    assert len(outcomes) == refused
    assert sum(t.is_alive() for t in threads) == MAX_WAITING_SNAPSHOTS
    hung.close()
    for t in threads:
        t.join(30)
    late = outcomes[refused:]
    assert len(late) == MAX_WAITING_SNAPSHOTS
    assert all(isinstance(e, errors.Unavailable) for e in late)
