"""`vmatlas agent` and `vmatlas certs` as an operator runs them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.security.conftest import Pki
from vmatlas.client import Client
from vmatlas.security.tokens import Role

VMATLAS = [sys.executable, "-m", "vmatlas"]


def test_agent_refuses_all_interfaces_without_tls_and_tokens() -> None:
    result = subprocess.run(
        [*VMATLAS, "agent", "--listen", "0.0.0.0:0"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "refusing to serve address layouts on 0.0.0.0:0 without TLS and authentication" in (
        result.stderr
    )


def test_agent_refuses_tokens_without_tls(pki: Pki) -> None:
    result = subprocess.run(
        [*VMATLAS, "agent", "--listen", "0.0.0.0:0", "--tokens", str(pki.tokens_file)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "without TLS;" in result.stderr


def _start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*VMATLAS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline()


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    return stderr


def test_agent_serves_all_interfaces_with_tls_and_tokens_from_a_config(
    pki: Pki, tmp_path: Path
) -> None:
    config = tmp_path / "vmatlas.toml"
    config.write_text(
        "[agent]\n"
        'listen = "0.0.0.0:0"\n'
        f'tls-cert = "{pki.server_cert}"\n'
        f'tls-key = "{pki.server_key}"\n'
        f'tokens = "{pki.tokens_file}"\n'
    )
    proc, line = _start(["agent", "--config", str(config)])
    try:
        assert line.startswith("vmatlas agent listening on 0.0.0.0:"), line
        port = line.rsplit(":", 1)[1].strip()
        with Client(f"localhost:{port}", ca=pki.ca, token=pki.tokens[Role.VIEWER]) as c:
            assert c.host().host_id
    finally:
        _stop(proc)


def test_insecure_agent_starts_and_says_so() -> None:
    proc, line = _start(["agent", "--listen", "0.0.0.0:0", "--insecure"])
    assert line.startswith("vmatlas agent listening on 0.0.0.0:"), line
    with Client(f"127.0.0.1:{line.rsplit(':', 1)[1].strip()}") as c:
        assert c.host().host_id
    assert "INSECURE" in _stop(proc)


def test_certs_commands_make_a_usable_pki(tmp_path: Path) -> None:
    pki = tmp_path / "pki"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*VMATLAS, "certs", *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return result

    run("init", str(pki), "--name", "vmatlas.example", "--name", "10.0.0.5")
    run("agent", str(pki), "web-01")
    run("client", str(pki), "alice")
    token = run("token", str(pki), "alice", "--role", "viewer").stdout.strip()
    assert token.startswith("vmat_") and len(token) > 40
    stored = json.loads((pki / "tokens.json").read_text())
    assert [t["name"] for t in stored["tokens"]] == ["alice"]
    assert token not in (pki / "tokens.json").read_text()
    for name in ("ca.pem", "server.pem", "agents/web-01.pem", "clients/alice.pem"):
        assert (pki / name).read_text().startswith("-----BEGIN CERTIFICATE-----")
    for name in ("ca.key", "server.key", "agents/web-01.key", "clients/alice.key", "tokens.json"):
        assert (pki / name).stat().st_mode & 0o077 == 0, name
    run("revoke-token", str(pki), "alice")
    assert json.loads((pki / "tokens.json").read_text())["tokens"] == []
