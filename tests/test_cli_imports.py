"""The command line imports what the chosen command runs and nothing else: ``--help``
loads neither grpc nor cryptography, and an agent without certificate options never
loads cryptography. Each case runs the real command in a child process under
``python -X importtime``, which lists every module the process imported, lazily
imported ones included."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Planter
from vmatlas.client import Client

# What building a command's parser may load of vmatlas beyond the command's own
# module: the shared defaults and flags. Anything else is some command's implementation.
PARSER_MODULES = {
    "vmatlas",
    "vmatlas.__main__",
    "vmatlas.cli",
    "vmatlas.cli.common",
    "vmatlas.defaults",
    "vmatlas.errors",
    "vmatlas.model",  # process orderings `ps` offers
    "vmatlas.security",
    "vmatlas.security.options",
    "vmatlas.security.tokens",  # the role names `certs token --role` offers
}
HEAVY = ("grpc", "cryptography", "google.protobuf", "psutil", "platformdirs")
COMMANDS = ("agent", "certs", "ps", "snapshot", "diff", "audit", "server", "up", "hosts")


def imported(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines (``import time: self | total | name``)."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                names.add(name)
    return names


def loaded(names: set[str], package: str) -> set[str]:
    return {n for n in names if n == package or n.startswith(package + ".")}


def vmatlas_importtime(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "vmatlas", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, imported(result.stderr)


def test_importtime_lines_are_read(planter: Planter) -> None:
    """The parser below sees lazy imports too, so an empty result means something."""
    result, names = vmatlas_importtime("snapshot", "--local", str(planter.pid), "--format", "csv")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "vmatlas.export" in names
    assert "vmatlas.agents.linux" in names


def test_help_imports_no_command() -> None:
    result, names = vmatlas_importtime("--help")
    assert result.returncode == 0, result.stderr[-2000:]
    for command in COMMANDS:
        assert f"    {command} " in result.stdout
    own = {n for n in names if n.split(".")[0] == "vmatlas"}
    assert "vmatlas.cli" in own
    assert own <= {"vmatlas", "vmatlas.__main__", "vmatlas.cli", "vmatlas.errors"}, sorted(own)
    assert not any(loaded(names, package) for package in HEAVY)


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_imports_that_command_alone(command: str) -> None:
    result, names = vmatlas_importtime(command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: vmatlas {command}")
    heavy = [p for p in HEAVY if loaded(names, p)]
    if command in ("server", "up"):  # the default --data-dir, shown in the help
        heavy.remove("platformdirs")
    assert not heavy, f"{command} --help imported {heavy}"
    allowed = PARSER_MODULES | {f"vmatlas.cli.{command}"}
    if command == "up":  # the server's options
        allowed.add("vmatlas.cli.server")
    own = {n for n in names if n.split(".")[0] == "vmatlas"}
    assert own <= allowed, f"{command} --help imported {sorted(own - allowed)}"


@pytest.mark.parametrize(
    "args",
    [
        ("snapshot", "--local", "--format", "json"),
        ("snapshot", "--local", "--format", "csv", "--residency", "--free"),
        ("snapshot", "--local"),
        ("ps", "--local", "--top", "3"),
    ],
    ids=["snapshot-json", "snapshot-csv-residency", "snapshot-table", "ps"],
)
def test_local_reads_import_no_transport(planter: Planter, args: tuple[str, ...]) -> None:
    argv = [*args[:2], str(planter.pid), *args[2:]] if args[0] == "snapshot" else list(args)
    result, names = vmatlas_importtime(*argv)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not loaded(names, "cryptography")
    assert not loaded(names, "vmatlas.server")
    # The Windows reader loads when the Windows view is asked for.
    assert not loaded(names, "vmatlas.agents.windows")
    if args[0] == "snapshot":  # read and written here: no gRPC, no wire schema
        assert not any(loaded(names, p) for p in ("grpc", "google.protobuf", "vmatlas.v1"))


@pytest.mark.parametrize("uplink", [False, True], ids=["alone", "with-server"])
def test_agent_without_certificates_never_imports_cryptography(
    planter: Planter, uplink: bool
) -> None:
    """A serving agent, asked for a snapshot over real gRPC (so the auth interceptor
    has run), then stopped: cryptography and Python's ssl were never loaded; the server
    package neither."""
    argv = [sys.executable, "-X", "importtime", "-m", "vmatlas", "agent"]
    argv += ["--listen", "127.0.0.1:0", "--host-id", "imports"]
    if uplink:
        # Nothing listens there: the uplink keeps retrying in plain text, as it may on
        # loopback.
        argv += ["--server", "127.0.0.1:9", "--interval", "60"]
    agent = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None
        line = agent.stdout.readline()
        assert line.startswith("vmatlas agent listening on 127.0.0.1:"), line
        with Client(line.split()[-1], timeout=30) as client:
            snap = client.snapshot(planter.pid)
        assert snap.process.pid == planter.pid
        # gRPC's TLS is its own: Python's ssl, and OpenSSL with it, stay unloaded.
        maps = Path(f"/proc/{agent.pid}/maps").read_text()
        assert "/_ssl." not in maps and "libssl" not in maps and "libcrypto" not in maps
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    names = imported(stderr)
    assert loaded(names, "grpc"), "the agent serves gRPC"
    assert "vmatlas.agents.uplink" in names or not uplink
    assert not loaded(names, "cryptography")
    assert not loaded(names, "vmatlas.server")
    assert not loaded(names, "vmatlas.client")
    assert not loaded(names, "vmatlas.agents.windows")
    # Nor the analysis the server and the client run (diff, audit, the layout picture),
    # the exports, the server's checks of received tables, the Prometheus metrics, or
    # psutil.
    for module in (
        "vmatlas.diff",
        "vmatlas.audit",
        "vmatlas.layout",
        "vmatlas.policy",
        "vmatlas.wire_analysis",
        "vmatlas.export",
        "vmatlas.validate",
        "vmatlas.metrics",
        "vmatlas.agents.metrics",
        "psutil",
    ):
        assert not loaded(names, module), module
