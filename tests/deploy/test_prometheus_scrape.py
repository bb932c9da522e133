"""A real Prometheus (Debian's package) scrapes a running vmatlas server on loopback:
it ingests the series of a planted process, and every PromQL expression of the
dashboard and the rules evaluates without error against it."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.conftest import Planter, wait_for
from tests.deploy.conftest import DEPLOY
from tests.server.test_http import OnlyPids
from vmatlas.agents.uplink import Uplink
from vmatlas.server.app import FleetServer, ServerConfig
from vmatlas.server.http.listener import HttpConfig

DASHBOARD = DEPLOY / "grafana" / "vmatlas-dashboard.json"
RULES = DEPLOY / "prometheus" / "vmatlas-rules.yml"
HOST = "scraped-host"


def listening_port(pid: int) -> int | None:
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return None
    ports = [c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN]
    return ports[0] if ports else None


class Prometheus:
    def __init__(self, binary: str, directory: Path, target: str):
        config = directory / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {"job_name": "vmatlas", "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        self.log = directory / "prometheus.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    "--web.listen-address=127.0.0.1:0",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        port = wait_for(lambda: self._port(), 60, "Prometheus listening")
        self.url = f"http://127.0.0.1:{port}"
        wait_for(self._ready, 60, "Prometheus ready")

    def _port(self) -> int | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log.read_text()}")
        return listening_port(self.proc.pid)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def query(self, expr: str) -> Any:
        return self.api("query", query=expr)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def scraped(
    tmp_path: Path, planter: Planter, prometheus_binary: str
) -> Iterator[tuple[Prometheus, Planter]]:
    planter.grow(3000)
    server = FleetServer(
        ServerConfig(
            listen="127.0.0.1:0",
            data_dir=str(tmp_path / "data"),
            retain_seconds=0.0,
            http=HttpConfig("127.0.0.1:0"),
        )
    ).start()
    assert server.http is not None
    uplink = Uplink(
        OnlyPids([planter.pid], host_id=HOST),
        server.address,
        interval_seconds=1.0,
        backoff_max_seconds=0.5,
    ).start()
    prometheus = None
    try:
        prometheus = Prometheus(prometheus_binary, tmp_path, f"127.0.0.1:{server.http.port}")
        yield prometheus, planter
    finally:
        if prometheus is not None:
            prometheus.stop()
        uplink.stop()
        server.stop(0.5)


def dashboard_expressions() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def rule_expressions() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def test_prometheus_ingests_the_planted_process_and_every_expression_evaluates(
    scraped: tuple[Prometheus, Planter],
) -> None:
    prometheus, planter = scraped
    selector = f'vmatlas_process_map_count{{host="{HOST}", pid="{planter.pid}"}}'

    def ingested() -> list[Any]:
        result: list[Any] = prometheus.query(selector)["data"]["result"]
        return result

    result = wait_for(ingested, 60, "the planted process's series in Prometheus")
    assert result[0]["metric"]["name"] == "planter"
    assert 3000 <= float(result[0]["value"][1]) <= 3100
    assert (
        prometheus.query(f'vmatlas_host_online{{host="{HOST}"}}')["data"]["result"][0]["value"][1]
        == "1"
    )
    # Every expression, with the dashboard's variables as Grafana would fill them in.
    variables = {"$host": HOST, "$pid": str(planter.pid), "$__rate_interval": "1m"}
    expressions = dashboard_expressions() + rule_expressions()
    assert len(expressions) > 30
    process_results = 0
    for expr in expressions:
        concrete = expr
        for name, value in variables.items():
            concrete = concrete.replace(name, value)
        assert "$" not in concrete, concrete
        answer = prometheus.query(concrete)
        assert answer["status"] == "success", (concrete, answer)
        if f'pid="{planter.pid}"' in concrete and answer["data"]["result"]:
            process_results += 1
    # The process panels find the planted process (their variables match the labels).
    assert process_results >= 2
    # The dashboard's variable queries name series that exist.
    series = prometheus.api("series", **{"match[]": "vmatlas_host_info"})["data"]
    assert HOST in {s["host"] for s in series}

    # Every rule of the file loaded and evaluated without error.
    def evaluated() -> list[Any]:
        groups = prometheus.api("rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        done = all(r.get("lastEvaluation", "").startswith("20") for r in rules)
        return rules if done and rules else []

    rules = wait_for(evaluated, 30, "every rule evaluated once")
    assert len(rules) == len(rule_expressions())
    assert {r["health"] for r in rules} == {"ok"}, [r.get("lastError") for r in rules]


def test_dashboard_is_grafana_json_with_its_three_views() -> None:
    doc = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]
    assert rows[:3] == ["Fleet overview", "Host $host", "Process $pid on $host"]
    assert {v["name"] for v in doc["templating"]["list"]} == {"datasource", "host", "pid"}
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    forecast = [e for e in dashboard_expressions() if e.startswith("predict_linear")]
    assert forecast and all(re.search(r'pid="\$pid"', e) for e in forecast)
    # Panels never overlap on the grid.
    cells: set[tuple[int, int]] = set()
    for p in doc["panels"]:
        g = p["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, p["title"]
        cells |= mine
