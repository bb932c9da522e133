"""``vmatlas hosts``: every host a server knows, online or not, and which server
(replica) holds its agent's stream."""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import asdict

from vmatlas.cli import COMMANDS
from vmatlas.cli.common import (
    DEFAULT_SERVER,
    add_connection_args,
    add_format_args,
    connect,
    output,
    print_table,
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("hosts", help=COMMANDS["hosts"])
    p.add_argument(
        "--target",
        metavar="HOST:PORT",
        default=DEFAULT_SERVER,
        help=f"the server to ask (default {DEFAULT_SERVER})",
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="per-call deadline"
    )
    add_connection_args(p)
    add_format_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with connect(args) as client:
        hosts = client.hosts()
    now = time.time()
    with output(args) as out:
        if args.format == "json":
            doc = [
                {**asdict(h), "host": {**asdict(h.host), "os": h.host.os.name.lower()}}
                for h in hosts
            ]
            json.dump(doc, out, indent=2)
            out.write("\n")
            return 0
        rows = [
            (
                h.host_id,
                "online" if h.online else "offline",
                h.host.os.name.lower(),
                h.host.max_map_count,
                h.process_count,
                round(now - h.last_seen_time),
                h.replica_id,
            )
            for h in hosts
        ]
        if args.format == "csv":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(
                ("host_id", "state", "os", "max_map_count", "processes", "seen_s_ago", "replica")
            )
            writer.writerows(rows)
            return 0
        print_table(
            ("HOST", "STATE", "OS", "MAX_MAP_COUNT", "PROCESSES", "LAST SEEN", "REPLICA"),
            [(*r[:5], f"{r[5]}s ago", r[6] or "-") for r in rows],
            out=out,
            right=(3, 4),
        )
    return 0
