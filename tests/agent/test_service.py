"""The agent service over real gRPC on loopback, with the real Linux reader."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.conftest import PAGE, Planter
from tests.linux.test_reader import unprivileged
from vmatlas import errors
from vmatlas.agents.linux import LinuxReader
from vmatlas.agents.service import MAX_WATCHES, SERVICE_NAME, AgentServicer, add_to_server
from vmatlas.client import Client
from vmatlas.grpcutil import build_server
from vmatlas.model import Region, Residency, SnapshotView


@pytest.fixture(scope="module")
def agent() -> Iterator[str]:
    server, port, _health = build_server(
        services=[
            (
                add_to_server,
                AgentServicer(LinuxReader(host_id="test-host")),
                SERVICE_NAME,
            )
        ],
        address="127.0.0.1:0",
    )
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture
def client(agent: str) -> Iterator[Client]:
    with Client(agent, timeout=20) as c:
        yield c


def test_host_facts(client: Client) -> None:
    host = client.host()
    assert host.host_id == "test-host"
    with open("/proc/sys/vm/max_map_count") as f:
        assert host.max_map_count == int(f.read())
    assert host.page_size_bytes == PAGE


def alone(region: Region) -> Region:
    """The region as this process alone decides it: a file page's proportional and
    shared-or-private figures move with the other processes that map the file (such as
    libc) between two readings."""
    residency = region.residency
    if residency is None or not region.path:
        return region
    return dataclasses.replace(
        region, residency=Residency(rss_bytes=residency.rss_bytes, swap_bytes=residency.swap_bytes)
    )


def test_snapshot_over_grpc_equals_the_reader(client: Client, planter: Planter) -> None:
    planter.reserve(7)
    base = planter.map(3)
    planter.touch(base, 1)
    remote = client.snapshot(planter.pid, include_residency=True)
    local = LinuxReader(host_id="test-host").snapshot(planter.pid, include_residency=True)
    assert [alone(r) for r in remote.regions] == [alone(r) for r in local.regions]
    # The planted pages are the planter's alone: all of their residency is equal.
    (planted,) = [r for r in remote.regions if r.start == base]
    (again,) = [r for r in local.regions if r.start == base]
    assert planted == again and planted.residency and planted.residency.rss_bytes == PAGE
    assert remote.summary == local.summary
    assert remote.process == local.process
    rows = list(remote.regions)
    assert {r.perms for r in rows} >= {"---p", "rw-p"}


def test_processes_are_sorted_by_region_count(client: Client, planter: Planter) -> None:
    planter.grow(300)
    items = client.processes()
    counts = [p.summary.map_count for p in items]
    assert counts == sorted(counts, reverse=True)
    (mine,) = [p for p in items if p.process.pid == planter.pid]
    assert mine.summary.map_count >= 300
    assert len(client.processes(limit=5)) == 5
    by_headroom = client.processes(order="headroom")
    headrooms = [p.summary.headroom_fraction for p in by_headroom]
    assert headrooms == sorted(headrooms)
    named = client.processes(name="planter")
    assert planter.pid in {p.process.pid for p in named}
    assert all("planter" in p.process.name for p in named)


def test_unknown_pid_is_not_found(client: Client, planter: Planter) -> None:
    pid = planter.pid
    planter.close()
    with pytest.raises(errors.NoSuchProcess) as info:
        client.snapshot(pid)
    assert info.value.pid == pid
    assert str(pid) in str(info.value)


def test_pid_zero_is_invalid_argument(client: Client) -> None:
    with pytest.raises(errors.InvalidArgument):
        client.snapshot(0)


def test_permission_denied(client: Client) -> None:
    with unprivileged(), pytest.raises(errors.AccessDenied) as info:
        client.snapshot(1)
    assert info.value.pid == 1


def test_windows_view_without_wine_support_is_failed_precondition(
    client: Client,
) -> None:
    with pytest.raises(errors.FailedPrecondition):
        client.snapshot(os.getpid(), view=SnapshotView.WINDOWS)


def test_watch_sends_at_once_when_the_region_count_changes(
    client: Client, planter: Planter
) -> None:
    stream = client.watch(planter.pid, interval=60, poll=0.05)
    first, changed = next(stream)
    assert not changed
    planter.grow(10)
    second, changed = next(stream)
    assert changed
    assert second.summary.region_count == first.summary.region_count + 10
    stream.close()


def test_watch_ends_with_not_found_when_the_process_exits(client: Client, planter: Planter) -> None:
    stream = client.watch(planter.pid, interval=60, poll=0.05)
    next(stream)
    planter.close()
    with pytest.raises(errors.NoSuchProcess):
        for _ in stream:
            pass


def test_health_and_reflection(agent: str) -> None:
    with grpc.insecure_channel(agent) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        database = ProtoReflectionDescriptorDatabase(channel)
        assert SERVICE_NAME in set(database.get_services())
        method = database.FindFileContainingSymbol(SERVICE_NAME)
        assert method.package == "vmatlas.v1"


def test_watches_are_bounded_in_number_and_rate(client: Client, planter: Planter) -> None:
    streams = [client.watch(planter.pid, interval=60, poll=0.05) for _ in range(MAX_WATCHES)]
    try:
        for stream in streams:
            next(stream)
        with pytest.raises(errors.ResourceExhausted, match="watches"):
            next(client.watch(planter.pid, interval=60))
    finally:
        for stream in streams:
            stream.close()
    # Closed watches give their places back.
    deadline = time.monotonic() + 10
    while True:
        try:
            stream = client.watch(planter.pid, interval=60)
            next(stream)
            stream.close()
            break
        except errors.ResourceExhausted:
            assert time.monotonic() < deadline, "closed watches were not released"
            time.sleep(0.1)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(errors.InvalidArgument):
            next(client.watch(planter.pid, interval=bad))
