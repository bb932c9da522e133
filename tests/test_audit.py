"""The audit core over real summaries of planted children, and its policy files."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import subprocess
import sys

import pytest

from vmatlas import audit as audit_module
from vmatlas.agents.linux import LinuxReader
from vmatlas.audit import AUDIT_ROW_FIELDS, Check, Severity, audit, audit_row
from vmatlas.model import Host, OperatingSystem, Process, ProcessSummary, Summary
from vmatlas.policy import (
    MapCountRule,
    Policy,
    PolicyError,
    load_policy,
    parse_policy,
)

reader = LinuxReader()


def _summary_of(child) -> tuple[Host, ProcessSummary]:
    host = reader.host()
    return host, reader.process_summary(child.pid, host)


def test_an_audit_row_holds_each_field_at_its_position():
    host = reader.host()
    item = reader.process_summary(os.getpid(), host)
    row = audit_row(host.host_id, item)
    assert len(row) == len(AUDIT_ROW_FIELDS)
    for position, name in enumerate(AUDIT_ROW_FIELDS):
        # The checks read a field by its position's name.
        assert getattr(audit_module, f"_{name.upper()}") == position, name
        if name == "host_id":
            expected = host.host_id
        elif name == "capture_time":
            expected = item.capture_time
        elif name in Summary.__dataclass_fields__:
            expected = getattr(item.summary, name)
        else:
            expected = getattr(item.process, name)
        assert row[position] == expected, name


def _map_count_findings(report, pid):
    return [f for f in report.findings if f.check == Check.MAP_COUNT and f.pid == pid]


def test_map_count_thresholds_give_the_right_severity(make_planter):
    quiet, busy, busiest = make_planter(), make_planter(), make_planter()
    busy.grow(1000)
    busiest.grow(2000)
    host = reader.host()
    items = [reader.process_summary(c.pid, host) for c in (quiet, busy, busiest)]
    counts = [i.summary.map_count for i in items]
    # Thresholds between the planted counts, as fractions of the real limit.
    limit = host.max_map_count
    warn = (counts[0] + counts[1]) / 2 / limit
    critical = (counts[1] + counts[2]) / 2 / limit
    policy = Policy(map_count=MapCountRule(warn_fraction=warn, critical_fraction=critical))

    report = audit([host], {host.host_id: items}, policy=policy)

    assert _map_count_findings(report, quiet.pid) == []
    [busy_finding] = _map_count_findings(report, busy.pid)
    [busiest_finding] = _map_count_findings(report, busiest.pid)
    assert busy_finding.severity == Severity.WARNING
    assert busiest_finding.severity == Severity.CRITICAL
    assert busiest_finding.value == counts[2]
    assert busiest_finding.limit == limit
    assert busiest_finding.message.startswith(f"{counts[2]:,} maps")
    # Most severe first.
    assert report.findings.index(busiest_finding) < report.findings.index(busy_finding)


def test_default_policy_flags_a_single_page_storm(make_planter):
    calm, storm = make_planter(), make_planter()
    storm.grow(1200)
    host = reader.host()
    items = [reader.process_summary(c.pid, host) for c in (calm, storm)]

    report = audit([host], {host.host_id: items})

    storms = [f.pid for f in report.findings if f.check == Check.SINGLE_PAGE_STORM]
    assert storms == [storm.pid]


def _linux_host(host_id: str, max_map_count: int = 65530) -> Host:
    return Host(
        host_id=host_id, hostname=host_id, os=OperatingSystem.LINUX, max_map_count=max_map_count
    )


def _process(pid: int, map_count: int, capture_time: float, name: str = "app") -> ProcessSummary:
    return ProcessSummary(
        Process(pid=pid, name=name, executable=f"/usr/bin/{name}", start_time=1.0),
        Summary(region_count=map_count, map_count=map_count, max_map_count=65530),
        capture_time,
    )


def test_forecast_of_a_linear_series_is_within_20_percent():
    rate = 3.5  # maps per second
    times = [1000.0 + 60 * k for k in range(10)]
    series = [(t, int(5000 + rate * (t - times[0]))) for t in times]
    host = _linux_host("h1")
    latest = _process(42, series[-1][1], times[-1])
    truth = (65530 - series[-1][1]) / rate

    report = audit([host], {"h1": [latest]}, {("h1", 42): series[:-1]})

    [trend] = [f for f in report.findings if f.check == Check.MAP_COUNT_TREND]
    assert trend.forecast_seconds is not None
    assert abs(trend.forecast_seconds - truth) <= 0.2 * truth
    assert trend.severity == Severity.CRITICAL  # under a day away
    assert "reaches vm.max_map_count 65,530" in trend.message


def test_flat_or_falling_series_has_no_trend():
    host = _linux_host("h1")
    flat = [(float(t), 900) for t in range(0, 600, 60)]
    report = audit([host], {"h1": [_process(7, 900, 600.0)]}, {("h1", 7): flat})
    assert not [f for f in report.findings if f.check == Check.MAP_COUNT_TREND]


def test_low_and_drifting_max_map_count_and_the_recommendation():
    hosts = [
        _linux_host("web-1", 262144),
        _linux_host("web-2", 262144),
        _linux_host("web-3", 65530),
        _linux_host("db-1", 30000),
    ]
    processes = {
        "web-1": [_process(10, 20000, 50.0, "java")],
        "web-2": [_process(11, 30000, 50.0, "java")],
        "web-3": [_process(12, 1000, 50.0, "nginx")],
        "db-1": [_process(13, 500, 50.0, "postgres")],
    }
    history = {("web-2", 11): [(10.0, 70000)]}  # a short spike, above today's count
    policy = parse_policy('[groups]\nweb = ["web-*"]\n', syntax="toml")

    report = audit(hosts, processes, history, policy=policy)

    low = [f.host_id for f in report.findings if f.check == Check.MAX_MAP_COUNT_LOW]
    drift = [f for f in report.findings if f.check == Check.MAX_MAP_COUNT_DRIFT]
    assert low == ["db-1"]
    assert [(f.host_id, f.value, f.threshold) for f in drift] == [("web-3", 65530, 262144)]
    java = next(a for a in report.applications if a.executable == "/usr/bin/java")
    assert (java.instances, java.map_count_max, java.map_count_mean, java.map_count_min) == (
        2,
        30000,
        25000,
        20000,
    )
    web = next(r for r in report.recommendations if r.group == "web")
    # Peak 70,000 (history) x 2 = 140,000 -> next multiple of 65,536.
    assert web.recommended_max_map_count == 196608
    assert "peaked at 70,000" in web.reasoning
    assert web.current_values == (65530, 262144)


def test_windows_checks_put_32_bit_processes_first():
    host = Host(
        host_id="win",
        hostname="win",
        os=OperatingSystem.WINDOWS,
        allocation_granularity_bytes=65536,
    )
    mib = 1024 * 1024

    def proc(pid: int, bits: int, largest: int) -> ProcessSummary:
        return ProcessSummary(
            Process(pid=pid, name=f"p{pid}", pointer_bits=bits),
            Summary(
                region_count=100,
                map_count=100,
                free_bytes=900 * mib,
                largest_free_bytes=largest * mib,
                committed_bytes=50 * mib,
                reserved_bytes=1500 * mib,
                unusable_bytes=80 * mib,
            ),
            1.0,
        )

    report = audit([host], {"win": [proc(1, 64, 100), proc(2, 32, 100), proc(3, 32, 32)]})

    free = [(f.pid, f.severity) for f in report.findings if f.check == Check.LARGEST_FREE_BLOCK]
    assert free == [(3, Severity.CRITICAL), (2, Severity.WARNING), (1, Severity.WARNING)]
    reserved = {
        f.pid: f.severity for f in report.findings if f.check == Check.RESERVED_VS_COMMITTED
    }
    assert reserved == {1: Severity.INFO, 2: Severity.WARNING, 3: Severity.WARNING}
    assert {f.pid for f in report.findings if f.check == Check.UNUSABLE} == {1, 2, 3}


# -- policy files -------------------------------------------------------------------------


def test_policy_file_overrides_defaults(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('[map_count]\nwarn_fraction = 0.6\n\n[groups]\nsearch = ["es-*"]\n')
    policy = load_policy(path)
    assert policy.map_count.warn_fraction == 0.6
    assert policy.map_count.critical_fraction == 0.8
    assert dict(policy.groups) == {"search": ("es-*",)}


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        (
            "p.toml",
            "[map_count]\nwarn_fraction = 0.6\n\n[trend]\nmin_pointz = 3\n",
            "p.toml: trend.min_pointz (line 5): unknown setting",
        ),
        (
            "p.toml",
            "[mapcount]\nwarn_fraction = 0.6\n",
            "p.toml: mapcount (line 1): unknown section",
        ),
        (
            "p.json",
            '{\n  "map_count": {\n    "warn_fraction": "high"\n  }\n}\n',
            "p.json: map_count.warn_fraction (line 3): must be a number",
        ),
        (
            "p.json",
            '{\n  "map_count": {"critical_fraction": 1.5}\n}\n',
            "p.json: map_count.critical_fraction (line 2): must be between 0 and 1",
        ),
        ("p.toml", "[map_count\nwarn_fraction = 0.6\n", "p.toml: not valid TOML"),
        ("p.json", '{"map_count": {},}', "p.json: not valid JSON"),
    ],
)
def test_bad_policy_files_are_rejected_with_a_location(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(str(tmp_path / where))


def test_malformed_syntax_names_the_line(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[map_count]\nwarn_fraction = = 0.6\n")
    with pytest.raises(PolicyError, match=r"line 2"):
        load_policy(path)


# -- the command --------------------------------------------------------------------------


def _vmatlas(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmatlas", *args], capture_output=True, text=True, timeout=120
    )


def test_audit_command_formats_and_fail_on(planter, tmp_path):
    planter.grow(1200)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"map_count": {"warn_fraction": 0.01, "critical_fraction": 1.0}}))

    table = _vmatlas("audit", "--local", "--policy", str(policy))
    assert table.returncode == 0, table.stderr
    assert "recommended vm.max_map_count for group linux" in table.stdout

    as_json = _vmatlas("audit", "--local", "--policy", str(policy), "--format", "json")
    doc = json.loads(as_json.stdout)
    mine = [f for f in doc["findings"] if f["pid"] == planter.pid]
    assert {(f["severity"], f["check"]) for f in mine} == {
        ("warning", "map_count"),
        ("warning", "single_page_storm"),
    }

    as_csv = _vmatlas("audit", "--local", "--policy", str(policy), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {r["check"] for r in rows if r["pid"] == str(planter.pid)} == {
        "map_count",
        "single_page_storm",
    }

    failing = _vmatlas("audit", "--local", "--policy", str(policy), "--fail-on", "warning")
    assert failing.returncode == 3
    assert "--fail-on warning" in failing.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text("[map_count]\nwarn = 1\n")
    rejected = _vmatlas("audit", "--local", "--policy", str(bad))
    assert rejected.returncode == 1
    assert f"{bad}: map_count.warn (line 2): unknown setting" in rejected.stderr


def test_replace_keeps_policy_frozen():
    policy = dataclasses.replace(Policy(), map_count=MapCountRule(0.1, 0.2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.map_count.warn_fraction = 0.3  # type: ignore[misc]


def test_report_survives_the_wire_and_enums_match_the_schema(make_planter):
    from vmatlas.v1 import analysis_pb2
    from vmatlas.wire_analysis import report_from_pb, report_to_pb

    child = make_planter()
    child.grow(1200)
    host, item = _summary_of(child)
    # Pretend it started long ago, so that the planted history falls in its lifetime.
    item = dataclasses.replace(item, process=dataclasses.replace(item.process, start_time=0.0))
    series = [(item.capture_time - 60 * k, item.summary.map_count - 50 * k) for k in range(1, 5)]
    report = audit([host], {host.host_id: [item]}, {(host.host_id, child.pid): series})
    assert any(f.forecast_seconds is not None for f in report.findings)
    data = report_to_pb(report).SerializeToString()
    assert report_from_pb(analysis_pb2.AuditResponse.FromString(data)) == report
    for model, wire_enum, prefix in (
        (Severity, analysis_pb2.Severity, "SEVERITY_"),
        (Check, analysis_pb2.AuditCheck, "AUDIT_CHECK_"),
    ):
        assert {prefix + m.name: m.value for m in model} == dict(wire_enum.items())
