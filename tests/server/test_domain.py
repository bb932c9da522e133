"""The server's domain called directly, as a front end other than gRPC would call it:
the same answers the gRPC services give, as model objects, from any thread."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from vmatlas import errors, wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.agents.uplink import Uplink
from vmatlas.client import Client
from vmatlas.model import ProcessOrder
from vmatlas.server.app import FleetServer
from vmatlas.server.domain.analysis import LatestSnapshot, StoredSnapshotId
from vmatlas.server.domain.hub import SnapshotRequest

from .conftest import wait_for


def test_fresh_snapshot_is_decoded_once_stored_and_answered(
    server: FleetServer,
    client: Client,
    make_uplink: Callable[..., Uplink],
    reader: LinuxReader,
    planter: object,
) -> None:
    pid = planter.pid  # type: ignore[attr-defined]
    planter.grow(300)  # type: ignore[attr-defined]
    uplink = make_uplink(server.address, "domain")
    wait_for(uplink.connected.is_set, what="registration")
    fresh = server.queries.fresh_snapshot("domain", SnapshotRequest(pid))
    # The object decoded on arrival is what the caller gets ...
    assert fresh.decoded is not None and fresh.snapshot() is fresh.decoded
    direct = reader.snapshot(pid)
    assert list(fresh.snapshot().regions) == list(direct.regions)
    # ... and what is stored and sent on the wire.
    stored = server.queries.stored_snapshot(fresh.snapshot_id)
    assert stored.decoded is None and stored.snapshot() == fresh.snapshot()
    assert wire.snapshot_from_bytes(fresh.serialized()) == fresh.snapshot()
    # The header goes on as the agent sent it, not encoded again.
    assert fresh.header_bytes and fresh.serialized_header() is fresh.header_bytes
    assert client.stored_snapshot(fresh.snapshot_id) == fresh.snapshot()
    assert server.queries.latest_snapshot("domain", pid).snapshot_id == fresh.snapshot_id
    history = server.queries.history("domain", pid)
    assert [s.snapshot_id for s in history.snapshots] == [fresh.snapshot_id]
    same = server.analysis.diff(StoredSnapshotId(fresh.snapshot_id), LatestSnapshot("domain", pid))
    assert (same.before_id, same.after_id) == (fresh.snapshot_id, fresh.snapshot_id)
    assert same.diff.unchanged


def test_queries_from_many_threads_agree_with_the_service(
    server: FleetServer,
    client: Client,
    make_uplink: Callable[..., Uplink],
) -> None:
    uplink = make_uplink(server.address, "threads")
    wait_for(lambda: uplink.acked_sequence, what="the first push stored")
    assert uplink.last_push
    expected = client.fleet_processes(host="threads", order="headroom")
    seen: list[object] = []

    def ask() -> None:
        seen.append(server.queries.processes(host_id="threads", order=ProcessOrder.HEADROOM))

    askers = [threading.Thread(target=ask) for _ in range(8)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join()
    assert seen == [expected] * 8
    assert [h.host_id for h in server.queries.hosts()] == ["threads"]


def test_domain_errors_are_the_model_s(server: FleetServer) -> None:
    with pytest.raises(errors.NotFound):
        server.queries.fresh_snapshot("nobody", SnapshotRequest(1))
    with pytest.raises(errors.InvalidArgument):
        server.queries.fresh_snapshot("nobody", SnapshotRequest(0))
    with pytest.raises(errors.InvalidArgument):
        server.queries.history("nobody", 1, since=10.0, until=5.0)
    with pytest.raises(errors.NotFound):
        server.queries.stored_snapshot("no-such-id")
