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
from operator import attrgetter, itemgetter
from typing import Any

from vmatlas.model import Host, OperatingSystem, ProcessSummary
from vmatlas.policy import DEFAULT_POLICY, Policy

MIB = 1024 * 1024


# What the audit reads of one process: its latest summary as one flat tuple of these
# fields, in this order. A store reads a fleet's current set as rows of these columns
# and hands them over as they come, with no object made per process (an audit reads
# 200,000); :func:`audit_row` makes one of a ProcessSummary.
AUDIT_ROW_FIELDS = (
    "host_id",
    # of the process
    "pid",
    "name",
    "start_time",
    "executable",
    "pointer_bits",
    "address_space_empty",
    "container_id",
    "pod_uid",
    # of its summary
    "capture_time",
    "region_count",
    "map_count",
    "max_map_count",
    "committed_bytes",
    "reserved_bytes",
    "free_bytes",
    "largest_free_bytes",
    "single_page_region_count",
    "guard_region_count",
    "unusable_bytes",
)
AuditRow = tuple[Any, ...]
# Each field's position in a row (tests/test_audit.py holds them to the names above).
(
    _HOST_ID,
    _PID,
    _NAME,
    _START_TIME,
    _EXECUTABLE,
    _POINTER_BITS,
    _ADDRESS_SPACE_EMPTY,
    _CONTAINER_ID,
    _POD_UID,
    _CAPTURE_TIME,
    _REGION_COUNT,
    _MAP_COUNT,
    _MAX_MAP_COUNT,
    _COMMITTED_BYTES,
    _RESERVED_BYTES,
    _FREE_BYTES,
    _LARGEST_FREE_BYTES,
    _SINGLE_PAGE_REGION_COUNT,
    _GUARD_REGION_COUNT,
    _UNUSABLE_BYTES,
) = range(len(AUDIT_ROW_FIELDS))
_process_values = attrgetter(*AUDIT_ROW_FIELDS[_PID:_CAPTURE_TIME])
_summary_values = attrgetter(*AUDIT_ROW_FIELDS[_REGION_COUNT:])
_map_count_of = itemgetter(_MAP_COUNT)


def audit_row(host_id: str, item: ProcessSummary) -> AuditRow:
    """The row the audit reads of ``item``, a process of host ``host_id``."""
    return (
        host_id,
        *_process_values(item.process),
        item.capture_time,
        *_summary_values(item.summary),
    )


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


def _application_name(row: AuditRow) -> str:
    """What the audit calls the application a process runs: its executable, else its
    name, else its pid."""
    return row[_EXECUTABLE] or row[_NAME] or f"pid {row[_PID]}"


# -- the audit ----------------------------------------------------------------------------


def audit(
    hosts: Sequence[Host],
    processes: Mapping[str, Sequence[ProcessSummary]],
    history: History | None = None,
    policy: Policy = DEFAULT_POLICY,
    now: float | None = None,
) -> AuditReport:
    """Audit the latest data of every host. ``processes`` maps a host id to the latest
    summary of each of its processes; ``history`` holds earlier map counts per process."""
    rows = {
        host_id: [audit_row(host_id, item) for item in items]
        for host_id, items in processes.items()
    }
    return audit_rows(hosts, rows, history, policy, now)


