"""The fleet audit: the one module the server, the client and the CLI call.

:func:`audit` is a pure function over plain inputs (hosts, the latest summary of each
process on each host, per-process ``(time, map_count)`` history) and a
:class:`~vmatlas.policy.Policy`, so the server feeds it from its store and tests feed it
directly. It returns findings (severity, host, pid, process, the numbers, and one line
saying what to do), per-application statistics across the fleet, and a recommended
``vm.max_map_count`` per host group with its reasoning.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vmatlas.model import Host, OperatingSystem
from vmatlas.policy import DEFAULT_POLICY, Policy

MIB = 1024 * 1024


class ProcessFacts(Protocol):
    """What the audit reads of a process (a :class:`~vmatlas.model.Process` has it)."""

    @property
    def pid(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def executable(self) -> str: ...
    @property
    def start_time(self) -> float: ...
    @property
    def pointer_bits(self) -> int: ...
    @property
    def address_space_empty(self) -> bool: ...
    @property
    def container_id(self) -> str: ...
    @property
    def pod_uid(self) -> str: ...


class SummaryFigures(Protocol):
    """What the audit reads of a summary (a :class:`~vmatlas.model.Summary` has it)."""

    @property
    def region_count(self) -> int: ...
    @property
    def map_count(self) -> int: ...
    @property
    def max_map_count(self) -> int: ...
    @property
    def committed_bytes(self) -> int: ...
    @property
    def reserved_bytes(self) -> int: ...
    @property
    def free_bytes(self) -> int: ...
    @property
    def largest_free_bytes(self) -> int: ...
    @property
    def single_page_region_count(self) -> int: ...
    @property
    def guard_region_count(self) -> int: ...
    @property
    def unusable_bytes(self) -> int: ...


class AuditedProcess(Protocol):
    """A process's latest summary as the audit reads it: a
    :class:`~vmatlas.model.ProcessSummary`, or a lighter row with the same names (the
    server's store reads a fleet's as columns)."""

    @property
    def process(self) -> ProcessFacts: ...
    @property
    def summary(self) -> SummaryFigures: ...
    @property
    def capture_time(self) -> float: ...


# [(seconds since the epoch, map_count), ...] in any order.
Series = Sequence[tuple[float, int]]
# (host_id, pid) -> the process's earlier map counts.
History = Mapping[tuple[str, int], Series]


class Severity(enum.IntEnum):
    UNSPECIFIED = 0
    INFO = 1
    WARNING = 2
    CRITICAL = 3


class Check(enum.IntEnum):
    """What a finding is about; the order findings of one severity are listed in."""

    UNSPECIFIED = 0
    MAP_COUNT = 1
    MAP_COUNT_TREND = 2
    MAX_MAP_COUNT_LOW = 3
    MAX_MAP_COUNT_DRIFT = 4
    LARGEST_FREE_BLOCK = 5
    UNUSABLE = 6
    RESERVED_VS_COMMITTED = 7
    SINGLE_PAGE_STORM = 8


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    check: Check
    host_id: str
    # 0 and "" for a finding about the host itself.
    pid: int
    process: str
    # The measured figure, the threshold it crossed and the limit it is measured
    # against, in the check's unit (maps, bytes, a ratio; see ``message``).
    value: float
    threshold: float
    limit: float
    message: str
    # MAP_COUNT_TREND only: seconds from the last sample until the limit is reached.
    forecast_seconds: float | None = None
    pointer_bits: int = 0
    # The process's container and Kubernetes pod, from its cgroup ("" outside one).
    container_id: str = ""
    pod_uid: str = ""


@dataclass(frozen=True, slots=True)
class Application:
    """One executable across the fleet."""

    executable: str
    instances: int
    host_count: int
    map_count_max: int
    map_count_mean: float
    map_count_min: int
    # Where the largest instance runs.
    peak_host_id: str
    peak_pid: int


@dataclass(frozen=True, slots=True)
class Recommendation:
    group: str
    host_ids: tuple[str, ...]
    # The distinct vm.max_map_count values the group's hosts have now.
    current_values: tuple[int, ...]
    peak_map_count: int
    peak_process: str
    peak_host_id: str
    headroom_factor: float
    recommended_max_map_count: int
    reasoning: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    generated_at: float
    host_count: int
    process_count: int
    # Most severe first.
    findings: tuple[Finding, ...]
    # Largest map count first.
    applications: tuple[Application, ...]
    recommendations: tuple[Recommendation, ...]

    @property
    def worst(self) -> Severity:
        return max((f.severity for f in self.findings), default=Severity.UNSPECIFIED)


# -- helpers ------------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def least_squares(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """``(slope, intercept)`` of the least-squares line through ``points`` (x, y)."""
    n = len(points)
    # x is shifted to the first point: epoch seconds squared would lose precision.
    x0 = points[0][0]
    sx = sy = sxx = sxy = 0.0
    for x, y in points:
        x -= x0
        sx += x
        sy += y
        sxx += x * x
        sxy += x * y
    denominator = n * sxx - sx * sx
    if denominator <= 0:
        return 0.0, sy / n
    slope = (n * sxy - sx * sy) / denominator
    return slope, (sy - slope * sx) / n - slope * x0


def group_of(host: Host, policy: Policy) -> str:
    """The host's group: the first policy group with a matching host-id pattern, else
    all hosts of its OS."""
    for name, patterns in policy.groups.items():
        if any(fnmatch.fnmatchcase(host.host_id, pattern) for pattern in patterns):
            return name
    return host.os.name.lower()


def _application_name(process: ProcessFacts) -> str:
    """What the audit calls the application a process runs: its executable, else its
    name, else its pid."""
    return process.executable or process.name or f"pid {process.pid}"


# -- the audit ----------------------------------------------------------------------------


def audit(
    hosts: Sequence[Host],
    processes: Mapping[str, Sequence[AuditedProcess]],
    history: History | None = None,
    policy: Policy = DEFAULT_POLICY,
    now: float | None = None,
) -> AuditReport:
    """Audit the latest data of every host. ``processes`` maps a host id to the latest
    summary of each of its processes; ``history`` holds earlier map counts per process."""
    history = history or {}
    findings: list[Finding] = []
    by_id = {h.host_id: h for h in hosts}
    by_host = _by_host(history)
    count = 0
    for host in hosts:
        count += _audit_processes(
            host, processes.get(host.host_id, ()), by_host.get(host.host_id, {}), policy, findings
        )
    findings += _host_findings(hosts, policy)
    findings.sort(
        key=lambda f: (-f.severity, f.check, f.pointer_bits or 64, f.host_id, -f.value, f.pid)
    )
    return AuditReport(
        generated_at=time.time() if now is None else now,
        host_count=len(hosts),
        process_count=count,
        findings=tuple(findings),
        applications=_applications(by_id, processes),
        recommendations=_recommendations(hosts, processes, by_host, policy),
    )


def _by_host(history: History) -> dict[str, dict[int, Series]]:
    """``history`` as host id -> pid -> series."""
    out: dict[str, dict[int, Series]] = {}
    for (host_id, pid), series in history.items():
        out.setdefault(host_id, {})[pid] = series
    return out


def _audit_processes(
    host: Host,
    items: Iterable[AuditedProcess],
    history: Mapping[int, Series],
    policy: Policy,
    out: list[Finding],
) -> int:
    """Add the findings of each of the host's processes to ``out`` (``history`` holds
    their earlier map counts by pid); return how many have an address space (the
    others are not audited).

    Every check on a process is here. The audit runs this over every process of the
    fleet and most cross no threshold, so each check's test comes first, in this loop
    (a comparison or two), and a finding is made, by a call, only where one fires."""
    map_rule, page_rule = policy.map_count, policy.single_page
    min_points = policy.trend.min_points
    windows = host.os == OperatingSystem.WINDOWS
    count = 0
    for item in items:
        process = item.process
        if process.address_space_empty:
            continue
        count += 1
        s = item.summary
        # Its own vm.max_map_count where the summary has it, else the host's.
        limit = s.max_map_count or host.max_map_count
        if limit > 0:
            fraction = s.map_count / limit
            if fraction >= map_rule.critical_fraction:
                out.append(
                    _map_count_finding(
                        host, item, Severity.CRITICAL, map_rule.critical_fraction, fraction, limit
                    )
                )
            elif fraction >= map_rule.warn_fraction:
                out.append(
                    _map_count_finding(
                        host, item, Severity.WARNING, map_rule.warn_fraction, fraction, limit
                    )
                )
        if (
            s.single_page_region_count >= page_rule.min_count
            and s.region_count
            and s.single_page_region_count / s.region_count >= page_rule.min_fraction
        ):
            out.append(_single_page_finding(host, item, policy))
        if windows:
            out += _windows_findings(host, item, policy)
        # The series and the latest summary: too few points whatever the window (most
        # processes have no history) is no trend.
        series = history.get(process.pid) or ()
        if len(series) + 1 >= min_points:
            trend = _trend_finding(host, item, series, limit, policy)
            if trend is not None:
                out.append(trend)
    return count


def _map_count_finding(
    host: Host,
    item: AuditedProcess,
    severity: Severity,
    crossed: float,
    fraction: float,
    limit: int,
) -> Finding:
    """``crossed``: the fraction of ``limit`` whose rule gives ``severity``."""
    count = item.summary.map_count
    return _finding(
        host,
        item,
        severity,
        Check.MAP_COUNT,
        count,
        round(crossed * limit),
        limit,
        f"{count:,} maps, {100 * fraction:.0f}% of vm.max_map_count {limit:,}: find the "
        "growing class with `vmatlas diff`, or raise vm.max_map_count on "
        f"{host.host_id} (see the recommendation)",
    )


def _single_page_finding(host: Host, item: AuditedProcess, policy: Policy) -> Finding:
    s, rule = item.summary, policy.single_page
    return _finding(
        host,
        item,
        Severity.WARNING,
        Check.SINGLE_PAGE_STORM,
        s.single_page_region_count,
        rule.min_count,
        s.region_count,
        f"{s.single_page_region_count:,} of {s.region_count:,} regions are single "
        f"pages ({s.guard_region_count:,} guards): a guard-page allocator or malloc "
        "debugger (Electric Fence, page heap, ASan) is likely on; turn it off",
    )


def _finding(
    host: Host,
    item: AuditedProcess,
    severity: Severity,
    check: Check,
    value: float,
    threshold: float,
    limit: float,
    message: str,
) -> Finding:
    p = item.process
    return Finding(
        severity,
        check,
        host.host_id,
        p.pid,
        p.name,
        value,
        threshold,
        limit,
        message,
        pointer_bits=p.pointer_bits,
        container_id=p.container_id,
        pod_uid=p.pod_uid,
    )


def _windows_findings(host: Host, item: AuditedProcess, policy: Policy) -> list[Finding]:
    out: list[Finding] = []
    p, s, rule = item.process, item.summary, policy.windows

    def finding(
        severity: Severity, check: Check, value: float, threshold: float, limit: float, message: str
    ) -> Finding:
        return _finding(host, item, severity, check, value, threshold, limit, message)

    bits = f"{p.pointer_bits}-bit"
    if s.free_bytes and s.largest_free_bytes < rule.largest_free_warn_bytes:
        critical = s.largest_free_bytes < rule.largest_free_critical_bytes
        out.append(
            finding(
                Severity.CRITICAL if critical else Severity.WARNING,
                Check.LARGEST_FREE_BLOCK,
                s.largest_free_bytes,
                rule.largest_free_critical_bytes if critical else rule.largest_free_warn_bytes,
                s.free_bytes,
                f"largest free block {human_bytes(s.largest_free_bytes)} of "
                f"{human_bytes(s.free_bytes)} free ({bits}): larger allocations fail although "
                "memory is free; restart it, reserve big blocks early, or build it 64-bit",
            )
        )
    if s.unusable_bytes >= rule.unusable_warn_bytes:
        out.append(
            finding(
                Severity.WARNING,
                Check.UNUSABLE,
                s.unusable_bytes,
                rule.unusable_warn_bytes,
                s.free_bytes,
                f"{human_bytes(s.unusable_bytes)} of address space unusable ({bits}): many "
                "allocations smaller than 64 KiB each strand the rest of their 64 KiB; "
                "allocate in larger blocks or pool them",
            )
        )
    if s.reserved_bytes >= rule.reserved_min_bytes and s.reserved_bytes > rule.reserved_ratio * max(
        s.committed_bytes, 1
    ):
        out.append(
            finding(
                Severity.WARNING if p.pointer_bits == 32 else Severity.INFO,
                Check.RESERVED_VS_COMMITTED,
                s.reserved_bytes,
                rule.reserved_ratio * s.committed_bytes,
                s.committed_bytes,
                f"reserves {human_bytes(s.reserved_bytes)} but commits "
                f"{human_bytes(s.committed_bytes)} ({bits}): release reservations it does not "
                "use (VirtualFree MEM_RELEASE); in a 32-bit process they exhaust address space",
            )
        )
    return out


def _trend_finding(
    host: Host, item: AuditedProcess, series: Series, limit: int, policy: Policy
) -> Finding | None:
    """The trend of ``series`` and the latest summary towards ``limit``; the caller has
    checked there are enough points before the window is applied."""
    rule = policy.trend
    if limit <= 0:
        return None
    latest_time, latest = item.capture_time, item.summary.map_count
    since = max(item.process.start_time, latest_time - rule.window_seconds)
    points = {t: float(n) for t, n in series if since <= t <= latest_time}
    points[latest_time] = float(latest)
    if len(points) < rule.min_points:
        return None
    if min(points.values()) == max(points.values()):
        # A flat series has no trend: not even the rounding error of a fitted slope.
        # (So a store may leave out the series that never leave their latest value.)
        return None
    ordered = sorted(points.items())
    slope, _ = least_squares(ordered)
    if slope <= 0 or slope * (ordered[-1][0] - ordered[0][0]) < rule.min_increase:
        return None
    seconds = max(0.0, (limit - latest) / slope)
    if seconds <= rule.critical_seconds:
        severity = Severity.CRITICAL
    elif seconds <= rule.warn_seconds:
        severity = Severity.WARNING
    elif seconds <= rule.info_seconds:
        severity = Severity.INFO
    else:
        return None
    return Finding(
        severity,
        Check.MAP_COUNT_TREND,
        host.host_id,
        item.process.pid,
        item.process.name,
        latest,
        slope,
        limit,
        f"gaining {slope * 60:,.1f} maps a minute ({len(ordered)} samples): reaches "
        f"vm.max_map_count {limit:,} in {human_duration(seconds)}; find the growing class "
        "with `vmatlas diff` before then",
        forecast_seconds=seconds,
        pointer_bits=item.process.pointer_bits,
        container_id=item.process.container_id,
        pod_uid=item.process.pod_uid,
    )


def _host_findings(hosts: Sequence[Host], policy: Policy) -> list[Finding]:
    out: list[Finding] = []
    limited = [h for h in hosts if h.max_map_count > 0]
    minimum = policy.hosts.min_max_map_count
    for h in limited:
        if h.max_map_count < minimum:
            out.append(
                Finding(
                    Severity.WARNING,
                    Check.MAX_MAP_COUNT_LOW,
                    h.host_id,
                    0,
                    "",
                    h.max_map_count,
                    minimum,
                    minimum,
                    f"vm.max_map_count is {h.max_map_count:,}, below the policy minimum "
                    f"{minimum:,}: set it in /etc/sysctl.d/ and apply with `sysctl --system`",
                )
            )
    groups: dict[str, list[Host]] = {}
    for h in limited:
        groups.setdefault(group_of(h, policy), []).append(h)
    for name, members in groups.items():
        values = Counter(h.max_map_count for h in members)
        if len(values) < 2:
            continue
        # The group's value: the most common, the larger on a tie.
        usual, usual_count = max(values.items(), key=lambda kv: (kv[1], kv[0]))
        for h in members:
            if h.max_map_count != usual:
                out.append(
                    Finding(
                        Severity.WARNING,
                        Check.MAX_MAP_COUNT_DRIFT,
                        h.host_id,
                        0,
                        "",
                        h.max_map_count,
                        usual,
                        usual,
                        f"vm.max_map_count is {h.max_map_count:,} but {usual_count} of "
                        f"{len(members)} hosts in group {name} use {usual:,}: check "
                        "/etc/sysctl.d and packages that overwrite it",
                    )
                )
    return out


def _applications(
    hosts: Mapping[str, Host], processes: Mapping[str, Sequence[AuditedProcess]]
) -> tuple[Application, ...]:
    # One pass, a running tally per executable: [instances, hosts, sum, min, max, peak
    # host id, peak pid, last host id]. The peak is the first instance with the largest
    # (map count, host id). A host's processes come together, so an instance on another
    # host than the last one is on a new host.
    tally: dict[str, list[Any]] = {}
    for host_id, items in processes.items():
        if host_id not in hosts:
            continue
        for item in items:
            process = item.process
            if process.address_space_empty:
                continue
            count = item.summary.map_count
            exe = _application_name(process)
            entry = tally.get(exe)
            if entry is None:
                tally[exe] = [1, 1, count, count, count, host_id, process.pid, host_id]
                continue
            entry[0] += 1
            if host_id != entry[7]:
                entry[1] += 1
                entry[7] = host_id
            entry[2] += count
            if count < entry[3]:
                entry[3] = count
            if count > entry[4] or (count == entry[4] and host_id > entry[5]):
                entry[4], entry[5], entry[6] = count, host_id, process.pid
    apps = [
        Application(
            executable=exe,
            instances=instances,
            host_count=host_count,
            map_count_max=highest,
            map_count_mean=total / instances,
            map_count_min=lowest,
            peak_host_id=peak_host,
            peak_pid=peak_pid,
        )
        for exe, (
            instances,
            host_count,
            total,
            lowest,
            highest,
            peak_host,
            peak_pid,
            _,
        ) in tally.items()
    ]
    apps.sort(key=lambda a: (-a.map_count_max, a.executable))
    return tuple(apps)


def _recommendations(
    hosts: Sequence[Host],
    processes: Mapping[str, Sequence[AuditedProcess]],
    by_host: Mapping[str, Mapping[int, Series]],
    policy: Policy,
) -> tuple[Recommendation, ...]:
    rule = policy.recommend
    groups: dict[str, list[Host]] = {}
    for h in hosts:
        if h.max_map_count > 0:
            groups.setdefault(group_of(h, policy), []).append(h)
    out = []
    for name, members in sorted(groups.items()):
        peak, peak_process, peak_host = 0, "", ""
        for h in members:
            history = by_host.get(h.host_id)
            for item in processes.get(h.host_id, ()):
                highest = item.summary.map_count
                if history:
                    series = history.get(item.process.pid)
                    if series:
                        highest = max(highest, *(n for _, n in series))
                if highest > peak:
                    peak, peak_process, peak_host = highest, item.process.name, h.host_id
        wanted = peak * rule.headroom_factor
        rounded = math.ceil(wanted / rule.round_to) * rule.round_to
        recommended = max(rule.minimum, rounded)
        reasoning = (
            f"largest process {peak_process or '-'} on {peak_host or '-'} peaked at "
            f"{peak:,} maps; x {rule.headroom_factor:g} headroom = {math.ceil(wanted):,}; "
            f"rounded up to a multiple of {rule.round_to:,} = {rounded:,}"
        )
        if recommended > rounded:
            reasoning += f"; raised to the policy floor {rule.minimum:,}"
        out.append(
            Recommendation(
                group=name,
                host_ids=tuple(sorted(h.host_id for h in members)),
                current_values=tuple(sorted({h.max_map_count for h in members})),
                peak_map_count=peak,
                peak_process=peak_process,
                peak_host_id=peak_host,
                headroom_factor=rule.headroom_factor,
                recommended_max_map_count=recommended,
                reasoning=reasoning,
            )
        )
    return tuple(out)


# -- documents ----------------------------------------------------------------------------

FORMAT = "vmatlas.audit/v1"


def report_to_document(report: AuditReport) -> dict[str, Any]:
    """The documented JSON form of a report (``vmatlas audit --format json``)."""
    return {
        "format": FORMAT,
        "generated_at": report.generated_at,
        "host_count": report.host_count,
        "process_count": report.process_count,
        "worst": report.worst.name.lower() if report.worst else "",
        "findings": [
            {
                "severity": f.severity.name.lower(),
                "check": f.check.name.lower(),
                "host_id": f.host_id,
                "pid": f.pid,
                "process": f.process,
                "value": f.value,
                "threshold": f.threshold,
                "limit": f.limit,
                "forecast_seconds": f.forecast_seconds,
                "pointer_bits": f.pointer_bits,
                "container_id": f.container_id,
                "pod_uid": f.pod_uid,
                "message": f.message,
            }
            for f in report.findings
        ],
        "applications": [dataclasses.asdict(a) for a in report.applications],
        "recommendations": [
            {**dataclasses.asdict(r), "host_ids": list(r.host_ids)} for r in report.recommendations
        ],
    }
