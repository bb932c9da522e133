"""Three server processes on one real PostgreSQL database, agents spread over them, and
a kill -9 of one: its agents come back through the other two, fresh snapshots of their
hosts work again, and no acknowledged push is lost (nor any stored twice), counted in
the database's rows before and after."""

from __future__ import annotations

import os
from collections.abc import Callable

import psycopg

from vmatlas.agents.uplink import Uplink
from vmatlas.client import Client

from .conftest import Child, start_replica, wait_for
from .test_faults import UNLIMITED, FewProcesses

AGENTS = 6


def summary_rows(url: str) -> dict[str, list[float]]:
    """Every stored summary's capture time, by host."""
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute(
            "SELECT p.host_id, s.capture_time FROM summaries s"
            " JOIN processes p ON p.id = s.process_id ORDER BY 1, 2"
        ).fetchall()
    stored: dict[str, list[float]] = {}
    for host_id, capture_time in rows:
        stored.setdefault(host_id, []).append(capture_time)
    return stored


def fresh_pid(address: str, host_id: str) -> int:
    """The pid of a fresh snapshot of this test's process on ``host_id``, asked of
    the server at ``address``; 0 when it fails."""
    try:
        with Client(address, timeout=10) as client:
            _, snapshot = client.host_snapshot(host_id, os.getpid(), fresh=True)
    except Exception:
        return 0
    return snapshot.process.pid


def test_kill_9_of_a_replica_loses_no_agent_and_no_acknowledged_push(
    make_postgres_url: Callable[[], str],
    children: list[Child],
    make_uplink: Callable[..., Uplink],
) -> None:
    url = make_postgres_url()
    replicas = [start_replica(children, url, *UNLIMITED) for _ in range(3)]
    addresses = [address for _, address in replicas]
    # Agent i tries replica i % 3 first: two agents on each.
    uplinks = {
        f"spread-{i}": make_uplink(
            addresses[i % 3 :] + addresses[: i % 3],
            f"spread-{i}",
            reader=FewProcesses(os.getpid()),
            interval_seconds=0.2,
            backoff_initial_seconds=0.05,
            backoff_max_seconds=0.5,
            buffer_pushes=100_000,
        )
        for i in range(AGENTS)
    }
    for host_id, uplink in uplinks.items():
        wait_for(lambda u=uplink: u.acked_sequence >= 3, 30, f"{host_id}'s pushes acknowledged")
    held = {host_id: uplink.target for host_id, uplink in uplinks.items()}
    assert sorted(held.values()) == sorted(addresses * 2)

    # Every acknowledged push is a row (one process a push): none missing before.
    acknowledged = {host_id: uplink.acked_sequence for host_id, uplink in uplinks.items()}
    before = summary_rows(url)
    for host_id, count in acknowledged.items():
        assert len(before[host_id]) >= count

    victim, victim_address = replicas[0]
    victim.kill()  # SIGKILL
    stranded = [h for h, address in held.items() if address == victim_address]
    survivors = addresses[1:]
    for host_id in stranded:
        uplink = uplinks[host_id]
        wait_for(lambda u=uplink: u.registrations >= 2, 30, f"{host_id} back")
        assert uplink.target in survivors
    # Fresh snapshots of every host work again through each surviving replica.
    for address in survivors:
        for host_id in uplinks:
            assert wait_for(lambda a=address, h=host_id: fresh_pid(a, h), 30) == os.getpid()
    with Client(survivors[0], timeout=10) as client:
        assert {h.host_id for h in client.hosts() if h.online} == set(uplinks)

    # Stopping delivers what is buffered; then each push made is one row, stored once,
    # and every row there before the kill is still there.
    for uplink in uplinks.values():
        uplink.stop()
        assert uplink.buffered() == 0 and uplink.dropped_pushes == 0
    after = summary_rows(url)
    for host_id, uplink in uplinks.items():
        assert len(after[host_id]) == len(set(after[host_id])) == uplink.pushes
        assert set(before[host_id]) <= set(after[host_id])