def audit_rows(
    hosts: Sequence[Host],
    processes: Mapping[str, Sequence[AuditRow]],
    history: History | None = None,
    policy: Policy = DEFAULT_POLICY,
    now: float | None = None,
) -> AuditReport:
    """:func:`audit` of processes given as rows (:data:`AUDIT_ROW_FIELDS`), as a store
    reads them: ``processes`` maps a host id to its processes' rows."""
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
    rows: Iterable[AuditRow],
    history: Mapping[int, Series],
    policy: Policy,
    out: list[Finding],
) -> int:
    """Add the findings of each of the host's processes to ``out`` (``history`` holds
    their earlier map counts by pid); return how many have an address space (the
    others are not audited).

    Every check on a process is here. The audit runs this over every process of the
    fleet and most cross no threshold, so each check's test comes first, in this loop
    (a comparison or two on the row's fields), and a finding is made, by a call, only
    where one fires."""
    map_rule, page_rule = policy.map_count, policy.single_page
    critical_fraction, warn_fraction = map_rule.critical_fraction, map_rule.warn_fraction
    min_points = policy.trend.min_points
    windows = host.os == OperatingSystem.WINDOWS
    host_limit = host.max_map_count
    count = 0
    for row in rows:
        if row[_ADDRESS_SPACE_EMPTY]:
            continue
        count += 1
        # Its own vm.max_map_count where the summary has it, else the host's.
        limit = row[_MAX_MAP_COUNT] or host_limit
        if limit > 0:
            fraction = row[_MAP_COUNT] / limit
            if fraction >= critical_fraction:
                out.append(
                    _map_count_finding(
                        host, row, Severity.CRITICAL, critical_fraction, fraction, limit
                    )
                )
            elif fraction >= warn_fraction:
                out.append(
                    _map_count_finding(host, row, Severity.WARNING, warn_fraction, fraction, limit)
                )
        single_pages = row[_SINGLE_PAGE_REGION_COUNT]
        if (
            single_pages >= page_rule.min_count
            and row[_REGION_COUNT]
            and single_pages / row[_REGION_COUNT] >= page_rule.min_fraction
        ):
            out.append(_single_page_finding(host, row, policy))
        if windows:
            out += _windows_findings(host, row, policy)
        # The series and the latest summary: too few points whatever the window (most
        # processes have no history) is no trend.
        if history:
            series = history.get(row[_PID]) or ()
            if len(series) + 1 >= min_points:
                trend = _trend_finding(host, row, series, limit, policy)
                if trend is not None:
                    out.append(trend)
    return count


def _map_count_finding(
    host: Host,
    row: AuditRow,
    severity: Severity,
    crossed: float,
    fraction: float,
    limit: int,
) -> Finding:
    """``crossed``: the fraction of ``limit`` whose rule gives ``severity``."""
    count = row[_MAP_COUNT]
    return _finding(
        host,
        row,
        severity,
        Check.MAP_COUNT,
        count,
        round(crossed * limit),
        limit,
        f"{count:,} maps, {100 * fraction:.0f}% of vm.max_map_count {limit:,}: find the "
        "growing class with `vmatlas diff`, or raise vm.max_map_count on "
        f"{host.host_id} (see the recommendation)",
    )


def _single_page_finding(host: Host, row: AuditRow, policy: Policy) -> Finding:
    rule = policy.single_page
    single_pages, regions = row[_SINGLE_PAGE_REGION_COUNT], row[_REGION_COUNT]
    return _finding(
        host,
        row,
        Severity.WARNING,
        Check.SINGLE_PAGE_STORM,
        single_pages,
        rule.min_count,
        regions,
        f"{single_pages:,} of {regions:,} regions are single "
        f"pages ({row[_GUARD_REGION_COUNT]:,} guards): a guard-page allocator or malloc "
        "debugger (Electric Fence, page heap, ASan) is likely on; turn it off",
    )


def _finding(
    host: Host,
    row: AuditRow,
    severity: Severity,
    check: Check,
    value: float,
    threshold: float,
    limit: float,
    message: str,
    forecast_seconds: float | None = None,
) -> Finding:
    return Finding(
        severity,
        check,
        host.host_id,
        row[_PID],
        row[_NAME],
        value,
        threshold,
        limit,
        message,
        forecast_seconds=forecast_seconds,
        pointer_bits=row[_POINTER_BITS],
        container_id=row[_CONTAINER_ID],
        pod_uid=row[_POD_UID],
    )


