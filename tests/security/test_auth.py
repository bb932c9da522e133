"""The auth interceptor over real gRPC on loopback: tokens, roles, the policy, rate
limits, and what a viewer can and cannot receive."""

from __future__ import annotations

import os
from typing import Any

import grpc
import pytest

from tests.security.conftest import Pki, ServeAgent, tls_options
from vmatlas import errors
from vmatlas.client import Client
from vmatlas.security import auth, redact, tokens
from vmatlas.security.policy import AGENT_POLICY
from vmatlas.security.tokens import Role
from vmatlas.v1 import agent_pb2, agent_pb2_grpc

GET_SNAPSHOT = "/vmatlas.v1.AgentService/GetSnapshot"


def client(target: str, pki: Pki, role: Role | None, **more: Any) -> Client:
    token = pki.tokens[role] if role is not None else None
    return Client(target, ca=pki.ca, token=token, timeout=10, **more)


def raw_call(target: str, pki: Pki, method: str, request: bytes, token: str | None) -> Any:
    channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(pki.ca.read_bytes()))
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        return channel.unary_unary(method)(request, timeout=10, metadata=metadata)
    finally:
        channel.close()


def test_no_token_is_unauthenticated(pki: Pki, serve_agent: ServeAgent) -> None:
    target = serve_agent(**tls_options(pki))
    with client(target, pki, None) as c, pytest.raises(errors.Unauthenticated):
        c.host()
    with pytest.raises(grpc.RpcError) as info:
        raw_call(target, pki, GET_SNAPSHOT, b"", None)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_unknown_token_is_unauthenticated(pki: Pki, serve_agent: ServeAgent) -> None:
    target = serve_agent(**tls_options(pki))
    with (
        Client(target, ca=pki.ca, token=tokens.new_token()) as c,
        pytest.raises(errors.Unauthenticated, match="invalid or revoked"),
    ):
        c.host()


def test_viewer_is_denied_a_full_snapshot(pki: Pki, serve_agent: ServeAgent) -> None:
    target = serve_agent(**tls_options(pki))
    with (
        client(target, pki, Role.VIEWER) as c,
        pytest.raises(errors.AccessDenied, match="needs inspector"),
    ):
        c.snapshot(os.getpid())
    with pytest.raises(grpc.RpcError) as info:
        request = agent_pb2.GetSnapshotRequest(pid=os.getpid()).SerializeToString()
        raw_call(target, pki, GET_SNAPSHOT, request, pki.tokens[Role.VIEWER])
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_inspector_gets_the_full_snapshot(pki: Pki, serve_agent: ServeAgent) -> None:
    target = serve_agent(**tls_options(pki))
    for role in (Role.INSPECTOR, Role.ADMIN):
        with client(target, pki, role) as c:
            snapshot = c.snapshot(os.getpid())
        assert snapshot.process.pid == os.getpid()
        assert len(snapshot.regions) > 0 and snapshot.regions.start[0] > 0


def test_viewer_responses_carry_no_addresses(pki: Pki, serve_agent: ServeAgent) -> None:
    target = serve_agent(**tls_options(pki))
    channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(pki.ca.read_bytes()))
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    metadata = (("authorization", f"Bearer {pki.tokens[Role.VIEWER]}"),)
    host = stub.GetHost(agent_pb2.GetHostRequest(), metadata=metadata, timeout=10)
    listing = stub.ListProcesses(agent_pb2.ListProcessesRequest(), metadata=metadata, timeout=10)
    watch = stub.WatchProcess(
        agent_pb2.WatchProcessRequest(pid=os.getpid(), interval_seconds=60),
        metadata=metadata,
        timeout=10,
    )
    first = next(watch)
    watch.cancel()
    channel.close()
    assert host.host.host_id == "secured"
    assert any(p.process.pid == os.getpid() for p in listing.processes)
    assert first.summary.process.pid == os.getpid()
    for response in (host, listing, first):
        assert redact.address_fields_set(response) == []


def test_method_outside_the_policy_is_refused(pki: Pki, serve_agent: ServeAgent) -> None:
    policy = {m: r for m, r in AGENT_POLICY.items() if not m.endswith("/GetHost")}
    target = serve_agent(policy, **tls_options(pki))
    with (
        client(target, pki, Role.ADMIN) as c,
        pytest.raises(errors.AccessDenied, match="not in the access policy"),
    ):
        c.host()
        assert c.processes(limit=1)  # the rest of the policy still serves
    with pytest.raises(grpc.RpcError) as info:
        raw_call(target, pki, "/vmatlas.v1.AgentService/NoSuchMethod", b"", pki.tokens[Role.ADMIN])
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_rate_limit_trips_resource_exhausted(pki: Pki, serve_agent: ServeAgent) -> None:
    target = serve_agent(**tls_options(pki, rate_limit=0.01, rate_burst=3))
    with client(target, pki, Role.VIEWER) as viewer, client(target, pki, Role.ADMIN) as admin:
        for _ in range(3):
            viewer.host()
        with pytest.raises(errors.ResourceExhausted, match="rate limit"):
            viewer.host()
        admin.host()  # buckets are per caller


def test_tokens_file_changes_apply_without_restart(
    pki: Pki, serve_agent: ServeAgent, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(tokens, "RELOAD_CHECK_SECONDS", 0.0)
    path = tmp_path / "tokens.json"
    first = tokens.add_token(path, "first", Role.VIEWER)
    target = serve_agent(**tls_options(pki, tokens=str(path)))
    with Client(target, ca=pki.ca, token=first) as c:
        c.host()
    second = tokens.add_token(path, "second", Role.VIEWER)
    tokens.revoke_token(path, "first")
    with Client(target, ca=pki.ca, token=second) as c:
        c.host()
    with Client(target, ca=pki.ca, token=first) as c, pytest.raises(errors.Unauthenticated):
        c.host()
    path.write_text("{not json")
    with Client(target, ca=pki.ca, token=second) as c, pytest.raises(errors.Unauthenticated):
        c.host()  # an unreadable file refuses everyone


def test_without_tokens_loopback_callers_are_anonymous_admins(serve_agent: ServeAgent) -> None:
    target = serve_agent()
    with Client(target, timeout=10) as c:
        assert len(c.snapshot(os.getpid()).regions) > 0


def test_client_refuses_a_token_in_clear_beyond_loopback() -> None:
    with pytest.raises(errors.FailedPrecondition, match="without TLS"):
        Client("192.0.2.1:50551", token="vmat_x")


def test_token_file_holds_only_hashes(pki: Pki) -> None:
    text = pki.tokens_file.read_text()
    assert all(token not in text for token in pki.tokens.values())
    assert tokens.hash_token(pki.tokens[Role.VIEWER]) in text


def test_bearer_token_parsing() -> None:
    assert auth.bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert auth.bearer_token([("authorization", "bearer  abc ")]) == "abc"
    assert auth.bearer_token([("authorization", "Basic abc")]) == ""
    assert auth.bearer_token([("x-other", "Bearer abc")]) is None
