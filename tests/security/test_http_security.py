"""The HTTP listener's security over real HTTPS on loopback: the server's certificate,
the same tokens as gRPC, and the scrape role that reads /metrics and nothing else."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from aiohttp import web

from tests.security.conftest import Pki
from tests.server.test_http import get
from vmatlas import errors
from vmatlas.client import Client
from vmatlas.security.options import security_namespace, server_security
from vmatlas.security.policy import SERVER_POLICY
from vmatlas.security.tokens import Role, TokenStore
from vmatlas.server.app import FleetServer, ServerConfig
from vmatlas.server.http.access import principal, requires
from vmatlas.server.http.listener import HttpConfig, HttpListener, HttpServices


@pytest.fixture
def secured(pki: Pki, tmp_path: Path) -> Iterator[FleetServer]:
    options = {
        "tls_cert": str(pki.server_cert),
        "tls_key": str(pki.server_key),
        "tokens": str(pki.tokens_file),
    }
    security = server_security(security_namespace(**options), SERVER_POLICY, listen="127.0.0.1:0")
    server = FleetServer(
        ServerConfig(
            listen="127.0.0.1:0",
            data_dir=str(tmp_path / "data"),
            credentials=security.credentials,
            interceptors=security.interceptors,
            http=HttpConfig(
                "localhost:0",
                tls_cert=str(pki.server_cert),
                tls_key=str(pki.server_key),
                tokens=security.tokens,
            ),
        )
    ).start()
    yield server
    server.stop(0.5)


def trusting(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


def test_metrics_over_tls_for_every_role_and_no_one_else(pki: Pki, secured: FleetServer) -> None:
    url = secured.http_url
    assert url is not None and url.startswith("https://localhost:")
    context = trusting(pki)
    for role in Role:
        status, _, text = get(url + "metrics", pki.tokens[role], context=context)
        assert status == 200, (role, text)
        assert "vmatlas_build_info" in text
    status, headers, body = get(url + "metrics", context=context)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert '"reason": "unauthenticated"' in body
    assert get(url + "metrics", "vmat_not-a-token", context=context)[0] == 401
    # Without TLS the listener answers nothing useful: the handshake is refused.
    with pytest.raises(OSError):
        get(url.replace("https://", "http://") + "metrics")


def test_a_scrape_token_opens_no_grpc_method(pki: Pki, secured: FleetServer) -> None:
    with (
        Client(
            f"localhost:{secured.port}", ca=pki.ca, token=pki.tokens[Role.SCRAPE], timeout=10
        ) as scraper,
        pytest.raises(errors.AccessDenied) as refused,
    ):
        scraper.hosts()
    assert "scrape may not call" in str(refused.value)
    with Client(
        f"localhost:{secured.port}", ca=pki.ca, token=pki.tokens[Role.VIEWER], timeout=10
    ) as viewer:
        assert viewer.hosts() == []


def test_routes_keep_their_roles(pki: Pki) -> None:
    @requires(Role.VIEWER)
    async def fleet_page(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {principal(request)}")

    def hook(app: web.Application) -> None:
        app.router.add_get("/fleet", fleet_page)

    listener = HttpListener(
        HttpConfig("127.0.0.1:0", tokens=TokenStore(pki.tokens_file)),
        HttpServices(store=None),
        [hook],
    ).start()
    try:
        status, _, body = get(listener.url + "fleet", pki.tokens[Role.SCRAPE])
        assert status == 403 and "role scrape may not read /fleet" in body
        status, _, body = get(listener.url + "fleet", pki.tokens[Role.VIEWER])
        assert (status, body) == (200, "hello viewer-user (viewer)")
    finally:
        listener.stop()


def test_grpc_refuses_a_scrape_token_with_permission_denied(pki: Pki, secured: FleetServer) -> None:
    channel = grpc.secure_channel(
        f"localhost:{secured.port}", grpc.ssl_channel_credentials(pki.ca.read_bytes())
    )
    with channel:
        call = channel.unary_unary("/vmatlas.v1.FleetService/ListHosts")
        with pytest.raises(grpc.RpcError) as refused:
            call(
                b"", metadata=(("authorization", f"Bearer {pki.tokens[Role.SCRAPE]}"),), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_agent_metrics_over_tls_need_a_scrape_token(pki: Pki) -> None:
    from vmatlas.agents.linux import LinuxReader
    from vmatlas.agents.metrics import AgentMetricsServer

    metrics = AgentMetricsServer(
        LinuxReader(host_id="tls-node"),
        "localhost:0",
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tokens=TokenStore(pki.tokens_file),
    ).start()
    try:
        assert metrics.url.startswith("https://localhost:")
        context = trusting(pki)
        status, _, text = get(metrics.url, pki.tokens[Role.SCRAPE], context=context)
        assert status == 200 and 'vmatlas_host_online{host="tls-node"} 1.0' in text
        assert get(metrics.url, context=context)[0] == 401
        assert get(metrics.url, "vmat_wrong", context=context)[0] == 401
    finally:
        metrics.stop()
