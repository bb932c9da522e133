"""``vmatlas ps``: processes by region count, with their headroom to the map limit."""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from vmatlas import errors
from vmatlas.cli import COMMANDS
from vmatlas.cli.common import (
    DEFAULT_SERVER,
    add_format_args,
    add_host_arg,
    add_target_args,
    connect,
    fleet_target,
    human_bytes,
    output,
    print_table,
    short_container,
    source,
)
from vmatlas.model import ProcessOrder

if TYPE_CHECKING:
    from vmatlas.model import ProcessSummary

COLUMNS = (
    "pid",
    "name",
    "user",
    "map_count",
    "max_map_count",
    "headroom",
    "committed",
    "reserved",
    "container_id",
    "pod_uid",
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ps", help=COMMANDS["ps"])
    add_target_args(p)
    p.add_argument("--top", type=int, default=0, metavar="N", help="only the first N")
    p.add_argument(
        "--sort",
        choices=[order.keyword for order in ProcessOrder],
        default=ProcessOrder.REGIONS.keyword,
        help="order",
    )
    p.add_argument("--name", default="", help="only processes whose name contains this")
    add_host_arg(p, "the latest summaries its agent pushed")
    p.add_argument(
        "--all-hosts",
        action="store_true",
        help="every host the server knows, closest to the limit first with --sort headroom",
    )
    add_format_args(p)
    p.set_defaults(func=run)


def _rows(args: argparse.Namespace) -> tuple[list[tuple[str, ProcessSummary]], Any]:
    """``(host_id, summary)`` pairs, plus the one host's facts (None across hosts)."""
    if args.all_hosts:
        if args.local or args.host:
            raise errors.InvalidArgument("--all-hosts excludes --local and --host")
        args.target = args.target or DEFAULT_SERVER
        with connect(args) as client:
            found = client.fleet_processes(order=args.sort, limit=args.top, name=args.name)
        return [(f.host_id, f.item) for f in found], None
    fleet = fleet_target(args)
    with source(args) as src:
        items = src.processes(order=args.sort, limit=args.top, name=args.name, **fleet)
    return [(items.host.host_id, p) for p in items], items


def run(args: argparse.Namespace) -> int:
    rows, items = _rows(args)
    with output(args) as out:
        if args.format == "json":
            doc: dict[str, Any] = {
                "processes": [
                    {
                        "host_id": host_id,
                        "process": {
                            **asdict(p.process),
                            "command_line": list(p.process.command_line),
                        },
                        "summary": asdict(p.summary),
                        "capture_time": p.capture_time,
                    }
                    for host_id, p in rows
                ],
            }
            if items is not None:
                doc["host"] = {**asdict(items.host), "os": items.host.os.name.lower()}
                doc["access_denied_count"] = items.access_denied_count
            json.dump(doc, out, indent=2)
            out.write("\n")
            return 0
        table = [
            (
                host_id,
                p.process.pid,
                p.process.name,
                p.process.user,
                p.summary.map_count,
                p.summary.max_map_count,
                f"{100 * p.summary.headroom_fraction:.1f}%",
                p.summary.committed_bytes,
                p.summary.reserved_bytes,
                p.process.container_id,
                p.process.pod_uid,
            )
            for host_id, p in rows
        ]
        if args.format == "csv":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(("host_id", *COLUMNS))
            writer.writerows(table)
            return 0
        header: tuple[str, ...] = (
            "HOST",
            "PID",
            "NAME",
            "USER",
            "MAPS",
            "LIMIT",
            "HEADROOM",
            "COMMITTED",
            "RESERVED",
        )
        cells: list[tuple[Any, ...]] = [
            (*r[:7], human_bytes(r[7]), human_bytes(r[8])) for r in table
        ]
        right: tuple[int, ...] = (1, 4, 5, 6, 7, 8)
        if any(p.process.container_id for _, p in rows):  # only where containers run
            header += ("CONTAINER",)
            cells = [
                (*c, short_container(p.process.container_id))
                for c, (_, p) in zip(cells, rows, strict=True)
            ]
        if items is not None:  # one host: named once below, not on every row
            header, cells, right = header[1:], [c[1:] for c in cells], tuple(i - 1 for i in right)
        print_table(header, cells, out=out, right=right)
        if items is not None:
            denied = items.access_denied_count
            note = f"; {denied} not readable (access denied)" if denied else ""
            out.write(f"(host {items.host.host_id}: {len(rows)} processes shown{note})\n")
    return 0
