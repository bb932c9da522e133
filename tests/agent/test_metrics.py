"""``vmatlas agent --metrics``: a real agent process serving this host's metrics over
real HTTP on loopback, a planted process among them."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import Planter
from tests.server.conftest import Child, children, start
from tests.server.test_http import get, samples, value

__all__ = ["children"]  # the fixture, shared with the server tests

LIMIT = int(Path("/proc/sys/vm/max_map_count").read_text())


def test_agent_serves_its_host_and_a_planted_process(
    tmp_path: Path, planter: Planter, children: list[Child]
) -> None:
    planter.grow(4000)
    # Every process at or above 5% of the limit gets series: the planter's 4000+ maps
    # are, whatever else runs on this machine.
    config = tmp_path / "metrics.toml"
    config.write_text(
        "[metrics]\nwarn_fraction = %f\nmax_processes_per_host = 1000\n" % (3900 / LIMIT)
    )
    agent = start(
        children, "agent", "--listen", "127.0.0.1:0", "--host-id", "node-7",
        "--metrics", "127.0.0.1:0", "--metrics-config", str(config),
    )  # fmt: skip
    url = agent.wait_line(r"metrics on (http://127\.0\.0\.1:\d+/metrics)").group(1)
    status, headers, text = get(url)
    assert status == 200, text
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    found = samples(text)
    assert value(found, "vmatlas_host_max_map_count", host="node-7") == LIMIT
    assert value(found, "vmatlas_host_online", host="node-7") == 1
    assert value(found, "vmatlas_host_processes", host="node-7") > 1
    maps = value(found, "vmatlas_process_map_count", host="node-7", pid=str(planter.pid))
    assert 4000 <= maps <= 4100
    assert (
        value(found, "vmatlas_process_map_count_ratio", host="node-7", pid=str(planter.pid))
        == maps / LIMIT
    )
    assert value(found, "vmatlas_group_map_count_max", host="node-7", group="planter") >= maps
    assert get(url.replace("/metrics", "/other"))[0] == 404
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(20) == 0


def test_agent_metrics_beyond_loopback_need_tls_and_tokens(children: list[Child]) -> None:
    agent = start(
        children, "agent", "--listen", "127.0.0.1:0", "--metrics", "0.0.0.0:0"
    )  # fmt: skip
    out = agent.finish()
    assert agent.proc.returncode == 1
    assert out.startswith("vmatlas agent: refusing to serve address layouts on 0.0.0.0:0")


def test_an_agent_without_metrics_loads_no_metrics_code() -> None:
    code = (
        "import sys; import vmatlas.cli.agent; "
        "bad = [m for m in ('prometheus_client', 'vmatlas.metrics', 'http.server') "
        "if m in sys.modules]; print(bad)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
