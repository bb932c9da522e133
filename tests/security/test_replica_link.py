"""The link between replicas over mutual TLS: only a replica certificate may use it,
a forwarded fresh snapshot arrives whole, the caller's role holds across it, and a
handshake that fails says why."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from tests.security.conftest import Pki
from vmatlas import errors
from vmatlas.agents.linux import LinuxReader
from vmatlas.agents.uplink import Uplink
from vmatlas.cli.server import replica_credentials
from vmatlas.client import Client
from vmatlas.security import certs, tls
from vmatlas.security.options import security_namespace, server_security
from vmatlas.security.policy import SERVER_POLICY
from vmatlas.security.tokens import Role
from vmatlas.server.app import FleetServer
from vmatlas.server.domain.hub import SnapshotRequest
from vmatlas.v1 import replica_pb2, replica_pb2_grpc


def _replica(pki: Pki, name: str) -> certs.Issued:
    path = pki.dir / certs.REPLICAS_DIR / f"{name}.pem"
    if path.exists():
        return certs.Issued(path, path.with_suffix(".key"))
    return certs.issue_replica(pki.dir, name, ["localhost", "127.0.0.1"])


def _secured_replica(
    pki: Pki,
    make_server: Callable[..., FleetServer],
    store_url: str,
    name: str,
    link: certs.Issued | None = None,
) -> FleetServer:
    """A replica with the security `vmatlas server` builds from these flags; ``link``
    replaces its certificate on the link to the other replicas."""
    issued = _replica(pki, name)
    args = security_namespace(
        tls_cert=str(issued.cert_path),
        tls_key=str(issued.key_path),
        tls_client_ca=str(pki.ca),
        tokens=str(pki.tokens_file),
    )
    security = server_security(args, SERVER_POLICY, listen="127.0.0.1:0")
    return make_server(
        store_url=store_url,
        credentials=security.credentials,
        interceptors=security.interceptors,
        replica_credentials=(
            replica_credentials(args)
            if link is None
            else tls.channel_credentials(pki.ca, link.cert_path, link.key_path)
        ),
    )


def _tls_agent(
    pki: Pki, make_uplink: Callable[..., Uplink], server: FleetServer, host_id: str
) -> Uplink:
    """An uplink to ``server`` over mutual TLS with the agent certificate of
    ``host_id``, once its stream is registered."""
    agent = pki.agent(host_id)
    uplink = make_uplink(
        server.address,
        host_id,
        credentials=tls.channel_credentials(pki.ca, agent.cert_path, agent.key_path),
    )
    assert uplink.connected.wait(30)
    return uplink


def _operator(pki: Pki, server: FleetServer, role: Role) -> Client:
    """A client of ``server`` with the operator's certificate and ``role``'s token."""
    operator = pki.client("operator")
    return Client(
        f"localhost:{server.port}",
        ca=str(pki.ca),
        cert=str(operator.cert_path),
        key=str(operator.key_path),
        token=pki.tokens[role],
        timeout=30.0,
    )


def test_replicas_forward_over_mutual_tls_with_replica_certificates(
    pki: Pki,
    postgres_url: str,
    make_server: Callable[..., FleetServer],
    make_uplink: Callable[..., Uplink],
    planter: object,
) -> None:
    pid = planter.pid  # type: ignore[attr-defined]
    a = _secured_replica(pki, make_server, postgres_url, "replica-a")
    b = _secured_replica(pki, make_server, postgres_url, "replica-b")
    _tls_agent(pki, make_uplink, a, "tls-host")
    with _operator(pki, b, Role.INSPECTOR) as inspector:
        _, fresh = inspector.host_snapshot("tls-host", pid)
        assert list(fresh.regions) == list(LinuxReader().snapshot(pid).regions)
    # The caller's role holds through the link: a viewer is refused at b as at a.
    with _operator(pki, b, Role.VIEWER) as viewer, pytest.raises(errors.AccessDenied):
        viewer.host_snapshot("tls-host", pid)
    # The link is for replica certificates only: an operator's certificate with an
    # admin token, or an agent's certificate, is refused there.
    request = replica_pb2.TakeHostSnapshotRequest(host_id="tls-host", pid=pid)
    request.caller.name, request.caller.role = "mallory", "admin"
    operator, agent = pki.client("operator"), pki.agent("tls-host")
    for cert, token in ((operator, pki.tokens[Role.ADMIN]), (agent, None)):
        credentials = tls.channel_credentials(pki.ca, cert.cert_path, cert.key_path)
        with grpc.secure_channel(f"localhost:{a.port}", credentials) as channel:
            stub = replica_pb2_grpc.ReplicaServiceStub(channel)
            metadata = [("authorization", f"Bearer {token}")] if token else None
            with pytest.raises(grpc.RpcError) as refused:
                stub.TakeHostSnapshot(request, metadata=metadata, timeout=30)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A replica certificate forwarding a viewer's request is refused by the holder too.
    own = _replica(pki, "replica-b")
    credentials = tls.channel_credentials(pki.ca, own.cert_path, own.key_path)
    with grpc.secure_channel(f"localhost:{a.port}", credentials) as channel:
        stub = replica_pb2_grpc.ReplicaServiceStub(channel)
        request.caller.role = "viewer"
        with pytest.raises(grpc.RpcError) as refused:
            stub.TakeHostSnapshot(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs inspector" in str(refused.value.details())
        request.caller.role = "inspector"
        answer = stub.TakeHostSnapshot(request, timeout=30)
        assert answer.held and answer.snapshot_id and answer.regions
    # A claim's word to the old holder travels the same link: a checks it against the
    # store (the lease is still its own) and keeps the stream.
    held = a.store.host_owner("tls-host")
    assert held is not None
    claimed = replace(held, replica_id=b.replica.replica_id, epoch=held.epoch + 1)
    assert b.hub.call(b.peers.fence_host(held, claimed)) is False
    assert a.hub.online() == ["tls-host"]


def test_a_replica_without_its_certificate_is_refused_and_the_caller_told(
    pki: Pki,
    postgres_url: str,
    make_server: Callable[..., FleetServer],
    make_uplink: Callable[..., Uplink],
) -> None:
    a = _secured_replica(pki, make_server, postgres_url, "replica-a")
    # b serves TLS but reaches the others with an operator's certificate.
    operator = pki.client("operator")
    b = _secured_replica(pki, make_server, postgres_url, "replica-b", link=operator)
    _tls_agent(pki, make_uplink, a, "tls-host")
    with (
        _operator(pki, b, Role.INSPECTOR) as client,
        pytest.raises(errors.Unavailable) as caught,
    ):
        client.host_snapshot("tls-host", os.getpid())
    assert "refused the forwarded request" in str(caught.value)
    # Nor may it tell a that it lost a host.
    held = a.store.host_owner("tls-host")
    assert held is not None
    claimed = replace(held, replica_id=b.replica.replica_id, epoch=held.epoch + 1)
    with pytest.raises(errors.Unavailable, match="refused the message: a bearer token"):
        b.hub.call(b.peers.fence_host(held, claimed))
    assert a.hub.online() == ["tls-host"]


def test_a_link_whose_tls_handshake_fails_says_why_not_that_nobody_answered(
    pki: Pki,
    other_pki: Path,
    postgres_url: str,
    make_server: Callable[..., FleetServer],
    make_uplink: Callable[..., Uplink],
) -> None:
    a = _secured_replica(pki, make_server, postgres_url, "replica-a")
    # b reaches the others with a replica certificate of another CA: a refuses it in
    # the handshake, before any call.
    path = other_pki / certs.REPLICAS_DIR / "replica-b.pem"
    foreign = (
        certs.Issued(path, path.with_suffix(".key"))
        if path.exists()
        else certs.issue_replica(other_pki, "replica-b", ["localhost", "127.0.0.1"])
    )
    b = _secured_replica(pki, make_server, postgres_url, "replica-b", link=foreign)
    # c presents its own certificate but trusts only the other CA: it refuses a's.
    own = _replica(pki, "replica-c")
    c = make_server(
        store_url=postgres_url,
        replica_credentials=tls.channel_credentials(
            other_pki / "ca.pem", own.cert_path, own.key_path
        ),
    )
    _tls_agent(pki, make_uplink, a, "tls-host")
    with (
        _operator(pki, b, Role.INSPECTOR) as client,
        pytest.raises(errors.Unavailable) as caught,
    ):
        client.host_snapshot("tls-host", os.getpid())
    message = str(caught.value)
    assert f"its holder {a.replica.replica_id}" in message
    assert "does not accept this one's replica certificate" in message
    assert "did not answer" not in message
    held = a.store.host_owner("tls-host")
    assert held is not None
    with pytest.raises(errors.Unavailable) as caught:
        c.hub.call(
            c.peers.take_snapshot(
                held.address,
                "tls-host",
                SnapshotRequest(os.getpid()),
                timeout_seconds=5.0,
                caller=None,
            )
        )
    assert "this server does not trust that one's certificate" in str(caught.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
