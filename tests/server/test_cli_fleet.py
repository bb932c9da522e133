"""The fleet through the command line: hosts, ps across hosts and on one host."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

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
    server: FleetServer, make_uplink: Callable[..., Uplink], planter: Planter
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

    # Whatever else runs on this machine, the planted child is the biggest "planter".
    table = vmatlas("ps", "--all-hosts", *target, "--name", "planter", "--top", "2")
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["HOST", "PID", "NAME"]
    assert {line.split()[0] for line in lines[1:3]} == {"alpha", "beta"}
    assert {int(line.split()[1]) for line in lines[1:3]} == {planter.pid}

    one = vmatlas("ps", "--host", "beta", *target, "--name", "planter", "--top", "1").splitlines()
    assert one[0].split()[:2] == ["PID", "NAME"]
    assert int(one[1].split()[0]) == planter.pid
    assert one[-1].startswith("(host beta: 1 processes shown")
