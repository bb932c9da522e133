"""The server's HTTP listener over real HTTP on loopback: /metrics in the Prometheus
text format with the server's health and the fleet's hosts, groups and processes read
from a real agent's pushes; access failing closed; start and stop with the server."""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Planter
from tests.server.conftest import Child, start, start_server, wait_for
from vmatlas import errors
from vmatlas.agents.linux import LinuxReader
from vmatlas.agents.uplink import Uplink
from vmatlas.metrics import MetricsSettings
from vmatlas.server.app import FleetServer
from vmatlas.server.http.listener import HttpConfig, HttpListener, HttpServices

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(url: str, token: str | None = None, **kw: object) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=15, **kw) as response:  # type: ignore[arg-type]
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and sorted labels."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: Samples, metric: str, **labels: str) -> float:
    """The one sample of ``metric`` whose labels include ``labels``."""
    matches = [
        v
        for (n, ls), v in found.items()
        if n == metric and all(dict(ls).get(k) == want for k, want in labels.items())
    ]
    assert len(matches) == 1, (metric, labels, matches)
    return matches[0]


class OnlyPids(LinuxReader):
    """The real Linux reader, reading only the given processes (the machine's other
    processes would make the selection depend on whatever else runs here)."""

    def __init__(self, pids: list[int], host_id: str):
        super().__init__(host_id=host_id)
        self._only = sorted(pids)

    def pids(self) -> list[int]:
        return list(self._only)


def test_metrics_show_server_health_and_a_planted_process(
    make_server: Callable[..., FleetServer], planter: Planter
) -> None:
    planter.grow(3000)
    server = make_server(http=HttpConfig("127.0.0.1:0"), metrics=MetricsSettings(top_processes=1))
    assert server.http_url is not None and server.http_url.startswith("http://127.0.0.1:")
    reader = OnlyPids([planter.pid, *_own_pids()], host_id="metrics-host")
    uplink = Uplink(reader, server.address, interval_seconds=60.0, backoff_max_seconds=0.5)
    uplink.start()
    try:
        wait_for(lambda: uplink.acked_sequence, what="the first push stored")
        status, headers, text = get(server.http_url + "metrics")
    finally:
        uplink.stop()
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    found = samples(text)
    limit = int(Path("/proc/sys/vm/max_map_count").read_text())
    maps = reader.process_summary(planter.pid).summary.map_count
    assert value(found, "vmatlas_server_agents_connected") == 1
    assert value(found, "vmatlas_server_summary_pushes_total", outcome="stored") >= 1
    assert value(found, "vmatlas_server_summary_pushes_total", outcome="refused") == 0
    assert (
        value(
            found,
            "vmatlas_server_store_operation_duration_seconds_count",
            operation="put_summaries",
        )
        >= 1
    )
    assert value(found, "vmatlas_build_info") == 1
    assert value(found, "vmatlas_host_online", host="metrics-host") == 1
    assert value(found, "vmatlas_host_max_map_count", host="metrics-host") == limit
    assert value(found, "vmatlas_host_processes", host="metrics-host") == 1 + len(_own_pids())
    # The planter is the process closest to its limit: the one of top_processes=1.
    pid = str(planter.pid)
    assert value(found, "vmatlas_process_map_count", host="metrics-host", pid=pid) == pytest.approx(
        maps, abs=2
    )
    assert value(
        found, "vmatlas_process_map_count_ratio", host="metrics-host", pid=pid, name="planter"
    ) == pytest.approx(maps / limit, abs=2 / limit)
    assert [ls for (n, ls) in found if n == "vmatlas_process_map_count"] == [
        (("host", "metrics-host"), ("name", "planter"), ("pid", pid))
    ]
    assert value(found, "vmatlas_host_map_count_ratio_max", host="metrics-host") == pytest.approx(
        maps / limit, abs=2 / limit
    )
    assert value(found, "vmatlas_group_processes", host="metrics-host", group="planter") == 1
    assert value(found, "vmatlas_group_map_count_max", host="metrics-host", group="planter") >= 3000


def _own_pids() -> list[int]:
    import os

    return [os.getpid()]


def test_unknown_paths_are_404_and_unmarked_routes_are_refused(tmp_path: Path) -> None:
    async def unmarked(_request: web.Request) -> web.Response:
        return web.Response(text="should never be served")

    def hook(app: web.Application) -> None:
        app.router.add_get("/unmarked", unmarked)

    listener = HttpListener(HttpConfig("127.0.0.1:0"), HttpServices(store=None), [hook]).start()
    try:
        status, _, body = get(f"{listener.url}unmarked")
        assert status == 403
        assert '"reason": "permission_denied"' in body
        assert get(f"{listener.url}nothing-here")[0] == 404
    finally:
        listener.stop()


def test_a_taken_http_port_is_refused_and_the_grpc_port_released(
    make_server: Callable[..., FleetServer], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(errors.Unavailable, match=f"cannot listen on {address}"):
            make_server(http=HttpConfig(address), data_dir=str(tmp_path / "taken"))
    # The store was closed and nothing is held: the same data directory serves again.
    assert make_server(http=HttpConfig("127.0.0.1:0"), data_dir=str(tmp_path / "taken")).http


def test_server_command_serves_http_by_flag_and_turns_it_off(
    tmp_path: Path, children: list[Child]
) -> None:
    server, _port = start_server(children, tmp_path / "on")
    url = server.wait_line(r"HTTP on (http://127\.0\.0\.1:\d+/)").group(1)
    status, _, text = get(url + "metrics")
    assert status == 200 and "vmatlas_server_agents_connected 0.0" in text
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0

    off, _port = start_server(children, tmp_path / "off", 0, "--http", "off")
    off.wait_line(r"data in")
    off.proc.send_signal(signal.SIGTERM)
    assert off.proc.wait(20) == 0
    assert not any("HTTP on" in line for line in off.lines)


def test_http_beyond_loopback_needs_tls_and_tokens_or_insecure(
    tmp_path: Path, children: list[Child]
) -> None:
    refused = start(
        children, "server", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
        "--http", "0.0.0.0:0",
    )  # fmt: skip
    out = refused.finish()
    assert refused.proc.returncode == 1, out
    assert out.startswith("vmatlas server: refusing to serve address layouts on 0.0.0.0:0")
    assert len(out.strip().splitlines()) == 1

    insecure = start(
        children, "server", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
        "--http", "0.0.0.0:0", "--insecure",
    )  # fmt: skip
    insecure.wait_line(r"HTTP on http://0\.0\.0\.0:\d+/")
    assert any("INSECURE" in line and "0.0.0.0:0" in line for line in insecure.lines)
    insecure.proc.send_signal(signal.SIGTERM)
    assert insecure.proc.wait(20) == 0


def test_up_prints_its_http_url(tmp_path: Path, children: list[Child]) -> None:
    up = start(
        children, "up", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
        "--data-dir", str(tmp_path), "--interval", "1", "--refresh", "30",
    )  # fmt: skip
    url = up.wait_line(r"web view and metrics on (http://127\.0\.0\.1:\d+/)").group(1)
    host_id = up.wait_line(r"local agent is host (\S+)").group(1)

    def host_reported() -> bool:
        found = samples(get(url + "metrics")[2])
        return any(
            n == "vmatlas_host_processes" and dict(ls).get("host") == host_id and v > 0
            for (n, ls), v in found.items()
        )

    wait_for(host_reported, 30, "the local agent's host on /metrics")
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(20) == 0
