"""``vmatlas ps``: processes by region count, with their headroom to the map limit."""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict

from vmatlas import errors
from vmatlas.cli.common import (
    add_format_args,
    add_target_args,
    human_bytes,
    output,
    print_table,
    source,
)
from vmatlas.server.app import DEFAULT_LISTEN as DEFAULT_SERVER

COLUMNS = ("pid", "name", "user", "map_count", "max_map_count", "headroom", "committed", "reserved")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ps", help="processes by region count, with headroom to the map limit")
    add_target_args(p)
    p.add_argument("--top", type=int, default=0, metavar="N", help="only the first N")
    p.add_argument(
        "--sort", choices=("regions", "headroom", "pid"), default="regions", help="order"
    )
    p.add_argument("--name", default="", help="only processes whose name contains this")
    add_host_arg(p, "the latest summaries its agent pushed")
    add_format_args(p)
    p.set_defaults(func=run)


def add_host_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--host",
        metavar="NAME",
        help=f"a fleet host: {what}, through the server at --target (default {DEFAULT_SERVER})",
    )


def fleet_target(args: argparse.Namespace) -> dict[str, str]:
    """With --host, point --target at the server by default; the options that pass
    the host on to the client."""
    if not args.host:
        return {}
    if args.local:
        raise errors.InvalidArgument("--host and --local exclude each other")
    args.target = args.target or DEFAULT_SERVER
    return {"host": args.host}


def run(args: argparse.Namespace) -> int:
    fleet = fleet_target(args)
    with source(args) as src:
        items = src.processes(order=args.sort, limit=args.top, name=args.name, **fleet)
    with output(args) as out:
        if args.format == "json":
            doc = {
                "host": {**asdict(items.host), "os": items.host.os.name.lower()},
                "access_denied_count": items.access_denied_count,
                "processes": [
                    {
                        "process": {
                            **asdict(p.process),
                            "command_line": list(p.process.command_line),
                        },
                        "summary": asdict(p.summary),
                        "capture_time": p.capture_time,
                    }
                    for p in items
                ],
            }
            json.dump(doc, out, indent=2)
            out.write("\n")
            return 0
        rows = [
            (
                p.process.pid,
                p.process.name,
                p.process.user,
                p.summary.map_count,
                p.summary.max_map_count,
                f"{100 * p.summary.headroom_fraction:.1f}%",
                p.summary.committed_bytes,
                p.summary.reserved_bytes,
            )
            for p in items
        ]
        if args.format == "csv":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows(rows)
            return 0
        print_table(
            ("PID", "NAME", "USER", "MAPS", "LIMIT", "HEADROOM", "COMMITTED", "RESERVED"),
            [(*r[:6], human_bytes(r[6]), human_bytes(r[7])) for r in rows],
            out=out,
            right=(0, 3, 4, 5, 6, 7),
        )
        if items.access_denied_count:
            out.write(f"({items.access_denied_count} processes not readable: access denied)\n")
    return 0
