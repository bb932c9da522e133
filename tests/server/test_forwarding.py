"""Fresh snapshots through any replica: three servers on one PostgreSQL store, agents
spread over them, and every fresh snapshot of a planted process, asked of every
server, equal to the agent's own direct snapshot; history, audits and diffs the same
through every server (the link between servers over mutual TLS with replica
certificates is tested in tests/security/test_replica_link.py), and the reason given
when no server holds a host."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace

import psycopg
import pytest

from vmatlas import errors, wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.agents.uplink import Uplink
from vmatlas.client import Client
from vmatlas.security.tokens import Role
from vmatlas.server.app import FleetServer
from vmatlas.server.domain.fleet import Caller
from vmatlas.server.domain.hub import SnapshotRequest

from .conftest import wait_for

HOSTS = ("east", "west", "north")


def test_every_replica_answers_for_every_host_as_its_agent_would(
    postgres_url: str,
    make_server: Callable[..., FleetServer],
    make_uplink: Callable[..., Uplink],
    reader: LinuxReader,
    planter: object,
) -> None:
    pid = planter.pid  # type: ignore[attr-defined]
    planter.grow(200)  # type: ignore[attr-defined]
    replicas = [make_server(store_url=postgres_url) for _ in HOSTS]
    uplinks = [make_uplink(r.address, h) for r, h in zip(replicas, HOSTS, strict=True)]
    for uplink in uplinks:
        assert uplink.connected.wait(30)
    clients = [Client(r.address, timeout=30.0) for r in replicas]
    try:
        # Each replica holds its own agent's host, and every replica says so.
        for client in clients:
            held = {s.host_id: s.replica_id for s in client.hosts()}
            assert held == {h: r.replica.replica_id for h, r in zip(HOSTS, replicas, strict=True)}
        direct = reader.snapshot(pid)
        ids: dict[str, list[str]] = {h: [] for h in HOSTS}
        for host in HOSTS:
            for client in clients:
                snapshot_id, fresh = client.host_snapshot(host, pid)
                assert fresh.host.host_id == host
                assert len(fresh.regions) == len(direct.regions) > 200
                assert list(fresh.regions) == list(direct.regions)
                assert (fresh.process, fresh.summary) == (direct.process, direct.summary)
                ids[host].append(snapshot_id)
        for host in HOSTS:
            # One snapshot stored per request, by the holder; readable through any server.
            assert len(set(ids[host])) == len(replicas)
            histories = [c.history(host=host, pid=pid) for c in clients]
            assert all(h == histories[0] for h in histories)
            assert [s.snapshot_id for s in histories[0].snapshots] == ids[host]
            stored = [c.stored_snapshot(ids[host][0]) for c in clients]
            assert all(s == stored[0] for s in stored)
            assert list(stored[0].regions) == list(direct.regions)
        # A forwarded snapshot comes back as the holder's bytes, decoded only on demand.
        forwarded = replicas[1].queries.fresh_snapshot(
            "east", SnapshotRequest(pid), caller=Caller("test", Role.INSPECTOR)
        )
        assert forwarded.parsed_header is None and forwarded.decoded is None
        assert forwarded.header().process == direct.process
        assert list(wire.snapshot_from_bytes(forwarded.serialized()).regions) == list(
            direct.regions
        )
        # Diffs of what different replicas stored, and the audit, alike through each.
        planter.grow(50)  # type: ignore[attr-defined]
        _, later = clients[2].host_snapshot("east", pid)
        assert len(later.regions) >= len(direct.regions) + 50
        diffs = [c.diff(ids["east"][0], f"east:{pid}") for c in clients]
        assert all(d == diffs[0] for d in diffs)
        assert sum(d.region_delta for d in diffs[0].classes) >= 50
        audits = [replace(c.audit(), generated_at=0.0) for c in clients]
        assert all(a == audits[0] for a in audits)
        assert audits[0].host_count == len(HOSTS)
    finally:
        for client in clients:
            client.close()


def test_a_stale_record_sends_the_request_to_every_replica_then_unavailable(
    postgres_url: str,
    make_server: Callable[..., FleetServer],
    make_uplink: Callable[..., Uplink],
) -> None:
    # Heartbeats (and so lease renewals) a minute apart: a lease made stale by hand
    # stays stale for the test.
    a = make_server(store_url=postgres_url, heartbeat_seconds=60.0, offline_after_seconds=180.0)
    b = make_server(store_url=postgres_url)
    kept = make_uplink(a.address, "kept")
    leaving = make_uplink(a.address, "leaving")
    assert kept.connected.wait(30) and leaving.connected.wait(30)
    pid = os.getpid()
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("UPDATE leases SET expires_time = %s WHERE name = 'kept'", (time.time() - 30,))
    assert not a.store.host_owners()["kept"].live(time.time())
    with Client(b.address, timeout=30.0) as client:
        # b asks the servers the ownership records name, and a answers.
        _, fresh = client.host_snapshot("kept", pid)
        assert fresh.host.host_id == "kept"
        leaving.stop()
        wait_for(lambda: not a.store.host_owners()["leaving"].replica_id, 30, "the release")
        with pytest.raises(errors.Unavailable) as caught:
            client.host_snapshot("leaving", pid)
        assert "no server holds its agent's stream" in str(caught.value)
        assert "its agent disconnected" in str(caught.value)
        assert "asked 1 other server)" in str(caught.value)
        a.stop(0.5)
        with pytest.raises(errors.Unavailable) as caught:
            client.host_snapshot("kept", pid)
        assert "no server holds its agent's stream" in str(caught.value)
        with pytest.raises(errors.NotFound):
            client.host_snapshot("never-seen", pid)
