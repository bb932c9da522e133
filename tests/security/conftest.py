"""A fleet PKI made by vmatlas.security.certs in a temporary directory, and agents
served over real gRPC on loopback with the same security the `vmatlas agent` command
builds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from vmatlas.agents.linux import LinuxReader
from vmatlas.agents.service import SERVICE_NAME, AgentServicer, add_to_server
from vmatlas.grpcutil import build_server
from vmatlas.security import certs
from vmatlas.security.options import security_namespace, server_security
from vmatlas.security.policy import AGENT_POLICY
from vmatlas.security.tokens import Role, add_token


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    tokens_file: Path
    tokens: dict[Role, str]

    def agent(self, host_id: str) -> certs.Issued:
        path = self.dir / certs.AGENTS_DIR / f"{host_id}.pem"
        if path.exists():
            return certs.Issued(path, path.with_suffix(".key"))
        return certs.issue_agent(self.dir, host_id)

    def client(self, name: str) -> certs.Issued:
        path = self.dir / certs.CLIENTS_DIR / f"{name}.pem"
        if path.exists():
            return certs.Issued(path, path.with_suffix(".key"))
        return certs.issue_client(self.dir, name)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = certs.init_ca(directory)
    server = certs.issue_server(directory)
    tokens_file = directory / certs.TOKENS_FILE
    tokens = {role: add_token(tokens_file, f"{role}-user", role) for role in Role}
    return Pki(directory, ca.cert_path, server.cert_path, server.key_path, tokens_file, tokens)


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated CA with an agent and a client certificate."""
    directory = tmp_path_factory.mktemp("other-pki")
    certs.init_ca(directory)
    certs.issue_agent(directory, "host-a")
    certs.issue_client(directory, "mallory")
    return directory


ServeAgent = Callable[..., str]


@pytest.fixture
def serve_agent(pki: Pki) -> Iterator[ServeAgent]:
    """Start an agent on 127.0.0.1 with security options (as the command's flags);
    returns its ``localhost:PORT`` target."""
    servers: list[grpc.Server] = []

    def start(policy: Any = AGENT_POLICY, **options: Any) -> str:
        security = server_security(security_namespace(**options), policy, listen="127.0.0.1:0")
        server, port, _ = build_server(
            services=[
                (
                    add_to_server,
                    AgentServicer(LinuxReader(host_id="secured")),
                    SERVICE_NAME,
                )
            ],
            address="127.0.0.1:0",
            credentials=security.credentials,
            interceptors=security.interceptors,
        )
        server.start()
        servers.append(server)
        return f"localhost:{port}"

    yield start
    for server in servers:
        server.stop(None)


def tls_options(pki: Pki, *, mutual: bool = False, **more: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "tls_cert": str(pki.server_cert),
        "tls_key": str(pki.server_key),
        "tokens": str(pki.tokens_file),
    }
    if mutual:
        options["tls_client_ca"] = str(pki.ca)
    return {**options, **more}
