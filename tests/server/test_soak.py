"""A soak: 200 agent streams (grpc.aio in one helper process, bench/fleet.py soak)
push every second, twenty pushes each, while clients query; no errors, every push
acknowledged in order and stored, and the server process's memory flat after warm-up.
Bounded in time (about 30 s); deselect with ``-m "not soak"``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vmatlas import errors
from vmatlas.client import Client

from .conftest import Child, start_server

REPO = Path(__file__).resolve().parents[2]
AGENTS = 200
INTERVAL_SECONDS = 1.0
PUSHES = 20
BATCH = 5


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.soak
def test_two_hundred_agents_and_clients_soak(tmp_path: Path, children: list[Child]) -> None:
    server, port = start_server(
        children,
        tmp_path / "data",
        0,
        "--max-agents",
        "250",
        "--heartbeat",
        "5",
        "--offline-after",
        "15",
        "--rate-limit",
        "10000",
        "--rate-burst",
        "10000",
    )
    target = f"127.0.0.1:{port}"
    agents = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.fleet",
            "soak",
            target,
            str(AGENTS),
            str(INTERVAL_SECONDS),
            str(PUSHES),
            str(BATCH),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert agents.stdout is not None
        assert json.loads(agents.stdout.readline()) == {"ready": AGENTS}
        done = threading.Event()
        failures: list[str] = []
        queries = [0]

        def query() -> None:
            with Client(target, timeout=10) as client:
                while not done.is_set():
                    try:
                        assert len(client.hosts()) == AGENTS
                        client.fleet_processes(order="headroom", limit=20)
                        client.history(host="soak-007", pid=1000)
                        queries[0] += 3
                    except (errors.Error, AssertionError) as exc:
                        failures.append(f"{type(exc).__name__}: {exc}")
                    time.sleep(0.05)

        clients = [threading.Thread(target=query) for _ in range(4)]
        for c in clients:
            c.start()
        samples: list[int] = []
        while agents.poll() is None and len(samples) < 2 * (PUSHES * INTERVAL_SECONDS + 15):
            samples.append(rss_bytes(server.proc.pid))
            time.sleep(0.5)
        result = json.loads(agents.stdout.readline())
        done.set()
        for c in clients:
            c.join(15)
    finally:
        if agents.poll() is None:
            agents.kill()
        agents.wait()

    assert result["errors"] == []
    assert failures == []
    # A fixed number of pushes: a loaded machine stretches the soak, never the count.
    assert result["sent"] == AGENTS * PUSHES
    assert result["acked"] == result["sent"]
    # Acknowledged means stored: each push carried one summary of pid 1000.
    with Client(target, timeout=10) as client:
        assert len(client.history(host="soak-007", pid=1000).summaries) == PUSHES
    assert queries[0] > 100
    # Memory flat after warm-up: from a third of the way to the end, under 10% growth.
    warm = samples[len(samples) // 3]
    assert max(samples[-4:]) < warm * 1.10, [s >> 20 for s in samples]
    assert server.proc.poll() is None
