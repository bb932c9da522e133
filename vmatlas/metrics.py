"""Prometheus metrics for hosts, groups of processes and the processes closest to
their limit: one computation that the server (``/metrics``, the whole fleet) and the
agent (``vmatlas agent --metrics``, this host alone) both expose.

Names follow the Prometheus naming guide: a ``vmatlas_`` prefix, base units (bytes,
seconds), ``_ratio`` for 0..1 fractions, ``_total`` only on counters.

The number of series is bounded per host, whatever the number of processes:

- host: 8 series (``info``, ``max_map_count``, ``online``, ``last_seen``,
  ``processes``, ``map_count_ratio_max``, ``unreadable_processes``,
  ``dropped_pushes_total``);
- groups: at most ``max_groups_per_host`` groups plus ``other``, 6 series each;
- processes: the ``top_processes`` closest to their limit (Windows: with the smallest
  largest free block) plus every one at or above ``warn_fraction``, at most
  ``max_processes_per_host`` in all, 2 series each (4 on Windows).

With the defaults (5, 0.8, 50 processes, 20 groups) that is at most 8 + 6 x 21 + 4 x 50
= 334 series per host.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vmatlas import errors
from vmatlas.fleet import FleetProcess, HostStatus
from vmatlas.model import OperatingSystem, Process, ProcessSummary

OTHER_GROUP = "other"
# The label values a group can be named by without rules.
GROUP_BY = ("name", "container", "pod")


@dataclass(frozen=True, slots=True)
class GroupRule:
    """Processes matching every given criterion join the group ``name``, where
    ``{name}``, ``{exe_base}``, ``{container}``, ``{pod}`` and ``{match}`` (the first
    command-line match) are replaced (after process-exporter's groups)."""

    name: str
    comm: tuple[str, ...] = ()  # the process name is one of these
    exe: tuple[str, ...] = ()  # the executable's full path or base name is one of these
    cmdline: tuple[re.Pattern[str], ...] = ()  # every pattern matches the command line

    def match(self, process: Process) -> str | None:
        if self.comm and process.name not in self.comm:
            return None
        exe_base = process.executable.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
        if self.exe and process.executable not in self.exe and exe_base not in self.exe:
            return None
        line = " ".join(process.command_line)
        first = ""
        for pattern in self.cmdline:
            found = pattern.search(line)
            if found is None:
                return None
            first = first or (found.group(1) if found.groups() else found.group(0))
        return self.name.format_map(
            {
                "name": process.name,
                "exe_base": exe_base,
                "container": _container(process) or "",
                "pod": _pod(process) or "",
                "match": first,
            }
        )


# Applications with a documented vm.max_map_count minimum, recognised by their command
# line so that their group name is the same on every host (the JVM's process name is
# "java" for all of them); deploy/prometheus's rules hold the minimum for each name.
# SonarQube comes first: its embedded search engine runs Elasticsearch's main class.
KNOWN_APPLICATIONS = (
    GroupRule(
        "sonarqube",
        cmdline=(re.compile(r"org\.sonar\.|[/\\]sonarqube[/\\]"),),
    ),
    GroupRule("elasticsearch", cmdline=(re.compile(r"org\.elasticsearch\.bootstrap\."),)),
    GroupRule("opensearch", cmdline=(re.compile(r"org\.opensearch\.bootstrap\."),)),
)


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    top_processes: int = 5
    # Every process at or above this map-count ratio is exported too (the alert rules'
    # warning threshold, so that every process they could fire for has its series).
    warn_fraction: float = 0.8
    max_processes_per_host: int = 50
    max_groups_per_host: int = 20
    # Processes no rule matches are grouped by this: name, container or pod.
    group_by: str = "name"
    groups: tuple[GroupRule, ...] = ()
    # Group KNOWN_APPLICATIONS by their names (after the rules in ``groups``).
    known_applications: bool = True
    # Add container_id and pod_uid labels to process series.
    container_labels: bool = False


DEFAULT_SETTINGS = MetricsSettings()


def load_settings(path: str | Path) -> MetricsSettings:
    """The ``[metrics]`` table of a TOML file, over the defaults::

        [metrics]
        top_processes = 10
        group_by = "container"

        [[metrics.groups]]
        name = "elasticsearch"
        cmdline = ["org\\\\.elasticsearch\\\\.bootstrap"]

    InvalidArgument naming the file and key for anything malformed.
    """
    source = str(path)
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.InvalidArgument(f"cannot read metrics config {source}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise errors.InvalidArgument(f"metrics config {source}: {exc}") from None
    table = doc.get("metrics", {})
    if not isinstance(table, dict):
        raise errors.InvalidArgument(f"{source}: [metrics] must be a table")
    return settings_from_document(table, source=source)


def settings_from_document(table: dict[str, Any], *, source: str = "<metrics>") -> MetricsSettings:
    known = {f.name: f for f in dataclasses.fields(MetricsSettings)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{source}: metrics.{key}"
        if key not in known:
            raise errors.InvalidArgument(f"{where}: unknown setting (known: {', '.join(known)})")
        if key == "groups":
            values[key] = _parse_groups(value, where)
        elif key == "group_by":
            if value not in GROUP_BY:
                raise errors.InvalidArgument(f"{where}: must be one of {', '.join(GROUP_BY)}")
            values[key] = value
        elif key in ("container_labels", "known_applications"):
            if not isinstance(value, bool):
                raise errors.InvalidArgument(f"{where}: must be true or false")
            values[key] = value
        elif key == "warn_fraction":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise errors.InvalidArgument(f"{where}: must be a number from 0 to 1")
            values[key] = float(value)
        else:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise errors.InvalidArgument(f"{where}: must be a whole number >= 0")
            values[key] = value
    settings = MetricsSettings(**values)
    if settings.top_processes > settings.max_processes_per_host:
        raise errors.InvalidArgument(
            f"{source}: metrics.top_processes must not exceed max_processes_per_host"
        )
    return settings


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise errors.InvalidArgument(f"{where}: must be a list of strings")
    return tuple(value)


def _parse_groups(value: Any, where: str) -> tuple[GroupRule, ...]:
    if not isinstance(value, list):
        raise errors.InvalidArgument(f"{where}: must be an array of tables ([[metrics.groups]])")
    rules = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise errors.InvalidArgument(f"{here}: must be a table")
        unknown = set(item) - {"name", "comm", "exe", "cmdline"}
        if unknown:
            raise errors.InvalidArgument(f"{here}: unknown key {sorted(unknown)[0]!r}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise errors.InvalidArgument(f"{here}.name: a group needs a name")
        patterns = []
        for text in _strings(item.get("cmdline", []), f"{here}.cmdline"):
            try:
                patterns.append(re.compile(text))
            except re.error as exc:
                raise errors.InvalidArgument(
                    f"{here}.cmdline: bad pattern {text!r}: {exc}"
                ) from None
        rule = GroupRule(
            name,
            comm=_strings(item.get("comm", []), f"{here}.comm"),
            exe=_strings(item.get("exe", []), f"{here}.exe"),
            cmdline=tuple(patterns),
        )
        if not (rule.comm or rule.exe or rule.cmdline):
            raise errors.InvalidArgument(f"{here}: give comm, exe or cmdline to match")
        try:
            rule.name.format_map(
                dict.fromkeys(("name", "exe_base", "container", "pod", "match"), "")
            )
        except (KeyError, ValueError, IndexError) as exc:
            raise errors.InvalidArgument(f"{here}.name: bad template: {exc}") from None
        rules.append(rule)
    return tuple(rules)


def _container(process: Process) -> str:
    return process.container_id


def _pod(process: Process) -> str:
    return process.pod_uid


def map_count_ratio(item: ProcessSummary) -> float:
    """The map count as a fraction of the host's limit (0 where there is no limit)."""
    limit = item.summary.max_map_count
    return min(1.0, item.summary.map_count / limit) if limit > 0 else 0.0


def group_of(process: Process, settings: MetricsSettings) -> str:
    rules = (
        (*settings.groups, *KNOWN_APPLICATIONS) if settings.known_applications else settings.groups
    )
    for rule in rules:
        name = rule.match(process)
        if name is not None:
            return name or OTHER_GROUP
    if settings.group_by == "container":
        return _container(process) or "host"
    if settings.group_by == "pod":
        return _pod(process) or "host"
    return process.name or OTHER_GROUP


@dataclass(slots=True)
class GroupTotals:
    """A group's processes summed (the group series' values)."""

    processes: int = 0
    map_count: int = 0
    map_count_max: int = 0
    ratio_max: float = 0.0
    committed_bytes: int = 0
    reserved_bytes: int = 0

    def add(self, item: ProcessSummary) -> None:
        s = item.summary
        self.processes += 1
        self.map_count += s.map_count
        self.map_count_max = max(self.map_count_max, s.map_count)
        self.ratio_max = max(self.ratio_max, map_count_ratio(item))
        self.committed_bytes += s.committed_bytes
        self.reserved_bytes += s.reserved_bytes

    def merge(self, other: GroupTotals) -> None:
        self.processes += other.processes
        self.map_count += other.map_count
        self.map_count_max = max(self.map_count_max, other.map_count_max)
        self.ratio_max = max(self.ratio_max, other.ratio_max)
        self.committed_bytes += other.committed_bytes
        self.reserved_bytes += other.reserved_bytes


def group_members(
    items: Iterable[ProcessSummary], settings: MetricsSettings
) -> dict[str, list[ProcessSummary]]:
    """Every group's processes, by group name (uncapped)."""
    members: dict[str, list[ProcessSummary]] = {}
    for item in items:
        members.setdefault(group_of(item.process, settings), []).append(item)
    return members


def group_totals(items: Iterable[ProcessSummary]) -> GroupTotals:
    totals = GroupTotals()
    for item in items:
        totals.add(item)
    return totals


def groups_of(items: Iterable[ProcessSummary], settings: MetricsSettings) -> dict[str, GroupTotals]:
    """Groups by name, capped: the ``max_groups_per_host`` closest to their limit (then
    largest) keep their names, the rest are summed into ``other``."""
    groups = {
        name: group_totals(members) for name, members in group_members(items, settings).items()
    }
    named = {name: group for name, group in groups.items() if name != OTHER_GROUP}
    if len(named) <= settings.max_groups_per_host:
        return groups
    ranked = sorted(named.items(), key=lambda kv: (-kv[1].ratio_max, -kv[1].map_count_max, kv[0]))
    kept = dict(ranked[: settings.max_groups_per_host])
    other = GroupTotals()
    if OTHER_GROUP in groups:
        other.merge(groups[OTHER_GROUP])
    for _name, group in ranked[settings.max_groups_per_host :]:
        other.merge(group)
    kept[OTHER_GROUP] = other
    return kept


def selected_processes(
    host: HostStatus, items: list[ProcessSummary], settings: MetricsSettings
) -> list[ProcessSummary]:
    """The processes of one host that get series: the ``top_processes`` worst and every
    one at or above ``warn_fraction``, worst first, at most ``max_processes_per_host``.
    Worst is the highest map-count ratio; on Windows, which has no map limit, the
    smallest largest free block."""
    if host.host.os == OperatingSystem.WINDOWS:
        ranked = sorted(
            items,
            key=lambda i: (i.summary.largest_free_bytes, -i.summary.map_count, i.process.pid),
        )
        return ranked[: min(settings.top_processes, settings.max_processes_per_host)]
    ranked = sorted(items, key=lambda i: (-map_count_ratio(i), -i.summary.map_count, i.process.pid))
    chosen = ranked[: settings.top_processes]
    chosen += [
        i for i in ranked[settings.top_processes :] if map_count_ratio(i) >= settings.warn_fraction
    ]
    return chosen[: settings.max_processes_per_host]


def fleet_families(
    hosts: list[HostStatus], processes: list[FleetProcess], settings: MetricsSettings
) -> list[Metric]:
    """Every host, group and selected process as metric families."""
    by_host: dict[str, list[ProcessSummary]] = {}
    for p in processes:
        by_host.setdefault(p.host_id, []).append(p.item)

    def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=labels)

    h = ["host"]
    info = gauge(
        "vmatlas_host_info", "Always 1; the labels describe the host.", [*h, "os", "kernel"]
    )
    limit = gauge("vmatlas_host_max_map_count", "The host's vm.max_map_count (Linux).", h)
    online = gauge("vmatlas_host_online", "1 while the host's agent is connected.", h)
    last_seen = gauge(
        "vmatlas_host_last_seen_timestamp_seconds",
        "When the host's agent was last heard from, in seconds since the epoch.",
        h,
    )
    count = gauge("vmatlas_host_processes", "Processes in the host's latest report.", h)
    worst = gauge(
        "vmatlas_host_map_count_ratio_max",
        "The highest map count of any process on the host as a fraction of its vm.max_map_count.",
        h,
    )
    unreadable = gauge(
        "vmatlas_host_unreadable_processes",
        "Processes the agent could not read at its latest full report, by reason.",
        [*h, "reason"],
    )
    dropped = CounterMetricFamily(
        "vmatlas_host_dropped_pushes",
        "Summary pushes the host's agent dropped from its full buffer (gaps in history).",
        labels=h,
    )
    g = ["host", "group"]
    g_count = gauge("vmatlas_group_processes", "Processes in the group.", g)
    g_maps = gauge("vmatlas_group_map_count", "Total map count of the group's processes.", g)
    g_max = gauge(
        "vmatlas_group_map_count_max", "Largest map count of one process in the group.", g
    )
    g_ratio = gauge(
        "vmatlas_group_map_count_ratio_max",
        "Highest map count of one process in the group as a fraction of vm.max_map_count.",
        g,
    )
    g_committed = gauge("vmatlas_group_committed_bytes", "Committed bytes of the group.", g)
    g_reserved = gauge("vmatlas_group_reserved_bytes", "Reserved bytes of the group.", g)
    pl = ["host", "pid", "name"]
    if settings.container_labels:
        pl += ["container_id", "pod_uid"]
    p_maps = gauge(
        "vmatlas_process_map_count",
        "The process's map count (the mappings the kernel counts against vm.max_map_count).",
        pl,
    )
    p_ratio = gauge(
        "vmatlas_process_map_count_ratio",
        "The process's map count as a fraction of its host's vm.max_map_count.",
        pl,
    )
    p_free = gauge(
        "vmatlas_process_largest_free_bytes",
        "The largest free block of the process's address space (Windows).",
        pl,
    )
    p_unusable = gauge(
        "vmatlas_process_unusable_bytes",
        "Address space lost to allocation granularity (Windows).",
        pl,
    )
    for status in hosts:
        host_id = status.host_id
        items = by_host.get(host_id, [])
        windows = status.host.os == OperatingSystem.WINDOWS
        info.add_metric([host_id, status.host.os.name.lower(), status.host.kernel_version], 1.0)
        if status.host.max_map_count > 0:
            limit.add_metric([host_id], float(status.host.max_map_count))
        online.add_metric([host_id], 1.0 if status.online else 0.0)
        last_seen.add_metric([host_id], status.last_seen_time)
        count.add_metric([host_id], float(len(items)))
        if not windows:
            worst.add_metric([host_id], max((map_count_ratio(i) for i in items), default=0.0))
        unreadable.add_metric([host_id, "access_denied"], float(status.access_denied_count))
        dropped.add_metric([host_id], float(status.dropped_push_count))
        for name, group in sorted(groups_of(items, settings).items()):
            labels = [host_id, name]
            g_count.add_metric(labels, float(group.processes))
            g_maps.add_metric(labels, float(group.map_count))
            g_max.add_metric(labels, float(group.map_count_max))
            if not windows:
                g_ratio.add_metric(labels, group.ratio_max)
            g_committed.add_metric(labels, float(group.committed_bytes))
            g_reserved.add_metric(labels, float(group.reserved_bytes))
        for item in selected_processes(status, items, settings):
            labels = [host_id, str(item.process.pid), item.process.name]
            if settings.container_labels:
                labels += [_container(item.process), _pod(item.process)]
            p_maps.add_metric(labels, float(item.summary.map_count))
            if windows:
                p_free.add_metric(labels, float(item.summary.largest_free_bytes))
                p_unusable.add_metric(labels, float(item.summary.unusable_bytes))
            else:
                p_ratio.add_metric(labels, map_count_ratio(item))
    return [
        info, limit, online, last_seen, count, worst, unreadable, dropped,
        g_count, g_maps, g_max, g_ratio, g_committed, g_reserved,
        p_maps, p_ratio, p_free, p_unusable,
    ]  # fmt: skip


FleetSource = Callable[[], tuple[list[HostStatus], list[FleetProcess]]]


@dataclass(eq=False)  # registries key collectors by identity
class FleetCollector(Collector):
    """A collector that reads ``source`` at every scrape."""

    source: FleetSource
    settings: MetricsSettings = field(default_factory=MetricsSettings)

    def collect(self) -> Iterator[Metric]:
        hosts, processes = self.source()
        yield from fleet_families(hosts, processes, self.settings)

    def describe(self) -> Iterator[Metric]:
        # Nothing to read at registration time; names are checked at scrape time.
        return iter(())
