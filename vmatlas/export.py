"""The documented JSON and CSV forms of a snapshot (``vmatlas snapshot --format``).

The JSON document is stable: ``{"format": "vmatlas.snapshot/v1", "host": {...},
"process": {...}, "summary": {...}, "view": ..., "regions": [...]}``; each region has
``start`` and ``end`` as ``0x`` hex strings, ``size`` in bytes, ``state``, ``perms``,
``type``, ``path``, ``offset``, ``inode`` and the rest of the schema's fields. It reads
back losslessly (:func:`snapshot_from_document`), which is how ``vmatlas diff`` takes
files.

:func:`write_json`, :func:`write_csv` and :func:`write_table` write straight from the
region columns: each distinct value (state, protection, type, kind, path, device,
size) is formatted once, every row is one string format, and the text goes out in
batches, so a 65K-region snapshot is never held whole as text, dicts or rows.
:func:`snapshot_to_document` builds the same document as Python objects, for callers
that want it in memory.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import operator
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from typing import Any, TextIO

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
    perms_text,
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


def _document_head(snapshot: Snapshot) -> dict[str, Any]:
    """Every member of the document but ``regions``, which comes last."""
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
    }


def snapshot_to_document(snapshot: Snapshot) -> dict[str, Any]:
    """The JSON document as Python objects (:func:`write_json` streams it as text)."""
    return {
        **_document_head(snapshot),
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
    """The CSV form as one string (:func:`write_csv` streams it)."""
    out = io.StringIO()
    write_csv(snapshot, out)
    return out.getvalue()


# -- streaming from the columns ----------------------------------------------------------

# Rows formatted before each write: large enough that writes cost nothing, small enough
# that the text in hand stays a few hundred kilobytes.
BATCH_ROWS = 4096


class FormatOnce(dict[Any, str]):
    """Text for each distinct key, formatted on first use."""

    def __init__(self, format_one: Callable[[Any], str]):
        super().__init__()
        self._format_one = format_one

    def __missing__(self, key: Any) -> str:
        text = self[key] = self._format_one(key)
        return text


def _device_text(device: int) -> str:
    return f"{os.major(device):02x}:{os.minor(device):02x}"


def _name(enum_type: type[RegionState | RegionType | RegionKind], value: int, empty: str) -> str:
    return enum_type(value).name.lower() if value else empty


def write_batched(out: TextIO, lines: Iterable[str], separator: str = "") -> None:
    """``separator.join(lines)`` written a batch at a time."""
    batch: list[str] = []
    first = True
    for line in lines:
        batch.append(line)
        if len(batch) == BATCH_ROWS:
            out.write(("" if first else separator) + separator.join(batch))
            batch.clear()
            first = False
    if batch:
        out.write(("" if first else separator) + separator.join(batch))


def _sizes(table: RegionTable) -> Iterator[int]:
    return map(operator.sub, table.end, table.start)


def _columns(table: RegionTable, residency_texts: Iterable[str]) -> Iterator[tuple[Any, ...]]:
    """Each region's values in the order the per-region writers unpack them: start,
    end, size, state, protection, type, kind, path, offset, device, inode, deleted,
    protection_raw, allocation (or None) and its residency text."""
    return zip(
        table.start,
        table.end,
        _sizes(table),
        table.state,
        table.protection,
        table.type,
        table.kind,
        table.path,
        table.offset,
        table.device,
        table.inode,
        table.deleted,
        table.protection_raw,
        _allocations(table),
        residency_texts,
        strict=True,
    )


def _allocations(table: RegionTable) -> Iterator[tuple[int, int, int] | None]:
    """Per row: (base, protection, raw protection), or None when the row carries
    neither a base nor a raw protection (no allocation fields in its document)."""
    if not table.allocation_base:
        return iter([None] * len(table))
    return (
        (base, prot, raw) if base or raw else None
        for base, prot, raw in zip(
            table.allocation_base,
            table.allocation_protection,
            table.allocation_protection_raw,
            strict=True,
        )
    )


def _residency_rows(table: RegionTable) -> Iterator[tuple[int, ...]] | None:
    if not table.residency:
        return None
    return zip(*(table.residency[name] for name in RESIDENCY_FIELDS), strict=True)


def _csv_cells(cells: Iterable[Any]) -> str:
    """Cells as the csv module writes them (quoted where needed), without a line end."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(list(cells))
    return out.getvalue()[:-1]


