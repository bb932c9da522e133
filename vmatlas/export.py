"""The documented JSON and CSV forms of a snapshot (``vmatlas snapshot --format``).

The JSON document is stable: ``{"format": "vmatlas.snapshot/v1", "host": {...},
"process": {...}, "summary": {...}, "view": ..., "regions": [...]}``; each region has
``start`` and ``end`` as ``0x`` hex strings, ``size`` in bytes, ``state``, ``perms``,
``type``, ``path``, ``offset``, ``inode`` and the rest of the schema's fields. It reads
back losslessly (:func:`snapshot_from_document`), which is how ``vmatlas diff`` takes
files.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import asdict
from typing import Any

from vmatlas.model import (
    RESIDENCY_FIELDS,
    Host,
    OperatingSystem,
    Process,
    Protection,
    Region,
    RegionKind,
    RegionState,
    RegionTable,
    RegionType,
    Residency,
    Snapshot,
    SnapshotView,
    Summary,
)

FORMAT = "vmatlas.snapshot/v1"

CSV_COLUMNS = (
    "start",
    "end",
    "size",
    "state",
    "perms",
    "type",
    "kind",
    "path",
    "offset",
    "device",
    "inode",
    "deleted",
    "protection",
    "protection_raw",
    "allocation_base",
    "allocation_protection_raw",
    *RESIDENCY_FIELDS,
)


def _flags(protection: int) -> list[str]:
    return [flag.name.lower() for flag in Protection if flag and protection & flag and flag.name]


def region_document(region: Region) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "start": hex(region.start),
        "end": hex(region.end),
        "size": region.size,
        "state": region.state.name.lower(),
        "perms": region.perms,
        "type": region.type.name.lower() if region.type else "",
        "kind": region.kind.name.lower() if region.kind else "",
        "path": region.path,
        "offset": region.offset,
        "device": f"{os.major(region.device):02x}:{os.minor(region.device):02x}",
        "inode": region.inode,
        "deleted": region.deleted,
        "protection": _flags(region.protection),
        "protection_raw": region.protection_raw,
    }
    if region.allocation_base or region.allocation_protection_raw:
        doc["allocation_base"] = hex(region.allocation_base)
        doc["allocation_protection"] = _flags(region.allocation_protection)
        doc["allocation_protection_raw"] = region.allocation_protection_raw
    if region.residency is not None:
        doc["residency"] = asdict(region.residency)
    return doc


def snapshot_to_document(snapshot: Snapshot) -> dict[str, Any]:
    host = asdict(snapshot.host)
    host["os"] = snapshot.host.os.name.lower()
    process = asdict(snapshot.process)
    process["command_line"] = list(snapshot.process.command_line)
    return {
        "format": FORMAT,
        "host": host,
        "process": process,
        "capture_time": snapshot.capture_time,
        "view": snapshot.view.name.lower(),
        "includes_free": snapshot.includes_free,
        "includes_residency": snapshot.includes_residency,
        "summary": asdict(snapshot.summary),
        "regions": [region_document(r) for r in snapshot.regions.rows()],
    }


def _parse_device(text: str) -> int:
    major, minor = text.split(":")
    return os.makedev(int(major, 16), int(minor, 16))


def _parse_flags(names: list[str]) -> Protection:
    value = Protection.NONE
    for name in names:
        value |= Protection[name.upper()]
    return value


def region_from_document(doc: dict[str, Any]) -> Region:
    residency = doc.get("residency")
    return Region(
        start=int(doc["start"], 16),
        end=int(doc["end"], 16),
        state=RegionState[doc["state"].upper()],
        protection=_parse_flags(doc.get("protection", [])),
        protection_raw=int(doc.get("protection_raw", 0)),
        type=RegionType[doc["type"].upper()] if doc.get("type") else RegionType.UNSPECIFIED,
        path=doc.get("path", ""),
        offset=int(doc.get("offset", 0)),
        device=_parse_device(doc.get("device", "00:00")),
        inode=int(doc.get("inode", 0)),
        deleted=bool(doc.get("deleted", False)),
        kind=RegionKind[doc["kind"].upper()] if doc.get("kind") else RegionKind.UNSPECIFIED,
        allocation_base=int(doc.get("allocation_base", "0x0"), 16),
        allocation_protection=_parse_flags(doc.get("allocation_protection", [])),
        allocation_protection_raw=int(doc.get("allocation_protection_raw", 0)),
        residency=Residency(**residency) if residency is not None else None,
    )


def snapshot_from_document(doc: dict[str, Any]) -> Snapshot:
    """The snapshot a :func:`snapshot_to_document` document describes. Raises
    ValueError (naming the problem) for anything that is not such a document."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not a vmatlas snapshot document (expected format {FORMAT!r})")
    try:
        host = dict(doc["host"])
        host["os"] = OperatingSystem[host["os"].upper()]
        process = dict(doc["process"])
        process["command_line"] = tuple(process.get("command_line", ()))
        regions = RegionTable.from_rows([region_from_document(r) for r in doc["regions"]])
        return Snapshot(
            host=Host(**host),
            process=Process(**process),
            capture_time=float(doc["capture_time"]),
            summary=Summary(**doc["summary"]),
            regions=regions,
            view=SnapshotView[doc.get("view", "native").upper()],
            includes_free=bool(doc.get("includes_free", False)),
            includes_residency=bool(doc.get("includes_residency", False)),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed snapshot document: {exc!r}") from None


def snapshot_to_csv(snapshot: Snapshot) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for region in snapshot.regions.rows():
        doc = region_document(region)
        residency = doc.get("residency", {})
        writer.writerow(
            [
                doc["start"],
                doc["end"],
                doc["size"],
                doc["state"],
                doc["perms"],
                doc["type"],
                doc["kind"],
                doc["path"],
                doc["offset"],
                doc["device"],
                doc["inode"],
                int(doc["deleted"]),
                "|".join(doc["protection"]),
                doc["protection_raw"],
                doc.get("allocation_base", ""),
                doc.get("allocation_protection_raw", ""),
                *(residency.get(name, "") for name in RESIDENCY_FIELDS),
            ]
        )
    return out.getvalue()
