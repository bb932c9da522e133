"""The metrics' selection, grouping and bound, on fleets of summaries built here, and
the metrics settings file."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmatlas import errors
from vmatlas.fleet import FleetProcess, HostStatus
from vmatlas.metrics import (
    MetricsSettings,
    fleet_families,
    load_settings,
)
from vmatlas.model import Host, OperatingSystem, Process, ProcessSummary, Summary

LIMIT = 65530


def linux_host(host_id: str) -> HostStatus:
    host = Host(host_id, host_id, OperatingSystem.LINUX, max_map_count=LIMIT)
    return HostStatus(host, online=True, first_seen_time=1.0, last_seen_time=2.0)


def proc(pid: int, name: str, maps: int, *, cmdline: tuple[str, ...] = ()) -> ProcessSummary:
    return ProcessSummary(
        Process(pid, name=name, executable=f"/usr/bin/{name}", command_line=cmdline),
        Summary(
            region_count=maps,
            map_count=maps,
            max_map_count=LIMIT,
            headroom_fraction=1 - maps / LIMIT,
            committed_bytes=4096 * maps,
        ),
        capture_time=2.0,
    )


def series(families: list) -> list[tuple[str, dict[str, str], float]]:  # type: ignore[type-arg]
    return [(s.name, s.labels, s.value) for f in families for s in f.samples]


def test_series_do_not_grow_with_the_process_count() -> None:
    settings = MetricsSettings()
    counts = []
    for n in (100, 5000):
        items = [
            FleetProcess("h", proc(pid, f"exe{pid % 300}", 10 + pid % 977)) for pid in range(n)
        ]
        counts.append(len(series(fleet_families([linux_host("h")], items, settings))))
    # Groups and processes are capped: 5000 processes make no more series than 100
    # distinct enough to fill every cap.
    assert counts[0] == counts[1] == 8 + 6 * 21 + 2 * 5


def test_top_n_plus_every_process_over_the_warning_fraction_capped() -> None:
    hot = [proc(1000 + i, "java", int(LIMIT * 0.9)) for i in range(8)]
    cold = [proc(i, "sh", 50 + i) for i in range(1, 30)]
    items = [FleetProcess("h", p) for p in hot + cold]
    settings = MetricsSettings(top_processes=3, max_processes_per_host=6)
    pids = {
        labels["pid"]
        for name, labels, _ in series(fleet_families([linux_host("h")], items, settings))
        if name == "vmatlas_process_map_count"
    }
    assert len(pids) == 6 and pids <= {str(p.process.pid) for p in hot}
    settings = MetricsSettings(top_processes=3, warn_fraction=0.95)
    pids = {
        labels["pid"]
        for name, labels, _ in series(fleet_families([linux_host("h")], items, settings))
        if name == "vmatlas_process_map_count"
    }
    assert len(pids) == 3


def test_groups_over_the_cap_are_summed_into_other() -> None:
    items = [FleetProcess("h", proc(i, f"app{i}", 100 * i)) for i in range(1, 11)]
    settings = MetricsSettings(max_groups_per_host=3)
    groups = {
        labels["group"]: value
        for name, labels, value in series(fleet_families([linux_host("h")], items, settings))
        if name == "vmatlas_group_processes"
    }
    assert groups == {"app10": 1, "app9": 1, "app8": 1, "other": 7}


def test_group_rules_name_groups_like_process_exporter(tmp_path: Path) -> None:
    config = tmp_path / "metrics.toml"
    config.write_text(
        "[metrics]\ntop_processes = 2\n"
        '[[metrics.groups]]\nname = "es-{match}"\n'
        'cmdline = ["-Des\\\\.node\\\\.name=(\\\\w+)"]\n'
        '[[metrics.groups]]\nname = "db"\ncomm = ["postgres", "mysqld"]\n'
    )
    settings = load_settings(config)
    assert settings.top_processes == 2
    items = [
        FleetProcess("h", proc(1, "java", 900, cmdline=("java", "-Des.node.name=alpha"))),
        FleetProcess("h", proc(2, "java", 800, cmdline=("java", "-Des.node.name=beta"))),
        FleetProcess("h", proc(3, "postgres", 300)),
        FleetProcess("h", proc(4, "mysqld", 200)),
        FleetProcess("h", proc(5, "java", 100, cmdline=("java", "-jar", "x.jar"))),
    ]
    groups = {
        labels["group"]: value
        for name, labels, value in series(fleet_families([linux_host("h")], items, settings))
        if name == "vmatlas_group_map_count"
    }
    assert groups == {"es-alpha": 900, "es-beta": 800, "db": 500, "java": 100}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[metrics]\ntop_n = 3\n", "metrics.top_n: unknown setting"),
        ("[metrics]\nwarn_fraction = 2\n", "metrics.warn_fraction: must be a number from 0 to 1"),
        ("[metrics]\ngroup_by = 'user'\n", "metrics.group_by: must be one of name, container"),
        ("[metrics]\n[[metrics.groups]]\nname = 'x'\n", "give comm, exe or cmdline"),
        ("[metrics]\n[[metrics.groups]]\nname = 'x'\ncmdline = ['(']\n", "bad pattern"),
        ("[metrics]\n[[metrics.groups]]\nname = '{nope}'\ncomm = ['a']\n", "bad template"),
        ("[metrics\n", "metrics config"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(errors.InvalidArgument, match=message):
        load_settings(config)


def test_windows_hosts_export_their_smallest_free_blocks() -> None:
    host = Host("w", "w", OperatingSystem.WINDOWS)
    status = HostStatus(host, online=False, first_seen_time=1.0, last_seen_time=2.0)
    items = [
        FleetProcess(
            "w",
            ProcessSummary(
                Process(pid, name=f"p{pid}.exe"),
                Summary(map_count=10, largest_free_bytes=pid << 20, unusable_bytes=pid),
                2.0,
            ),
        )
        for pid in range(1, 20)
    ]
    found = series(fleet_families([status], items, MetricsSettings(top_processes=2)))
    free = {labels["pid"]: v for n, labels, v in found if n == "vmatlas_process_largest_free_bytes"}
    assert free == {"1": 1 << 20, "2": 2 << 20}
    assert not [n for n, _, _ in found if n == "vmatlas_host_max_map_count"]
    assert ("vmatlas_host_online", {"host": "w"}, 0.0) in found


def test_known_applications_are_grouped_by_name_whatever_their_process_name() -> None:
    items = [
        FleetProcess(
            "h",
            proc(1, "java", 900, cmdline=("java", "org.elasticsearch.bootstrap.Elasticsearch")),
        ),
        FleetProcess("h", proc(2, "java", 800, cmdline=("java", "org.sonar.application.App"))),
        FleetProcess(
            "h",
            proc(
                3,
                "java",
                700,
                cmdline=(
                    "java",
                    "-Dx=/opt/sonarqube/es",
                    "org.elasticsearch.bootstrap.Elasticsearch",
                ),
            ),
        ),
        FleetProcess(
            "h", proc(4, "java", 600, cmdline=("java", "org.opensearch.bootstrap.OpenSearch"))
        ),
        FleetProcess("h", proc(5, "java", 500, cmdline=("java", "-jar", "app.jar"))),
    ]

    def groups(settings: MetricsSettings) -> dict[str, float]:
        return {
            labels["group"]: value
            for name, labels, value in series(fleet_families([linux_host("h")], items, settings))
            if name == "vmatlas_group_processes"
        }

    assert groups(MetricsSettings()) == {
        "elasticsearch": 1,
        "sonarqube": 2,
        "opensearch": 1,
        "java": 1,
    }
    assert groups(MetricsSettings(known_applications=False)) == {"java": 5}
