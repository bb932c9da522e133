"""The fleet server on the PostgreSQL store, end to end: an agent's pushes and a
stored snapshot reach it through real gRPC, and a restarted server finds them."""

from __future__ import annotations

import os
from collections.abc import Callable

from vmatlas import errors
from vmatlas.agents.uplink import Uplink
from vmatlas.client import Client
from vmatlas.server.app import FleetServer

from .conftest import wait_for


def test_a_server_on_postgres_stores_and_serves_what_agents_send(
    # First, so that its schema is dropped last: after the agent and the servers stop.
    postgres_url: str,
    make_server: Callable[..., FleetServer],
    make_uplink: Callable[..., Uplink],
) -> None:
    server = make_server(store_url=postgres_url)
    make_uplink(server.address, "pg-host", interval_seconds=0.5)
    pid = os.getpid()

    def stored(client: Client) -> int:
        try:
            return len(client.history(host="pg-host", pid=pid).summaries)
        except errors.NotFound:  # the agent has not registered yet
            return 0

    with Client(server.address) as client:
        wait_for(lambda: stored(client) >= 2, 60, "two stored pushes")
        fresh = client.snapshot(pid, host="pg-host")
        stored = client.snapshot(pid, host="pg-host", fresh=False)
        assert stored.regions == fresh.regions
        [host] = client.hosts()
        assert (host.host_id, host.online) == ("pg-host", True)
    server.stop(0.5)
    again = make_server(store_url=postgres_url)
    with Client(again.address) as client:
        assert [h.host_id for h in client.hosts()] == ["pg-host"]
        assert client.snapshot(pid, host="pg-host", fresh=False).regions == fresh.regions
