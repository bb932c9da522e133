"""The JSON documents of the web API, built from model objects (one function per
shape; the OpenAPI document in :mod:`.openapi` describes each).

Addresses leave only in a snapshot's region columns, as ``0x`` hex strings, and only
for callers who may see them; viewers get documents without them (see
:func:`strip_for_viewer`).
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

from vmatlas import diff as diffing
from vmatlas.audit import AuditReport, least_squares, report_to_document
from vmatlas.fleet import FleetProcess, History, HostStatus
from vmatlas.layout import (
    PictureClass,
    gaps_before,
    picture_classes,
    type_summary,
    unusable_before,
)
from vmatlas.model import Host, OperatingSystem, Process, Snapshot, Summary, perms_text
from vmatlas.security import redact

# History points the chart draws at most (older ones are thinned evenly).
MAX_HISTORY_POINTS = 2000
# The trend is fitted to the samples of this last stretch of history.
TREND_WINDOW_SECONDS = 86400.0


def host_document(host: Host) -> dict[str, Any]:
    return {
        "host_id": host.host_id,
        "hostname": host.hostname,
        "os": host.os.name.lower(),
        "os_version": host.os_version,
        "kernel_version": host.kernel_version,
        "max_map_count": host.max_map_count,
        "page_size_bytes": host.page_size_bytes,
        "allocation_granularity_bytes": host.allocation_granularity_bytes,
        "cpu_count": host.cpu_count,
        "memory_total_bytes": host.memory_total_bytes,
    }


def host_status_document(status: HostStatus) -> dict[str, Any]:
    return {
        **host_document(status.host),
        "online": status.online,
        "first_seen_time": status.first_seen_time,
        "last_seen_time": status.last_seen_time,
        "process_count": status.process_count,
        "dropped_push_count": status.dropped_push_count,
        "access_denied_count": status.access_denied_count,
        "replica_id": status.replica_id,
    }


def process_document(process: Process) -> dict[str, Any]:
    return {
        "pid": process.pid,
        "parent_pid": process.parent_pid,
        "name": process.name,
        "executable": process.executable,
        "command_line": list(process.command_line),
        "user": process.user,
        "start_time": process.start_time,
        "pointer_bits": process.pointer_bits,
        "container_id": process.container_id,
        "pod_uid": process.pod_uid,
    }


def summary_document(summary: Summary) -> dict[str, Any]:
    return {name: getattr(summary, name) for name in Summary.__slots__}


def fleet_process_document(item: FleetProcess) -> dict[str, Any]:
    return {
        "host_id": item.host_id,
        "process": process_document(item.item.process),
        "summary": summary_document(item.item.summary),
        "capture_time": item.item.capture_time,
    }


def fleet_document(
    hosts: list[HostStatus], worst: dict[str, FleetProcess], closest: list[FleetProcess]
) -> dict[str, Any]:
    """Fleet-wide figures, every host with its process closest to the limit
    (``worst``, by host id), and the ``closest`` processes across the fleet."""
    rows = []
    for status in hosts:
        doc = host_status_document(status)
        w = worst.get(status.host_id)
        doc["worst_headroom_fraction"] = w.item.summary.headroom_fraction if w else None
        doc["worst_pid"] = w.item.process.pid if w else 0
        doc["worst_process"] = w.item.process.name if w else ""
        doc["worst_map_count"] = w.item.summary.map_count if w else 0
        rows.append(doc)
    return {
        "host_count": len(hosts),
        "online_count": sum(status.online for status in hosts),
        "process_count": sum(status.process_count for status in hosts),
        "worst_headroom_fraction": (closest[0].item.summary.headroom_fraction if closest else None),
        "hosts": rows,
        "closest": [fleet_process_document(item) for item in closest],
    }


def groups_document(items: list[FleetProcess], by: str) -> dict[str, Any]:
    """A host's processes in groups, by the metrics' group rule (``by``: name,
    container or pod, after the rules for known applications): each group's totals and
    its members' pids, most maps first."""
    from vmatlas.metrics import MetricsSettings, group_members, group_totals

    settings = MetricsSettings(group_by=by)
    members = group_members((item.item for item in items), settings)
    rows: list[dict[str, Any]] = []
    for name, group in members.items():
        totals = group_totals(group)
        rows.append(
            {
                "name": name,
                "processes": totals.processes,
                "map_count": totals.map_count,
                "map_count_max": totals.map_count_max,
                "map_count_ratio_max": totals.ratio_max,
                "committed_bytes": totals.committed_bytes,
                "reserved_bytes": totals.reserved_bytes,
                "pids": sorted(item.process.pid for item in group),
            }
        )
    rows.sort(key=lambda row: (-row["map_count"], row["name"]))
    return {"by": by, "groups": rows}


def _thin(points: list[Any], most: int) -> list[Any]:
    if len(points) <= most:
        return points
    step = len(points) / most
    kept = [points[int(i * step)] for i in range(most)]
    kept[-1] = points[-1]
    return kept


