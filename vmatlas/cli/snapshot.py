"""``vmatlas snapshot PID``: one process's address space, pmap-like."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, TextIO

from vmatlas import errors
from vmatlas.cli import COMMANDS
from vmatlas.cli.common import (
    add_format_args,
    add_host_arg,
    add_target_args,
    fleet_target,
    human_bytes,
    output,
    print_table,
    source,
)

if TYPE_CHECKING:
    from vmatlas.model import Snapshot


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("snapshot", help=COMMANDS["snapshot"])
    p.add_argument("pid", type=int, help="process id")
    add_target_args(p)
    p.add_argument("--residency", action="store_true", help="read smaps: rss, pss, swap ...")
    p.add_argument("--free", action="store_true", help="list free gaps too")
    p.add_argument(
        "--windows",
        action="store_true",
        help="the Win32 view of a Wine process (VirtualQueryEx under Wine)",
    )
    add_host_arg(p, "taken now by its agent")
    p.add_argument(
        "--stored", action="store_true", help="with --host: the latest stored snapshot instead"
    )
    add_format_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vmatlas.model import SnapshotView

    options: dict[str, object] = {"include_free": args.free, "include_residency": args.residency}
    fleet: dict[str, object] = dict(fleet_target(args))
    if args.stored:
        if not fleet:
            raise errors.InvalidArgument("--stored needs --host")
        fleet["fresh"] = False
    with source(args) as src:
        if args.windows:
            options["view"] = SnapshotView.WINDOWS
        snap = src.snapshot(args.pid, **options, **fleet)
    from vmatlas.export import snapshot_to_csv, snapshot_to_document

    with output(args) as out:
        if args.format == "json":
            json.dump(snapshot_to_document(snap), out, indent=1)
            out.write("\n")
        elif args.format == "csv":
            out.write(snapshot_to_csv(snap))
        else:
            write_table(snap, out)
    return 0


def write_table(snap: Snapshot, out: TextIO) -> None:
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
