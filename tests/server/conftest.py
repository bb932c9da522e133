"""Fixtures for the fleet server tests: a server and a client on it (from
``make_server`` in tests/conftest.py, shared with the other suites), a hand-driven agent
stream for misbehaving agents, and ``vmatlas`` commands as child processes."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

# Re-exported: the server tests import them from here.
from tests.conftest import HEARTBEAT_SECONDS as HEARTBEAT_SECONDS
from tests.conftest import OFFLINE_AFTER_SECONDS as OFFLINE_AFTER_SECONDS
from tests.conftest import wait_for as wait_for
from vmatlas import wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.client import Client
from vmatlas.model import Host
from vmatlas.server.app import FleetServer
from vmatlas.v1 import hub_pb2, hub_pb2_grpc


@pytest.fixture
def server(make_server: Callable[..., FleetServer]) -> FleetServer:
    return make_server()


@pytest.fixture
def client(server: FleetServer) -> Iterator[Client]:
    with Client(server.address, timeout=15.0) as c:
        yield c


class RawAgent:
    """An agent stream driven by hand: registers, heartbeats if asked, and never
    answers a snapshot command (a hung agent)."""

    def __init__(
        self,
        target: str,
        host_id: str,
        reader: LinuxReader,
        heartbeat: bool,
        instance_id: str | None = None,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ):
        self.channel = grpc.insecure_channel(target)
        self.outbox: queue.Queue[hub_pb2.ConnectRequest | None] = queue.Queue()
        register = hub_pb2.ConnectRequest()
        wire.host_to_pb(replace(reader.host(), host_id=host_id), register.register.host)
        register.register.instance_id = instance_id or uuid.uuid4().hex
        self.error: grpc.RpcError | None = None
        self.outbox.put(register)
        self.call = hub_pb2_grpc.AgentHubServiceStub(self.channel).Connect(self._requests())
        self.received: list[hub_pb2.ConnectResponse] = []
        self.stopped = threading.Event()
        self.heartbeat_seconds = heartbeat_seconds
        threading.Thread(target=self._receive, daemon=True).start()
        if heartbeat:
            threading.Thread(target=self._beat, daemon=True).start()

    def _requests(self) -> Iterator[hub_pb2.ConnectRequest]:
        while (message := self.outbox.get()) is not None:
            yield message

    def _receive(self) -> None:
        try:
            for message in self.call:
                self.received.append(message)
        except grpc.RpcError as exc:
            self.error = exc

    def _beat(self) -> None:
        while not self.stopped.wait(self.heartbeat_seconds):
            message = hub_pb2.ConnectRequest()
            message.heartbeat.SetInParent()
            self.outbox.put(message)

    def heartbeat_acks(self) -> int:
        """How many of its heartbeats the server has answered."""
        return sum(m.HasField("heartbeat_ack") for m in list(self.received))

    def close(self) -> None:
        self.stopped.set()
        self.outbox.put(None)
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def raw_agent(reader: LinuxReader) -> Iterator[Callable[..., RawAgent]]:
    agents: list[RawAgent] = []

    def make(
        target: str,
        host_id: str,
        *,
        heartbeat: bool = True,
        instance_id: str | None = None,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> RawAgent:
        agent = RawAgent(target, host_id, reader, heartbeat, instance_id, heartbeat_seconds)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.close()


PYTHON = [sys.executable, "-m", "vmatlas"]


class Child:
    """A ``vmatlas`` command as a child process, its stderr merged into stdout."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [*PYTHON, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []

    def wait_line(self, pattern: str) -> re.Match[str]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"exited ({self.proc.wait()}) before {pattern!r}: {self.lines}")

    def finish(self, timeout: float = 20.0) -> str:
        """Everything it prints until it exits (within ``timeout``)."""
        out, _ = self.proc.communicate(timeout=timeout)
        self.lines.append(out)
        return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


def start(children: list[Child], *args: str) -> Child:
    child = Child(*args)
    children.append(child)
    return child


def server_args(data: Path, port: int, *more: str) -> list[str]:
    return [
        "server",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data),
        "--heartbeat",
        f"{HEARTBEAT_SECONDS:g}",
        "--offline-after",
        f"{OFFLINE_AFTER_SECONDS:g}",
        "--http",
        "127.0.0.1:0",
        *more,
    ]


def start_server(children: list[Child], data: Path, port: int = 0, *more: str) -> tuple[Child, int]:
    """A server process; returns it and its port once it listens."""
    server = start(children, *server_args(data, port, *more))
    return server, int(server.wait_line(r"listening on 127\.0\.0\.1:(\d+)").group(1))


# The replicas' offline window, and so their leases: what a killed replica's hosts and
# jobs wait before another takes them over. Shorter than OFFLINE_AFTER_SECONDS, to keep
# the failover tests short; still six heartbeats, and a keepalive answer may take 2 s.
REPLICA_OFFLINE_AFTER_SECONDS = 6.0


def start_replica(
    children: list[Child], store_url: str, *more: str, verbose: bool = False
) -> tuple[Child, str]:
    """A server process on ``store_url`` (one of several replicas), with the offline
    window of REPLICA_OFFLINE_AFTER_SECONDS (so leases as long, renewed every
    HEARTBEAT_SECONDS) and no HTTP listener, logging its INFO lines if ``verbose``;
    returns it and its address once it listens."""
    server = start(
        children,
        *(["-v"] if verbose else []),
        "server",
        "--listen",
        "127.0.0.1:0",
        "--store",
        store_url,
        "--heartbeat",
        f"{HEARTBEAT_SECONDS:g}",
        "--offline-after",
        f"{REPLICA_OFFLINE_AFTER_SECONDS:g}",
        "--http",
        "off",
        *more,
    )
    port = server.wait_line(r"listening on 127\.0\.0\.1:(\d+)").group(1)
    return server, f"127.0.0.1:{port}"


class Stream:
    """One agent stream whose messages the test sends by hand."""

    def __init__(self, target: str, host: Host, *, os_value: int | None = None):
        self.channel = grpc.insecure_channel(target)
        self.outbox: queue.Queue[hub_pb2.ConnectRequest | None] = queue.Queue()
        register = hub_pb2.ConnectRequest()
        wire.host_to_pb(host, register.register.host)
        if os_value is not None:
            register.register.host.os = os_value  # type: ignore[assignment]
        register.register.instance_id = uuid.uuid4().hex
        self.outbox.put(register)
        self.call = hub_pb2_grpc.AgentHubServiceStub(self.channel).Connect(self._requests())

    def _requests(self) -> Iterator[hub_pb2.ConnectRequest]:
        while (message := self.outbox.get()) is not None:
            yield message

    def next(self) -> hub_pb2.ConnectResponse:
        return next(self.call)

    def failure(self) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            for _ in self.call:
                pass
        return caught.value

    def close(self) -> None:
        self.outbox.put(None)
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def stream() -> Iterator[Callable[..., Stream]]:
    streams: list[Stream] = []

    def make(target: str, host: Host, **options: int) -> Stream:
        streams.append(Stream(target, host, **options))
        return streams[-1]

    yield make
    for s in streams:
        s.close()