def history_document(history: History, limit: int) -> dict[str, Any]:
    """Map count over time, the snapshots stored meanwhile, and the least-squares
    forecast to ``limit`` over the last day of samples (as the audit's trend)."""
    points = [(item.capture_time, item.summary.map_count) for item in history.summaries]
    points.extend((info.capture_time, info.summary.map_count) for info in history.snapshots)
    points.sort()
    forecast: dict[str, Any] | None = None
    if len(points) >= 2:
        recent = [p for p in points if p[0] >= points[-1][0] - TREND_WINDOW_SECONDS]
        if len(recent) >= 2:
            slope, intercept = least_squares([(t, float(n)) for t, n in recent])
            forecast = {
                "slope_per_second": slope,
                "intercept": intercept,
                "since_time": recent[0][0],
                "limit_time": (limit - intercept) / slope if slope > 0 and limit > 0 else None,
            }
    return {
        "limit": limit,
        "points": [{"time": t, "map_count": n} for t, n in _thin(points, MAX_HISTORY_POINTS)],
        "snapshots": [
            {
                "snapshot_id": info.snapshot_id,
                "capture_time": info.capture_time,
                "map_count": info.summary.map_count,
                "region_count": info.summary.region_count,
            }
            for info in history.snapshots
        ],
        "forecast": forecast,
    }


def _type_rows(snapshot: Snapshot, classes: list[int]) -> list[dict[str, Any]]:
    return [
        {
            "class": row.picture_class.keyword,
            "size_bytes": row.size_bytes,
            "committed_bytes": row.committed_bytes,
            "resident_bytes": row.resident_bytes,
            "blocks": row.blocks,
            "largest_bytes": row.largest_bytes,
        }
        for row in type_summary(snapshot, classes)
    ]


def _interned(values: Iterable[Any]) -> tuple[list[Any], list[int]]:
    """Distinct values and each row's index into them (paths repeat by the thousand,
    permissions are a handful)."""
    table: dict[Any, int] = {}
    indices = [table.setdefault(value, len(table)) for value in values]
    return list(table), indices


def _listed(column: Sequence[int]) -> list[int]:
    """A column as a list, for JSON (a typed column is converted in one C call)."""
    return column.tolist() if isinstance(column, array) else list(column)


def snapshot_document(
    snapshot_id: str, host_id: str, snapshot: Snapshot, *, with_regions: bool
) -> dict[str, Any]:
    """A stored snapshot: its facts, summary and type summary, and with
    ``with_regions`` its regions as columns (for the picture and the table).

    The columns are lean: numbers and indices, each distinct text (a permission, a
    path) formatted once in its own list; only the start addresses are one string a
    region (they exceed a JSON number's exact range)."""
    table = snapshot.regions
    host = snapshot.host
    classes = picture_classes(table, host.os)
    doc: dict[str, Any] = {
        "snapshot_id": snapshot_id,
        "host_id": host_id,
        "capture_time": snapshot.capture_time,
        "view": snapshot.view.name.lower(),
        "includes_residency": snapshot.includes_residency,
        "host": host_document(host),
        "process": process_document(snapshot.process),
        "summary": summary_document(snapshot.summary),
        "classes": [c.keyword for c in PictureClass],
        "type_summary": _type_rows(snapshot, classes),
    }
    if not with_regions:
        return doc
    range_min = snapshot.process.user_address_min or host.user_address_min
    if len(table):
        range_min = min(range_min, table.start[0])
    gaps = gaps_before(table, range_min)
    unusable = (
        unusable_before(table, range_min, host.allocation_granularity_bytes, host.page_size_bytes)
        if host.os == OperatingSystem.WINDOWS
        else None
    )
    if any(table.deleted):
        paths, path_index = _interned(
            path + " (deleted)" if deleted else path
            for path, deleted in zip(table.path, table.deleted, strict=True)
        )
    else:
        paths, path_index = _interned(table.path)
    protections, perms_index = _interned(table.protection)
    rss = table.residency.get("rss_bytes") if snapshot.includes_residency else None
    doc["regions"] = {
        "count": len(table),
        "start": list(map("0x{:x}".format, table.start)),
        "size": list(map(operator.sub, table.end, table.start)),
        "gap_before": gaps,
        "unusable_before": unusable,
        "class": classes,
        "state": _listed(table.state),
        "perms": perms_index,
        "perms_values": [perms_text(p) for p in protections],
        "path": path_index,
        "paths": paths,
        "offset": _listed(table.offset),
        "rss_bytes": None if rss is None else _listed(rss),
    }
    return doc


def diff_document(d: diffing.Diff, *, sees_addresses: bool) -> dict[str, Any]:
    doc = diffing.diff_to_document(d)
    if not sees_addresses:
        for change in doc["changes"]:  # type: ignore[attr-defined]
            change["start"] = change["end"] = None
    return doc


def audit_document(report: AuditReport) -> dict[str, Any]:
    return report_to_document(report)


def strip_for_viewer(value: Any) -> Any:
    """Every string in a document scrubbed of address-like text (the last line of
    defence: documents for viewers are built without addresses already)."""
    if isinstance(value, str):
        return redact.scrub_text(value)
    if isinstance(value, list):
        return [strip_for_viewer(v) for v in value]
    if isinstance(value, dict):
        return {k: strip_for_viewer(v) for k, v in value.items()}
    return value
