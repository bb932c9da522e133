"""The fleet server with mutual TLS and tokens: agents prove their host id with their
certificate, operators their role with a token, and pushes are validated."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import HEARTBEAT_SECONDS, OFFLINE_AFTER_SECONDS, wait_for
from tests.security.conftest import Pki, tls_options
from vmatlas import errors, wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.agents.uplink import Uplink
from vmatlas.client import Client
from vmatlas.security import certs, tls
from vmatlas.security.options import security_namespace, server_security
from vmatlas.security.policy import SERVER_POLICY, method_names, uncovered
from vmatlas.security.tokens import Role
from vmatlas.server.app import FleetServer, ServerConfig
from vmatlas.v1 import agent_pb2, fleet_pb2, hub_pb2, hub_pb2_grpc, replica_pb2


@pytest.fixture
def fleet(pki: Pki, tmp_path: Path) -> Iterator[FleetServer]:
    security = server_security(
        security_namespace(**tls_options(pki, mutual=True)), SERVER_POLICY, listen="127.0.0.1:0"
    )
    server = FleetServer(
        ServerConfig(
            listen="127.0.0.1:0",
            data_dir=str(tmp_path / "data"),
            heartbeat_seconds=HEARTBEAT_SECONDS,
            offline_after_seconds=OFFLINE_AFTER_SECONDS,
            agent_timeout_seconds=5.0,
            retain_seconds=0.0,
            credentials=security.credentials,
            interceptors=security.interceptors,
        )
    ).start()
    yield server
    server.stop(0.5)


def target(fleet: FleetServer) -> str:
    return f"localhost:{fleet.port}"


def agent_credentials(pki: Pki, host_id: str) -> grpc.ChannelCredentials:
    issued = pki.agent(host_id)
    return tls.channel_credentials(pki.ca, issued.cert_path, issued.key_path)


def operator(pki: Pki, fleet: FleetServer, role: Role) -> Client:
    mine = pki.client("operator")
    return Client(
        target(fleet),
        ca=pki.ca,
        cert=mine.cert_path,
        key=mine.key_path,
        token=pki.tokens[role],
        timeout=15,
    )


def register(pki: Pki, fleet: FleetServer, cert_host: str, claimed_host: str) -> Any:
    """Open the agent stream with ``cert_host``'s certificate, register as
    ``claimed_host``; returns the first answer (or raises the stream's error)."""
    host = wire.host_to_pb(LinuxReader(host_id=claimed_host).host())
    first = hub_pb2.ConnectRequest()
    first.register.host.CopyFrom(host)
    first.register.instance_id = "test"
    channel = grpc.secure_channel(target(fleet), agent_credentials(pki, cert_host))
    try:
        stream = hub_pb2_grpc.AgentHubServiceStub(channel).Connect(iter([first]), timeout=10)
        answer = next(stream)
        stream.cancel()
        return answer
    finally:
        channel.close()


def test_agent_certificate_for_host_a_cannot_register_host_b(pki: Pki, fleet: FleetServer) -> None:
    with pytest.raises(grpc.RpcError) as info:
        register(pki, fleet, "host-a", "host-b")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "names host 'host-a', not 'host-b'" in (info.value.details() or "")
    assert register(pki, fleet, "host-a", "host-a").HasField("registered")


def test_agent_without_a_certificate_cannot_connect(pki: Pki, fleet: FleetServer) -> None:
    channel = grpc.secure_channel(target(fleet), tls.channel_credentials(pki.ca))
    with channel, pytest.raises(grpc.RpcError) as info:
        first = hub_pb2.ConnectRequest()
        first.register.host.host_id = "host-a"
        next(hub_pb2_grpc.AgentHubServiceStub(channel).Connect(iter([first]), timeout=10))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certified_uplink_serves_inspectors_and_not_viewers(pki: Pki, fleet: FleetServer) -> None:
    uplink = Uplink(
        LinuxReader(),
        target(fleet),
        host_id="host-a",
        interval_seconds=0.5,
        credentials=agent_credentials(pki, "host-a"),
    ).start()
    try:
        wait_for(uplink.connected.is_set)
        with operator(pki, fleet, Role.VIEWER) as viewer:
            wait_for(lambda: [h for h in viewer.hosts() if h.online])
            assert [h.host_id for h in viewer.hosts()] == ["host-a"]
            mine = wait_for(
                lambda: [p for p in viewer.fleet_processes() if p.item.process.pid == os.getpid()]
            )
            assert mine[0].host_id == "host-a"
            with pytest.raises(errors.AccessDenied, match="needs inspector"):
                viewer.host_snapshot("host-a", os.getpid(), fresh=True)
        with operator(pki, fleet, Role.INSPECTOR) as inspector:
            _, snapshot = inspector.host_snapshot("host-a", os.getpid(), fresh=True)
        assert snapshot.host.host_id == "host-a" and len(snapshot.regions) > 0
    finally:
        uplink.stop()


def test_operator_token_cannot_open_the_agent_stream(pki: Pki, fleet: FleetServer) -> None:
    mine = pki.client("operator")
    credentials = tls.channel_credentials(pki.ca, mine.cert_path, mine.key_path)
    first = hub_pb2.ConnectRequest()
    first.register.host.host_id = "host-a"
    metadata = (("authorization", f"Bearer {pki.tokens[Role.ADMIN]}"),)
    with grpc.secure_channel(target(fleet), credentials) as channel:
        stream = hub_pb2_grpc.AgentHubServiceStub(channel).Connect(
            iter([first]), timeout=10, metadata=metadata
        )
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "for agents only" in (info.value.details() or "")


def test_every_served_method_has_a_rule() -> None:
    services = [
        (agent_pb2.DESCRIPTOR, "AgentService"),
        (fleet_pb2.DESCRIPTOR, "FleetService"),
        (hub_pb2.DESCRIPTOR, "AgentHubService"),
        (replica_pb2.DESCRIPTOR, "ReplicaService"),
    ]
    try:
        from vmatlas.v1 import analysis_pb2

        services.append((analysis_pb2.DESCRIPTOR, "AnalysisService"))
    except ImportError:
        pass
    for descriptor, name in services:
        assert method_names(descriptor, name)
        assert uncovered(SERVER_POLICY, descriptor, name) == []


def test_viewer_diff_by_address_arrives_without_addresses(
    pki: Pki, fleet: FleetServer, planter: Any
) -> None:
    from vmatlas.security import redact
    from vmatlas.v1 import analysis_pb2, analysis_pb2_grpc

    uplink = Uplink(
        LinuxReader(),
        target(fleet),
        host_id="host-a",
        interval_seconds=0.5,
        credentials=agent_credentials(pki, "host-a"),
    ).start()
    try:
        wait_for(uplink.connected.is_set)
        with operator(pki, fleet, Role.INSPECTOR) as inspector:
            before, _ = inspector.host_snapshot("host-a", planter.pid, fresh=True)
            planter.map(3)
            after, _ = inspector.host_snapshot("host-a", planter.pid, fresh=True)
    finally:
        uplink.stop()
    request = analysis_pb2.DiffRequest(mode=analysis_pb2.DIFF_MODE_ADDRESS)
    request.before.snapshot_id = before
    request.after.snapshot_id = after
    mine = pki.client("operator")
    credentials = tls.channel_credentials(pki.ca, mine.cert_path, mine.key_path)
    responses = {}
    with grpc.secure_channel(target(fleet), credentials) as channel:
        stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
        for role in (Role.INSPECTOR, Role.VIEWER):
            metadata = (("authorization", f"Bearer {pki.tokens[role]}"),)
            responses[role] = stub.Diff(request, metadata=metadata, timeout=15)
    assert any(c.start_address for c in responses[Role.INSPECTOR].changes)
    viewer = responses[Role.VIEWER]
    assert redact.address_fields_set(viewer) == []
    assert len(viewer.changes) == len(responses[Role.INSPECTOR].changes)
    assert [c.bytes_after for c in viewer.changes] == [
        c.bytes_after for c in responses[Role.INSPECTOR].changes
    ]


def test_an_uplink_to_a_name_checks_the_name_on_each_record(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A serving certificate for the name only, not for the addresses it resolves to:
    # dialled by address, the agent must still check the certificate against the name.
    named = certs.issue_server(pki.dir, ["fleet.test"], stem="fleet-test")
    options = tls_options(pki, mutual=True, tls_cert=str(named.cert_path))
    options["tls_key"] = str(named.key_path)
    security = server_security(security_namespace(**options), SERVER_POLICY, listen="127.0.0.1:0")
    server = FleetServer(
        ServerConfig(
            listen="127.0.0.1:0",
            data_dir=str(tmp_path / "data"),
            retain_seconds=0.0,
            credentials=security.credentials,
            interceptors=security.interceptors,
        )
    ).start()

    def uplink(name: str) -> Uplink:
        return Uplink(
            LinuxReader(),
            f"{name}:{server.port}",
            host_id="host-a",
            credentials=agent_credentials(pki, "host-a"),
            resolve=lambda _target: [server.address],
            backoff_max_seconds=0.2,
        ).start()

    caplog.set_level(logging.WARNING, logger="vmatlas.agents.uplink")
    try:
        # The same address by a name the certificate does not carry: refused.
        wrong = uplink("other.test")
        wait_for(
            lambda: [r for r in caplog.records if r.getMessage().startswith("stream to")],
            20,
            "a failed attempt",
        )
        wrong.stop(1.0)
        assert wrong.registrations == 0
        right = uplink("fleet.test")
        wait_for(right.connected.is_set, 20, "the uplink registered through the name")
        assert right.target == server.address
        right.stop(1.0)
    finally:
        server.stop(0.5)
