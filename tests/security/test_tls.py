"""Mutual TLS with certificates from vmatlas.security.certs, and the identity the
server reads from an agent's certificate."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.security.conftest import Pki, tls_options
from vmatlas import errors
from vmatlas.agents.linux import LinuxReader
from vmatlas.agents.service import SERVICE_NAME, AgentServicer, add_to_server
from vmatlas.client import Client
from vmatlas.grpcutil import build_server, maps_errors
from vmatlas.security import auth, certs, tls
from vmatlas.security.options import security_namespace, server_security
from vmatlas.security.policy import AGENT_POLICY
from vmatlas.security.tokens import Role
from vmatlas.v1 import agent_pb2, agent_pb2_grpc


def test_client_with_a_foreign_ca_cannot_connect(
    pki: Pki, other_pki: Path, serve_agent: Any
) -> None:
    target = serve_agent(**tls_options(pki, mutual=True))
    foreign = other_pki / certs.CLIENTS_DIR / "mallory"
    with (
        Client(
            target,
            ca=pki.ca,
            cert=foreign.with_suffix(".pem"),
            key=foreign.with_suffix(".key"),
            token=pki.tokens[Role.ADMIN],
            timeout=5,
        ) as c,
        pytest.raises(errors.Unavailable),
    ):
        c.host()


def test_client_without_a_certificate_cannot_connect(pki: Pki, serve_agent: Any) -> None:
    target = serve_agent(**tls_options(pki, mutual=True))
    with (
        Client(target, ca=pki.ca, token=pki.tokens[Role.ADMIN], timeout=5) as c,
        pytest.raises(errors.Unavailable),
    ):
        c.host()


def test_fleet_client_certificate_and_token_connect(pki: Pki, serve_agent: Any) -> None:
    target = serve_agent(**tls_options(pki, mutual=True))
    mine = pki.client("operator")
    with Client(
        target,
        ca=pki.ca,
        cert=mine.cert_path,
        key=mine.key_path,
        token=pki.tokens[Role.INSPECTOR],
        timeout=10,
    ) as c:
        assert c.snapshot(os.getpid()).process.pid == os.getpid()


def test_client_certificate_alone_is_not_a_role(pki: Pki, serve_agent: Any) -> None:
    target = serve_agent(**tls_options(pki, mutual=True))
    mine = pki.client("operator")
    with (
        Client(target, ca=pki.ca, cert=mine.cert_path, key=mine.key_path, timeout=10) as c,
        pytest.raises(errors.Unauthenticated),
    ):
        c.host()


class _Recording(AgentServicer):
    """GetHost records who called and checks they are the agent for ``claimed``."""

    def __init__(self) -> None:
        super().__init__(LinuxReader(host_id="recording"))
        self.seen: list[tuple[str | None, auth.Principal | None]] = []
        self.claimed = ""

    @maps_errors
    def GetHost(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.seen.append((tls.peer_host_id(context), auth.caller()))
        auth.require_agent_host(self.claimed)
        return agent_pb2.GetHostResponse()


@pytest.fixture
def recording_server(pki: Pki) -> Any:
    policy = {**AGENT_POLICY, f"/{SERVICE_NAME}/GetHost": auth.AGENTS_ONLY}
    security = server_security(
        security_namespace(**tls_options(pki, mutual=True)), policy, listen="127.0.0.1:0"
    )
    servicer = _Recording()
    server, port, _ = build_server(
        services=[(add_to_server, servicer, SERVICE_NAME)],
        address="127.0.0.1:0",
        credentials=security.credentials,
        interceptors=security.interceptors,
    )
    server.start()
    yield f"localhost:{port}", servicer
    server.stop(None)


def _agent_stub(target: str, pki: Pki, host_id: str) -> tuple[grpc.Channel, Any]:
    issued = pki.agent(host_id)
    credentials = tls.channel_credentials(pki.ca, issued.cert_path, issued.key_path)
    channel = grpc.secure_channel(target, credentials)
    return channel, agent_pb2_grpc.AgentServiceStub(channel)


def test_peer_identity_is_the_agent_certificate_host_id(pki: Pki, recording_server: Any) -> None:
    target, servicer = recording_server
    servicer.claimed = "host-a"
    channel, stub = _agent_stub(target, pki, "host-a")
    with channel:
        stub.GetHost(agent_pb2.GetHostRequest(), timeout=10)
    ((peer_host, principal),) = servicer.seen
    assert peer_host == "host-a"
    assert principal is not None and principal.agent_host_id == "host-a"
    assert principal.role is None and not principal.sees_addresses


def test_agent_certificate_for_host_a_cannot_act_for_host_b(
    pki: Pki, recording_server: Any
) -> None:
    target, servicer = recording_server
    servicer.claimed = "host-b"
    channel, stub = _agent_stub(target, pki, "host-a")
    with channel, pytest.raises(grpc.RpcError) as info:
        stub.GetHost(agent_pb2.GetHostRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "names host 'host-a', not 'host-b'" in (info.value.details() or "")


def test_agent_certificate_reaches_only_agent_methods(pki: Pki, recording_server: Any) -> None:
    target, _ = recording_server
    channel, stub = _agent_stub(target, pki, "host-a")
    with channel, pytest.raises(grpc.RpcError) as info:
        stub.ListProcesses(agent_pb2.ListProcessesRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_operator_token_cannot_call_an_agent_method(pki: Pki, recording_server: Any) -> None:
    target, _ = recording_server
    mine = pki.client("operator")
    with (
        Client(
            target,
            ca=pki.ca,
            cert=mine.cert_path,
            key=mine.key_path,
            token=pki.tokens[Role.ADMIN],
            timeout=10,
        ) as c,
        pytest.raises(errors.AccessDenied, match="agents only"),
    ):
        c.host()


def test_identity_of_a_certificate_file(pki: Pki) -> None:
    agent = tls.identity_of_certificate(pki.agent("host-a").cert_path.read_bytes())
    assert (agent.common_name, agent.kind, agent.agent_host_id) == ("host-a", "agent", "host-a")
    client = tls.identity_of_certificate(pki.client("operator").cert_path.read_bytes())
    assert client.agent_host_id is None
    server = tls.identity_of_certificate(pki.server_cert.read_bytes())
    assert server.agent_host_id is None and "127.0.0.1" not in server.dns_names


def test_certs_refuse_bad_names_and_overwrites(pki: Pki) -> None:
    with pytest.raises(errors.InvalidArgument):
        certs.issue_agent(pki.dir, "../escape")
    with pytest.raises(errors.AlreadyExists):
        certs.init_ca(pki.dir)
    pki.agent("host-a")
    with pytest.raises(errors.AlreadyExists):
        certs.issue_agent(pki.dir, "host-a")
    assert (pki.dir / certs.CA_KEY).stat().st_mode & 0o077 == 0