def _windows_findings(host: Host, row: AuditRow, policy: Policy) -> list[Finding]:
    out: list[Finding] = []
    rule = policy.windows
    free, largest_free = row[_FREE_BYTES], row[_LARGEST_FREE_BYTES]
    unusable = row[_UNUSABLE_BYTES]
    committed, reserved = row[_COMMITTED_BYTES], row[_RESERVED_BYTES]
    pointer_bits = row[_POINTER_BITS]

    def finding(
        severity: Severity, check: Check, value: float, threshold: float, limit: float, message: str
    ) -> Finding:
        return _finding(host, row, severity, check, value, threshold, limit, message)

    bits = f"{pointer_bits}-bit"
    if free and largest_free < rule.largest_free_warn_bytes:
        critical = largest_free < rule.largest_free_critical_bytes
        out.append(
            finding(
                Severity.CRITICAL if critical else Severity.WARNING,
                Check.LARGEST_FREE_BLOCK,
                largest_free,
                rule.largest_free_critical_bytes if critical else rule.largest_free_warn_bytes,
                free,
                f"largest free block {human_bytes(largest_free)} of "
                f"{human_bytes(free)} free ({bits}): larger allocations fail although "
                "memory is free; restart it, reserve big blocks early, or build it 64-bit",
            )
        )
    if unusable >= rule.unusable_warn_bytes:
        out.append(
            finding(
                Severity.WARNING,
                Check.UNUSABLE,
                unusable,
                rule.unusable_warn_bytes,
                free,
                f"{human_bytes(unusable)} of address space unusable ({bits}): many "
                "allocations smaller than 64 KiB each strand the rest of their 64 KiB; "
                "allocate in larger blocks or pool them",
            )
        )
    if reserved >= rule.reserved_min_bytes and reserved > rule.reserved_ratio * max(committed, 1):
        out.append(
            finding(
                Severity.WARNING if pointer_bits == 32 else Severity.INFO,
                Check.RESERVED_VS_COMMITTED,
                reserved,
                rule.reserved_ratio * committed,
                committed,
                f"reserves {human_bytes(reserved)} but commits "
                f"{human_bytes(committed)} ({bits}): release reservations it does not "
                "use (VirtualFree MEM_RELEASE); in a 32-bit process they exhaust address space",
            )
        )
    return out


def _trend_finding(
    host: Host, row: AuditRow, series: Series, limit: int, policy: Policy
) -> Finding | None:
    """The trend of ``series`` and the latest summary towards ``limit``; the caller has
    checked there are enough points before the window is applied."""
    rule = policy.trend
    if limit <= 0:
        return None
    latest_time, latest = row[_CAPTURE_TIME], row[_MAP_COUNT]
    since = max(row[_START_TIME], latest_time - rule.window_seconds)
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
    return _finding(
        host,
        row,
        severity,
        Check.MAP_COUNT_TREND,
        latest,
        slope,
        limit,
        f"gaining {slope * 60:,.1f} maps a minute ({len(ordered)} samples): reaches "
        f"vm.max_map_count {limit:,} in {human_duration(seconds)}; find the growing class "
        "with `vmatlas diff` before then",
        forecast_seconds=seconds,
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
    hosts: Mapping[str, Host], processes: Mapping[str, Sequence[AuditRow]]
) -> tuple[Application, ...]:
    # One pass, a running tally per executable: [instances, hosts, sum, min, max, peak
    # host id, peak pid, last host id]. The peak is the first instance with the largest
    # (map count, host id). A host's processes come together, so an instance on another
    # host than the last one is on a new host.
    tally: dict[str, list[Any]] = {}
    for host_id, rows in processes.items():
        if host_id not in hosts:
            continue
        for row in rows:
            if row[_ADDRESS_SPACE_EMPTY]:
                continue
            count = row[_MAP_COUNT]
            exe = _application_name(row)
            entry = tally.get(exe)
            if entry is None:
                tally[exe] = [1, 1, count, count, count, host_id, row[_PID], host_id]
                continue
            entry[0] += 1
            if host_id != entry[7]:
                entry[1] += 1
                entry[7] = host_id
            entry[2] += count
            if count < entry[3]:
                entry[3] = count
            if count > entry[4] or (count == entry[4] and host_id > entry[5]):
                entry[4], entry[5], entry[6] = count, host_id, row[_PID]
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
    processes: Mapping[str, Sequence[AuditRow]],
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
            # The host's first process with the highest count, then the group's.
            highest, process = _peak(processes.get(h.host_id, ()), by_host.get(h.host_id))
            if highest > peak:
                peak, peak_process, peak_host = highest, process, h.host_id
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


def _peak(rows: Sequence[AuditRow], history: Mapping[int, Series] | None) -> tuple[int, str]:
    """The highest map count of a host's processes, its latest or any in its
    ``history``, and the name of the first process that reached it; (0, "") for none."""
    if not rows:
        return 0, ""
    if not history:
        row = max(rows, key=_map_count_of)  # the first of the highest
        return row[_MAP_COUNT], row[_NAME]
    peak, name = 0, ""
    for row in rows:
        highest = row[_MAP_COUNT]
        series = history.get(row[_PID])
        if series:
            highest = max(highest, *(n for _, n in series))
        if highest > peak:
            peak, name = highest, row[_NAME]
    return peak, name


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
