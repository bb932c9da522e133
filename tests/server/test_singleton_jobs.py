"""Singleton jobs across real server processes on one real PostgreSQL database: of two
servers exactly one holds (and runs) retention, offline marking and partition upkeep;
after a kill -9 of that one the other takes them over once the leases run out, drops
the old partitions, and shows the dead server's host offline."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psycopg

from tests.store.conftest import make_host, make_item, make_process
from vmatlas.agents.uplink import Uplink
from vmatlas.client import Client
from vmatlas.server.domain.jobs import OFFLINE, PARTITIONS, RETENTION
from vmatlas.server.store import open_store
from vmatlas.server.store.postgres import PostgresStore

from .conftest import Child, start_replica, wait_for
from .test_faults import FewProcesses

DAY = 86400.0
JOBS = (OFFLINE, PARTITIONS, RETENTION)


def job_holders(url: str) -> dict[str, tuple[str, int]]:
    """Each job's holder (its server's address) and lease epoch, for the live leases."""
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute(
            "SELECT name, holder, epoch FROM leases"
            " WHERE kind = 'job' AND holder <> '' AND expires_time > %s",
            (time.time(),),
        ).fetchall()
    return {name: (holder, epoch) for name, holder, epoch in rows}


def lease_expiry(url: str) -> float:
    """When the last of the job leases now taken runs out unless renewed."""
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute(
            "SELECT max(expires_time) FROM leases WHERE kind = 'job' AND holder <> ''"
        ).fetchone()
    assert row is not None and row[0] is not None
    return float(row[0])


def test_one_server_runs_the_jobs_and_another_takes_over_after_kill_9(
    make_postgres_url: Callable[[], str],
    children: list[Child],
    make_uplink: Callable[..., Uplink],
) -> None:
    url = make_postgres_url()
    today = int(time.time() // DAY)
    store = open_store(url)
    assert isinstance(store, PostgresStore)
    process = make_process(1)
    store.put_host(make_host("history"), time.time())
    store.mark_offline("history")
    for day in (today - 10, today - 9, today):
        store.put_summaries("history", [make_item(process, day * DAY + 60.0)], complete=False)
    first, first_address = start_replica(children, url, "--retain", "2d", verbose=True)
    second, second_address = start_replica(children, url, "--retain", "2d", verbose=True)
    servers = {first_address: first, second_address: second}

    # One server holds every job; retention dropped the old days' partitions.
    holders = wait_for(lambda: (h := job_holders(url)).keys() == set(JOBS) and h, 30, "leases")
    ((holder, epoch),) = set(holders.values())
    assert holder in servers and epoch == 1
    wait_for(lambda: store.backend.partition_days()[0] == today, 30, "old partitions dropped")
    assert {today + 1, today + 2} <= set(store.backend.partition_days())  # made ahead
    # Past the end of the leases it holds now, the same server still holds them all,
    # renewed, at the same epoch.
    expiry = lease_expiry(url)
    wait_for(lambda: time.time() > expiry, 30, "the leases' expiry")
    assert job_holders(url) == holders
    # A late push for an old day makes its partition again; retention will drop it.
    store.put_summaries("history", [make_item(process, (today - 8) * DAY)], complete=False)
    assert store.backend.partition_days()[0] == today - 8

    # An agent on the holder only.
    dead = servers.pop(holder)
    ((other_address, survivor),) = servers.items()
    uplink = make_uplink(holder, "stranded", reader=FewProcesses(os.getpid()))
    wait_for(uplink.connected.is_set, 20, "the agent registered")
    with Client(other_address, timeout=10) as client:
        assert {h.host.host_id: h.online for h in client.hosts()}["stranded"]

    dead.kill()  # SIGKILL: no lease given up
    taken = wait_for(
        lambda: (
            (h := job_holders(url)).keys() == set(JOBS) and h[RETENTION][0] == other_address and h
        ),
        30,
        "the survivor's leases",
    )
    assert set(taken.values()) == {(other_address, 2)}
    wait_for(lambda: store.backend.partition_days()[0] == today, 30, "the late partition dropped")
    with Client(other_address, timeout=10) as client:
        wait_for(
            lambda: not {h.host.host_id: h.online for h in client.hosts()}["stranded"],
            30,
            "the stranded host offline",
        )
    survivor.proc.terminate()
    out = survivor.finish()
    # The survivor began running the jobs only when it took them over.
    assert out.count("running job retention here") == 1
    assert "running job retention here (lease epoch 2)" in out
    assert "host stranded offline: its server went away" in out
    store.close()
