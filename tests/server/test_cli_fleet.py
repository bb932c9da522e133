"""The fleet through the command line: hosts, ps across hosts and on one host."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Planter
from tests.server.conftest import wait_for
from vmatlas.agents.uplink import Uplink
from vmatlas.client import Client
from vmatlas.server.app import FleetServer


def vmatlas(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "vmatlas", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_ps_across_hosts_and_on_one(
    server: FleetServer,
    make_uplink: Callable[..., Uplink],
    planter_binary: Path,
    tmp_path: Path,
) -> None:
    # The children run under a name no other process here carries (other suites run
    # planters too), so --name and --top see only them: a big one and a small one.
    name = f"ps{secrets.token_hex(6)}"  # 14 characters: the kernel keeps 15
    binary = tmp_path / name
    shutil.copy2(planter_binary, binary)
    planter, small = Planter(binary), Planter(binary)
    try:
        _ps_across_hosts_and_on_one(server, make_uplink, name, planter, small)
    finally:
        planter.close()
        small.close()


def _ps_across_hosts_and_on_one(
    server: FleetServer,
    make_uplink: Callable[..., Uplink],
    name: str,
    planter: Planter,
    small: Planter,
) -> None:
    planter.grow(2000)
    for host_id in ("alpha", "beta"):
        make_uplink(server.address, host_id)
    with Client(server.address) as client:
        wait_for(lambda: all(h.process_count for h in client.hosts()) and len(client.hosts()) == 2)
    target = ["--target", server.address]

    hosts = vmatlas("hosts", *target).splitlines()
    assert hosts[0].split()[:2] == ["HOST", "STATE"]
    assert [line.split()[:2] for line in hosts[1:]] == [["alpha", "online"], ["beta", "online"]]

    doc = json.loads(vmatlas("ps", "--all-hosts", *target, "--format", "json"))
    mine = [p for p in doc["processes"] if p["process"]["pid"] == planter.pid]
    assert {p["host_id"] for p in mine} == {"alpha", "beta"}
    counts = [p["summary"]["map_count"] for p in doc["processes"]]
    assert counts == sorted(counts, reverse=True)

    assert {p["host_id"] for p in doc["processes"] if p["process"]["pid"] == small.pid} == {
        "alpha",
        "beta",
    }

    # Of the two children, --top keeps the big one on each host.
    table = vmatlas("ps", "--all-hosts", *target, "--name", name, "--top", "2")
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["HOST", "PID", "NAME"]
    assert {line.split()[0] for line in lines[1:3]} == {"alpha", "beta"}
    assert {int(line.split()[1]) for line in lines[1:3]} == {planter.pid}
    assert {line.split()[2] for line in lines[1:3]} == {name}

    one = vmatlas("ps", "--host", "beta", *target, "--name", name, "--top", "1").splitlines()
    assert one[0].split()[:2] == ["PID", "NAME"]
    assert int(one[1].split()[0]) == planter.pid
    assert one[-1].startswith("(host beta: 1 processes shown")
