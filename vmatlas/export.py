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
import functools
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


def _table_from_documents(docs: list[dict[str, Any]]) -> RegionTable:
    """Columns straight from region documents (a 65K-region file would spend most of
    its load time building row objects otherwise)."""
    table = RegionTable()
    flags = functools.lru_cache(maxsize=None)(lambda names: int(_parse_flags(list(names))))
    device = functools.lru_cache(maxsize=None)(_parse_device)
    states = {m.name.lower(): int(m) for m in RegionState}
    types = {m.name.lower(): int(m) for m in RegionType} | {"": 0}
    kinds = {m.name.lower(): int(m) for m in RegionKind} | {"": 0}
    windows = any("allocation_base" in d for d in docs)
    residency = docs[0].get("residency") is not None if docs else False
    if residency:
        table.residency = {name: [] for name in RESIDENCY_FIELDS}
    for d in docs:
        table.start.append(int(d["start"], 16))
        table.end.append(int(d["end"], 16))
        table.state.append(states[d["state"]])
        table.type.append(types[d.get("type", "")])
        table.protection.append(flags(tuple(d.get("protection", ()))))
        table.protection_raw.append(int(d.get("protection_raw", 0)))
        table.kind.append(kinds[d.get("kind", "")])
        table.path.append(d.get("path", ""))
        table.offset.append(int(d.get("offset", 0)))
        table.device.append(device(d.get("device", "00:00")))
        table.inode.append(int(d.get("inode", 0)))
        table.deleted.append(bool(d.get("deleted", False)))
        if windows:
            table.allocation_base.append(int(d.get("allocation_base", "0x0"), 16))
            table.allocation_protection.append(flags(tuple(d.get("allocation_protection", ()))))
            table.allocation_protection_raw.append(int(d.get("allocation_protection_raw", 0)))
        if residency:
            values = d["residency"]
            for name, column in table.residency.items():
                column.append(int(values[name]))
    return table


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
        regions = _table_from_documents(doc["regions"])
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
