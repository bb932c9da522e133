"""The AnalysisService end to end: a real server, an agent uplink reporting this host,
planted children, and the client's diff and audit calls over loopback gRPC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import grpc
import pytest

from tests.conftest import wait_for
from vmatlas import errors
from vmatlas.audit import Check, Severity
from vmatlas.diff import ChangeKind, DiffMode
from vmatlas.policy import Policy, TrendRule
from vmatlas.v1 import analysis_pb2, analysis_pb2_grpc

PAGE = os.sysconf("SC_PAGE_SIZE")
HOST = "analysis-host"


def stored_summaries(client, pid: int) -> int:
    try:
        return len(client.history(host=HOST, pid=pid).summaries)
    except errors.NotFound:  # the agent has not registered yet
        return 0


def pushed(client) -> bool:
    try:
        return bool(client.fleet_processes(host=HOST))
    except errors.NotFound:
        return False


class SteadyGrowth:
    """Adds ``step`` regions to a planter child every ``period`` seconds until stopped,
    on a fixed schedule; ``rate`` is the regions per second actually planted."""

    def __init__(self, child, step: int, period: float):
        self.child, self.step, self.period = child, step, period
        self.planted = 0
        self.first = self.last = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        k = 0
        while not self._stop.is_set():
            self.child.grow(self.step)
            now = time.monotonic()
            if k == 0:
                self.first = now
            self.last = now
            self.planted += self.step if k else 0
            k += 1
            self._stop.wait(max(0.0, start + k * self.period - time.monotonic()))

    @property
    def rate(self) -> float:
        return self.planted / (self.last - self.first)

    def __enter__(self) -> SteadyGrowth:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_audit_forecasts_a_growing_child_and_flags_one_near_the_limit(
    server, client, make_uplink, make_planter, reader
):
    limit = reader.host().max_map_count
    near = make_planter()
    near.grow(int(0.85 * limit))  # above the default 80% critical line
    grower = make_planter()
    with SteadyGrowth(grower, step=40, period=0.25) as growth:
        make_uplink(server.address, HOST, interval_seconds=0.5)
        wait_for(
            lambda: stored_summaries(client, grower.pid) >= 10,
            timeout=30,
            what="ten stored summaries of the growing child",
        )
        report = client.audit()
        rate = growth.rate

    [trend] = [
        f for f in report.findings if f.check == Check.MAP_COUNT_TREND and f.pid == grower.pid
    ]
    truth = (limit - trend.value) / rate
    assert trend.forecast_seconds is not None
    assert abs(trend.forecast_seconds - truth) <= 0.2 * truth, (trend, rate)
    assert trend.host_id == HOST

    [near_limit] = [f for f in report.findings if f.check == Check.MAP_COUNT and f.pid == near.pid]
    assert near_limit.severity == Severity.CRITICAL
    assert near_limit.limit == limit
    assert report.findings[0].severity == Severity.CRITICAL
    [rec] = [r for r in report.recommendations if r.group == "linux"]
    assert rec.peak_map_count >= near_limit.value
    assert rec.recommended_max_map_count >= 2 * near_limit.value


def test_audit_policy_travels_and_bad_policies_are_refused(server, client, make_uplink):
    make_uplink(server.address, HOST, interval_seconds=60)
    wait_for(lambda: pushed(client), what="a push")
    strict = Policy(trend=TrendRule(min_points=1000))
    report = client.audit(policy=strict)
    assert not [f for f in report.findings if f.check == Check.MAP_COUNT_TREND]
    assert report.host_count == 1

    with grpc.insecure_channel(server.address) as channel:
        stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
        request = analysis_pb2.AuditRequest(policy_json='{"trend": {"min_pointz": 3}}')
        with pytest.raises(grpc.RpcError) as caught:
            stub.Audit(request, timeout=15)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("policy_json: trend.min_pointz")


def test_diff_of_stored_snapshots_by_id_and_by_host_pid(server, client, make_uplink, planter):
    make_uplink(server.address, HOST, interval_seconds=60)
    wait_for(lambda: pushed(client), what="a push")
    address = planter.map(16)
    before_id, before = client.host_snapshot(HOST, planter.pid)
    planter.unmap(address + 4 * PAGE, 8)
    after_id, _ = client.host_snapshot(HOST, planter.pid)

    by_id = client.diff(before_id, after_id)
    assert by_id.mode == DiffMode.ADDRESS
    assert [(c.kind, c.regions_before, c.regions_after) for c in by_id.changes] == [
        (ChangeKind.SPLIT, 1, 2)
    ]
    assert by_id.changes[0].bytes_before - by_id.changes[0].bytes_after == 8 * PAGE

    # A snapshot in hand against the latest stored one of the same process.
    mixed = client.diff(before, f"{HOST}:{planter.pid}")
    assert mixed.changes == by_id.changes
    assert mixed.summary_delta("region_count") == 1


def test_commands_ask_the_server(server, client, make_uplink, make_planter, reader, tmp_path):
    near = make_planter()
    near.grow(int(0.85 * reader.host().max_map_count))
    make_uplink(server.address, HOST, interval_seconds=60)
    wait_for(lambda: pushed(client), what="a push")
    snapshot_id, _ = client.host_snapshot(HOST, near.pid)

    audit_run = _vmatlas("audit", "--target", server.address, "--fail-on", "critical")
    assert audit_run.returncode == 3, audit_run.stderr
    assert f"critical  {HOST}" in audit_run.stdout

    diff_run = _vmatlas(
        "diff", "--target", server.address, "--format", "json", snapshot_id, f"{HOST}:{near.pid}"
    )
    assert diff_run.returncode == 0, diff_run.stderr
    doc = json.loads(diff_run.stdout)
    assert (doc["mode"], doc["classes"], doc["changes"]) == ("address", [], [])


def _vmatlas(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmatlas", *args], capture_output=True, text=True, timeout=120
    )
