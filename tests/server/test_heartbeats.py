"""Liveness over real gRPC on loopback: the heartbeat interval a server tells its agents
grows with the number it holds (new agents hear it at registration, connected ones in
their next heartbeat's answer), and a connection that goes silent underneath a live
stream is found by the transport's keepalive pings, not by missing heartbeats."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from vmatlas.agents.uplink import Uplink
from vmatlas.client import Client
from vmatlas.server.app import FleetServer

from .conftest import wait_for


class SilenceableProxy:
    """A TCP proxy on loopback to ``target``. :meth:`go_silent` makes it stop
    forwarding in both directions while every connection stays open, as a network
    that dies without a reset does (a cable pulled, a machine frozen, a NAT entry
    dropped)."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.silent = threading.Event()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return
            outbound = socket.create_connection(self.target)
            self.sockets += [inbound, outbound]
            for source, sink in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(0.05)
        while not self.closed.is_set():
            if self.silent.is_set():
                # Nothing read, nothing sent, nothing closed.
                self.closed.wait(0.05)
                continue
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            try:
                sink.sendall(data)
            except OSError:
                return

    def go_silent(self) -> None:
        self.silent.set()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for s in self.sockets:
            s.close()


@pytest.fixture
def proxy() -> Iterator[Callable[[str], SilenceableProxy]]:
    made: list[SilenceableProxy] = []

    def make(target: str) -> SilenceableProxy:
        made.append(SilenceableProxy(target))
        return made[-1]

    yield make
    for p in made:
        p.close()


def test_a_server_holding_more_agents_than_its_budget_tells_them_a_longer_interval(
    make_server: Callable[..., FleetServer], make_uplink: Callable[..., Uplink]
) -> None:
    # 2 heartbeats a second at 1 s apiece: two agents per 1 s step.
    server = make_server(heartbeat_seconds=1.0, heartbeat_budget=2.0)
    first = make_uplink(server.address, "first")
    assert first.connected.wait(15)
    assert first.heartbeat_seconds == pytest.approx(1.0)
    others = []
    for i in range(4):
        others.append(make_uplink(server.address, f"other-{i}"))
        assert others[-1].connected.wait(15)
    # Five agents: three steps. The last to come heard it at registration.
    assert server.hub.heartbeat_interval() == pytest.approx(3.0)
    assert others[-1].heartbeat_seconds == pytest.approx(3.0)
    # The first agent hears it in the answer to its next heartbeat.
    wait_for(lambda: first.heartbeat_seconds == pytest.approx(3.0), what="the longer interval")
    for uplink in others:
        uplink.stop()
    wait_for(lambda: server.hub.online() == ["first"], what="the others gone")
    # Alone again: the configured interval, at its next heartbeat.
    wait_for(lambda: first.heartbeat_seconds == pytest.approx(1.0), what="the shorter interval")
    assert first.registrations == 1


def test_an_agent_told_a_long_interval_is_not_dropped_between_its_heartbeats(
    make_server: Callable[..., FleetServer],
    make_uplink: Callable[..., Uplink],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vmatlas.server.domain.hub")
    # 0.4 heartbeats a second in all: two agents are told 5 s, well over the 3 s
    # offline window a heartbeat of the configured 0.5 s would allow. (The window is
    # no shorter: the server's keepalive gives a ping a third of it to be answered.)
    server = make_server(heartbeat_seconds=0.5, offline_after_seconds=3.0, heartbeat_budget=0.4)
    uplinks = [make_uplink(server.address, name) for name in ("one", "two")]
    for uplink in uplinks:
        assert uplink.connected.wait(15)
    wait_for(lambda: all(u.heartbeat_seconds == pytest.approx(5.0) for u in uplinks))
    # Two told intervals go by, each silent for longer than the offline window.
    time.sleep(2 * 5.0)
    assert [u.heartbeat_seconds for u in uplinks] == [5.0, 5.0]
    assert [u.registrations for u in uplinks] == [1, 1]
    assert server.hub.online() == ["one", "two"]
    assert "missed heartbeats" not in caplog.text


def test_agents_keepalive_pings_are_welcome_on_a_quiet_stream(
    make_server: Callable[..., FleetServer], make_uplink: Callable[..., Uplink]
) -> None:
    # Heartbeats far apart: the stream carries no data while the agent pings, which
    # gRPC's default server policy punishes (GOAWAY too_many_pings after two strikes).
    server = make_server(heartbeat_seconds=60.0, offline_after_seconds=180.0)
    uplink = make_uplink(
        server.address, "pinging", keepalive_seconds=1.2, keepalive_timeout_seconds=5.0
    )
    assert uplink.connected.wait(15)
    wait_for(lambda: uplink.buffered() == 0, what="the first push acknowledged")
    time.sleep(6 * 1.2)
    assert uplink.connected.is_set()
    assert uplink.registrations == 1


def test_an_agent_whose_network_goes_silent_is_marked_offline_by_keepalive(
    make_server: Callable[..., FleetServer],
    make_uplink: Callable[..., Uplink],
    proxy: Callable[[str], SilenceableProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vmatlas.server.domain.hub")
    # Heartbeats every 60 s: three missed ones would take three minutes. The server
    # pings every connection after 4 s of quiet and gives it 2 s to answer.
    server = make_server(heartbeat_seconds=60.0, offline_after_seconds=6.0)
    link = proxy(server.address)
    uplink = make_uplink(
        link.address, "cut-off", keepalive_seconds=2.0, keepalive_timeout_seconds=2.0
    )
    assert uplink.connected.wait(15)
    assert server.hub.online() == ["cut-off"]
    link.go_silent()
    # Far sooner than any heartbeat could be missed. The line is logged once the store
    # has it offline, so it is what to wait for.
    wait_for(lambda: "host cut-off offline" in caplog.text, 60, "offline by keepalive")
    assert server.hub.online() == []
    with Client(server.address, timeout=10) as client:
        assert [h.online for h in client.hosts()] == [False]
    assert "missed heartbeats" not in caplog.text
    # The agent found its server silent too, by its own pings, and is trying again.
    wait_for(lambda: not uplink.connected.is_set(), 60, "the agent to drop its stream")