def write_csv(snapshot: Snapshot, out: TextIO) -> None:
    """The CSV form: a header, then one row per region (``CSV_COLUMNS``)."""
    table = snapshot.regions
    out.write(_csv_cells(CSV_COLUMNS) + "\n")
    # Adjacent columns that depend on the same few values are formatted together:
    # state, perms, type and kind; deleted and protection. A trailing comma is kept
    # in each, so that an empty last cell is written as the csv module writes it.
    classes = FormatOnce(
        lambda key: _csv_cells(
            (
                _name(RegionState, key[0], ""),
                perms_text(key[1]),
                _name(RegionType, key[2], ""),
                _name(RegionKind, key[3], ""),
                "",
            )
        )
    )
    paths = FormatOnce(lambda path: _csv_cells((path, "")))
    devices = FormatOnce(lambda device: _csv_cells((_device_text(device), "")))
    flags = FormatOnce(lambda key: _csv_cells((int(key[0]), "|".join(_flags(key[1])), "")))
    no_residency = "," * (len(RESIDENCY_FIELDS) - 1)
    residency = _residency_rows(table)
    residency_texts = (
        (",".join(map(str, values)) for values in residency)
        if residency is not None
        else iter([no_residency] * len(table))
    )
    rows = (
        f"{start:#x},{end:#x},{size},{classes[state, prot, rtype, kind]}{paths[path]}"
        f"{offset},{devices[device]}{inode},{flags[deleted, prot]}{raw},"
        f"{f'{alloc[0]:#x},{alloc[2]}' if alloc else ','},{res}\n"
        for (
            start,
            end,
            size,
            state,
            prot,
            rtype,
            kind,
            path,
            offset,
            device,
            inode,
            deleted,
            raw,
            alloc,
            res,
        ) in _columns(table, residency_texts)
    )
    write_batched(out, rows)


def _json_strings(names: list[str], indent: str) -> str:
    """A list of strings as ``json.dump(indent=1)`` lays it out at this depth."""
    if not names:
        return "[]"
    inner = indent + " "
    return "[\n" + ",\n".join(inner + json.dumps(n) for n in names) + "\n" + indent + "]"


def _json_region_texts(table: RegionTable) -> Iterator[str]:
    """Each region's document as ``json.dump(indent=1)`` writes it inside the
    snapshot document (two levels deep), without the separating comma."""
    # Keys sit three spaces in, the items of their lists and objects four.
    classes = FormatOnce(
        lambda key: (
            f'   "state": {json.dumps(_name(RegionState, key[0], ""))},\n'
            f'   "perms": {json.dumps(perms_text(key[1]))},\n'
            f'   "type": {json.dumps(_name(RegionType, key[2], ""))},\n'
            f'   "kind": {json.dumps(_name(RegionKind, key[3], ""))},\n'
        )
    )
    paths = FormatOnce(json.dumps)
    devices = FormatOnce(lambda device: json.dumps(_device_text(device)))
    flags = FormatOnce(
        lambda key: (
            f'   "deleted": {json.dumps(key[0])},\n'
            f'   "protection": {_json_strings(_flags(key[1]), "   ")},\n'
        )
    )
    allocation_flags = FormatOnce(lambda prot: _json_strings(_flags(prot), "   "))
    residency = _residency_rows(table)
    residency_format = (
        ',\n   "residency": {{\n'
        + ",\n".join(f'    "{name}": {{}}' for name in RESIDENCY_FIELDS)
        + "\n   }}"
    )
    residency_texts = (
        (residency_format.format(*values) for values in residency)
        if residency is not None
        else iter([""] * len(table))
    )
    for (
        start,
        end,
        size,
        state,
        prot,
        rtype,
        kind,
        path,
        offset,
        device,
        inode,
        deleted,
        raw,
        alloc,
        res,
    ) in _columns(table, residency_texts):
        allocation = (
            f',\n   "allocation_base": "{alloc[0]:#x}",\n'
            f'   "allocation_protection": {allocation_flags[alloc[1]]},\n'
            f'   "allocation_protection_raw": {alloc[2]}'
            if alloc
            else ""
        )
        yield (
            f'  {{\n   "start": "{start:#x}",\n   "end": "{end:#x}",\n   "size": {size},\n'
            f'{classes[state, prot, rtype, kind]}   "path": {paths[path]},\n'
            f'   "offset": {offset},\n   "device": {devices[device]},\n   "inode": {inode},\n'
            f'{flags[deleted, prot]}   "protection_raw": {raw}{allocation}{res}\n  }}'
        )


def write_json(snapshot: Snapshot, out: TextIO) -> None:
    """The JSON document, laid out as ``json.dump(snapshot_to_document(snapshot),
    indent=1)`` writes it, then a newline."""
    head = _document_head(snapshot)
    text = json.dumps(head, indent=1)
    # The regions are the document's last member: open it where the head closes.
    out.write(text[: -len("\n}")] + ',\n "regions": ')
    if not len(snapshot.regions):
        out.write("[]\n}\n")
        return
    out.write("[\n")
    write_batched(out, _json_region_texts(snapshot.regions), ",\n")
    out.write("\n ]\n}\n")
