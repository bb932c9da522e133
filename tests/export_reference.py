"""The snapshot exports as they were first written: a Region and a dict for every row,
then the standard library's json and csv writers. Kept unchanged as the reference the
column exporter must match byte for byte (the documented JSON and CSV forms and the
table)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TextIO

from vmatlas.model import RESIDENCY_FIELDS, Protection, Region, Snapshot

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


def snapshot_to_json(snapshot: Snapshot) -> str:
    """What ``vmatlas snapshot --format json`` wrote."""
    out = io.StringIO()
    json.dump(snapshot_to_document(snapshot), out, indent=1)
    out.write("\n")
    return out.getvalue()


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


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def print_table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    out: TextIO,
    right: Sequence[int] = (),
) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        parts = []
        for i, cell in enumerate(row):
            if i == len(row) - 1:
                parts.append(cell)
            elif i in right:
                parts.append(cell.rjust(widths[i]))
            else:
                parts.append(cell.ljust(widths[i]))
        out.write("  ".join(parts).rstrip() + "\n")


def snapshot_to_table(snap: Snapshot) -> str:
    """What ``vmatlas snapshot --format table`` wrote."""
    out = io.StringIO()
    p, s, h = snap.process, snap.summary, snap.host
    command = " ".join(p.command_line) or p.name
    out.write(f"{p.pid}: {command}   ({h.host_id}, {snap.view.name.lower()} view)\n")
    windows = bool(snap.regions.allocation_base)
    header = ["START", "END", "SIZE", "STATE", "PERMS", "TYPE"]
    if windows:
        header.append("ALLOC BASE")
    if snap.includes_residency:
        header += ["RSS", "PSS", "SWAP"]
    header.append("PATH")
    rows = []
    for r in snap.regions:
        row = [
            f"{r.start:016x}",
            f"{r.end:016x}",
            human_bytes(r.size),
            r.state.name.lower(),
            r.perms,
            r.type.name.lower() if r.type else "-",
        ]
        if windows:
            row.append(f"{r.allocation_base:016x}" if r.allocation_base else "-")
        if snap.includes_residency and r.residency is not None:
            row += [
                human_bytes(r.residency.rss_bytes),
                human_bytes(r.residency.pss_bytes),
                human_bytes(r.residency.swap_bytes),
            ]
        path = r.path + (" (deleted)" if r.deleted else "")
        row.append(path)
        rows.append(row)
    print_table(header, rows, out=out, right=(2,))
    limit = f"{s.max_map_count}" if s.max_map_count else "no limit"
    out.write(
        f"regions {s.region_count}  maps {s.map_count} of {limit}  "
        f"headroom {100 * s.headroom_fraction:.1f}%\n"
        f"committed {human_bytes(s.committed_bytes)}  reserved {human_bytes(s.reserved_bytes)}  "
        f"free {human_bytes(s.free_bytes)}  largest free {human_bytes(s.largest_free_bytes)}\n"
        f"single-page {s.single_page_region_count}  guard {s.guard_region_count}  "
        f"allocations {s.allocation_count}  unusable {human_bytes(s.unusable_bytes)}\n"
    )
    return out.getvalue()
