"""Several servers on one PostgreSQL store: each host's agent stream is held by one
replica under a lease with an epoch; a takeover fences the stale stream, and a second
agent with the same host id is refused and told who holds it."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from dataclasses import replace

import grpc
import pytest

from tests.conftest import Planter
from vmatlas import errors
from vmatlas.agents.linux import LinuxReader
from vmatlas.agents.uplink import Uplink
from vmatlas.client import Client
from vmatlas.server.app import FleetServer, advertised_address

from .conftest import (
    HEARTBEAT_SECONDS,
    PYTHON,
    REPLICA_OFFLINE_AFTER_SECONDS,
    Child,
    RawAgent,
    start,
    wait_for,
)


def test_the_advertised_address_defaults_to_the_listening_one() -> None:
    assert advertised_address("", "127.0.0.1:0", 4321) == "127.0.0.1:4321"
    assert advertised_address("db-1.example:50550", "0.0.0.0:50550", 50550) == (
        "db-1.example:50550"
    )
    assert advertised_address("", "0.0.0.0:7000", 7000).endswith(":7000")
    assert not advertised_address("", "[::]:7000", 7000).startswith("[::]")
    assert advertised_address("", "[::1]:0", 7001) == "[::1]:7001"
    assert advertised_address("[fd00::1]:0", "127.0.0.1:0", 7002) == "[fd00::1]:7002"
    with pytest.raises(errors.InvalidArgument, match="HOST:PORT"):
        advertised_address("nowhere", "127.0.0.1:0", 1)


def test_two_agents_claiming_one_host_id_on_two_replicas_one_holds_it(
    postgres_url: str,
    make_server: Callable[..., FleetServer],
    make_uplink: Callable[..., Uplink],
) -> None:
    a = make_server(store_url=postgres_url)
    b = make_server(store_url=postgres_url)
    assert a.replica.replica_id != b.replica.replica_id
    first = make_uplink(a.address, "twin")
    assert first.connected.wait(30)
    second = make_uplink(b.address, "twin")
    wait_for(lambda: second.error is not None, 30, "the second agent refused")
    assert isinstance(second.error, errors.AlreadyExists)
    # Told why: which replica holds the host id for which agent instance.
    assert a.replica.replica_id in str(second.error)
    assert first.instance_id in str(second.error)
    owner = a.store.host_owners()["twin"]
    assert (owner.replica_id, owner.instance_id) == (a.replica.replica_id, first.instance_id)
    assert a.hub.online() == ["twin"] and b.hub.online() == []
    assert first.connected.is_set() and first.registrations == 1
    # Every replica shows which one holds the host.
    for server in (a, b):
        with Client(server.address) as client:
            [status] = client.hosts()
        assert (status.host_id, status.replica_id) == ("twin", a.replica.replica_id)


# Heartbeats this long renew no lease while a test runs: a stale stream that ends ended
# because the claiming replica said so.
SLOW_HEARTBEAT = {"heartbeat_seconds": 120.0, "offline_after_seconds": 0.0}


def assert_fenced(stale: RawAgent, host_id: str, holder: FleetServer) -> None:
    wait_for(lambda: stale.error is not None, 30, "the stale stream ended")
    assert stale.error is not None
    assert stale.error.code() == grpc.StatusCode.ABORTED
    assert f"no longer holds host {host_id!r}" in str(stale.error.details())
    assert holder.replica.replica_id in str(stale.error.details())


def test_each_takeover_tells_the_replica_it_took_the_host_from_at_once(
    postgres_url: str,
    make_server: Callable[..., FleetServer],
    raw_agent: Callable[..., RawAgent],
) -> None:
    a, b, c = (make_server(store_url=postgres_url, **SLOW_HEARTBEAT) for _ in range(3))
    instance = uuid.uuid4().hex
    first = raw_agent(a.address, "hopper", instance_id=instance)
    wait_for(lambda: a.hub.online() == ["hopper"], what="the first stream held")
    # The same agent instance comes back through b, then through c: two claims.
    second = raw_agent(b.address, "hopper", instance_id=instance)
    assert_fenced(first, "hopper", b)
    assert a.hub.online() == [] and b.hub.online() == ["hopper"]
    assert second.error is None
    raw_agent(c.address, "hopper", instance_id=instance)
    assert_fenced(second, "hopper", c)
    assert b.hub.online() == [] and c.hub.online() == ["hopper"]
    owner = c.store.host_owner("hopper")
    assert owner is not None
    assert (owner.replica_id, owner.epoch) == (c.replica.replica_id, 3)
    # No release of a stale stream marked the host offline under c's feet.
    assert c.store.host("hopper").online


def test_a_replica_told_of_a_claim_its_lease_denies_keeps_its_stream(
    postgres_url: str,
    make_server: Callable[..., FleetServer],
    raw_agent: Callable[..., RawAgent],
) -> None:
    a = make_server(store_url=postgres_url, **SLOW_HEARTBEAT)
    b = make_server(store_url=postgres_url, **SLOW_HEARTBEAT)
    agent = raw_agent(a.address, "steady")
    wait_for(lambda: a.hub.online() == ["steady"], what="the stream held")
    held = a.store.host_owner("steady")
    assert held is not None
    # A word from the link is checked against the store: the lease is still a's.
    claimed = replace(held, replica_id=b.replica.replica_id, epoch=held.epoch + 1)
    assert b.hub.call(b.peers.fence_host(held, claimed)) is False
    assert a.hub.online() == ["steady"] and agent.error is None
    with pytest.raises(errors.InvalidArgument, match="epoch"):
        b.hub.call(b.peers.fence_host(held, replace(claimed, epoch=0)))


def test_a_takeover_fences_the_stale_stream_at_renewal_when_its_replica_is_unreachable(
    postgres_url: str,
    make_server: Callable[..., FleetServer],
    raw_agent: Callable[..., RawAgent],
) -> None:
    # a advertises an address nobody listens on: b's word cannot reach it.
    a = make_server(store_url=postgres_url, advertise="127.0.0.1:1")
    b = make_server(store_url=postgres_url)
    instance = uuid.uuid4().hex
    stale = raw_agent(a.address, "mover", instance_id=instance)
    wait_for(lambda: a.hub.online() == ["mover"], what="the first stream held")
    assert a.store.host_owners()["mover"].epoch == 1
    # The same agent instance comes back through b (its stream to a half-open, say).
    raw_agent(b.address, "mover", instance_id=instance)
    wait_for(lambda: b.hub.online() == ["mover"], what="the takeover")
    owner = b.store.host_owners()["mover"]
    assert (owner.replica_id, owner.address, owner.epoch) == (
        b.replica.replica_id,
        b.replica.address,
        2,
    )
    # a learns it at its next renewal and ends its stream with the reason.
    assert_fenced(stale, "mover", b)
    assert a.hub.online() == []
    # a's release did not mark the host offline under b's feet.
    [status] = b.store.hosts()
    assert status.online
    still = b.store.host_owners()["mover"]
    assert (still.replica_id, still.epoch) == (b.replica.replica_id, 2)


def test_a_clean_disconnect_releases_the_host_and_marks_it_offline(
    postgres_url: str,
    make_server: Callable[..., FleetServer],
    raw_agent: Callable[..., RawAgent],
) -> None:
    a = make_server(store_url=postgres_url)
    agent = raw_agent(a.address, "leaver")
    wait_for(lambda: a.hub.online() == ["leaver"], what="the stream held")
    agent.close()
    wait_for(lambda: not a.store.host_owners()["leaver"].replica_id, 30, "the release")
    assert not a.store.host("leaver").online
    # Released, another agent instance may claim the host id at once, elsewhere.
    b = make_server(store_url=postgres_url)
    raw_agent(b.address, "leaver")
    wait_for(lambda: b.hub.online() == ["leaver"], what="the new holder")
    assert b.store.host_owners()["leaver"].epoch == 2


def test_server_processes_advertise_themselves_and_forward(
    postgres_url: str,
    children: list[Child],
    make_uplink: Callable[..., Uplink],
    reader: LinuxReader,
    planter: Planter,
) -> None:
    ports = []
    for _ in range(2):
        child = start(
            children,
            "server",
            "--store",
            postgres_url,
            "--listen",
            "127.0.0.1:0",
            "--advertise",
            "127.0.0.1:0",
            "--heartbeat",
            f"{HEARTBEAT_SECONDS:g}",
            "--offline-after",
            f"{REPLICA_OFFLINE_AFTER_SECONDS:g}",
            "--http",
            "off",
        )
        ports.append(int(child.wait_line(r"listening on 127\.0\.0\.1:(\d+)").group(1)))
        assert child.wait_line(r"replica (\S+)").group(1) == f"127.0.0.1:{ports[-1]}"
    holder, other = (f"127.0.0.1:{p}" for p in ports)
    uplink = make_uplink(holder, "proc-host")
    assert uplink.connected.wait(30)
    out = subprocess.run(
        [*PYTHON, "hosts", "--target", other, "--format", "csv"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    [header, row] = out.splitlines()
    assert header.endswith(",replica") and row.startswith("proc-host,online,")
    assert row.endswith(f",{holder}")
    with Client(other, timeout=30.0) as client:
        _, fresh = client.host_snapshot("proc-host", planter.pid)
    assert list(fresh.regions) == list(reader.snapshot(planter.pid).regions)
