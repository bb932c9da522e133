"""``vmatlas diff A B``: what changed between two snapshots, biggest changes first.

A and B are each a JSON file written by ``vmatlas snapshot --format json``, a stored
snapshot id, or HOST:PID for that process's latest snapshot on the server. Two files
are diffed right here; anything else asks the server (--target).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import TYPE_CHECKING, TextIO

from vmatlas import errors
from vmatlas.cli import COMMANDS
from vmatlas.cli.common import (
    DEFAULT_SERVER,
    add_connection_args,
    client_for,
    human_bytes,
    output,
    print_table,
)

if TYPE_CHECKING:
    from vmatlas.diff import Diff
    from vmatlas.model import Snapshot

# --mode values and the DiffMode member each names.
MODES = {"auto": "UNSPECIFIED", "address": "ADDRESS", "identity": "IDENTITY"}
SUMMARY_LABELS = (
    ("region_count", "regions", False),
    ("map_count", "maps", False),
    ("committed_bytes", "committed", True),
    ("reserved_bytes", "reserved", True),
    ("free_bytes", "free", True),
    ("largest_free_bytes", "largest free", True),
    ("unusable_bytes", "unusable", True),
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "diff",
        help=COMMANDS["diff"],
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("before", help="FILE.json, snapshot id, or HOST:PID (latest)")
    p.add_argument("after", help="FILE.json, snapshot id, or HOST:PID (latest)")
    p.add_argument(
        "--mode",
        choices=tuple(MODES),
        default="auto",
        help="address: one process over time; identity: match regions by what they are "
        "(two processes or hosts); auto: address when both are one process",
    )
    p.add_argument(
        "--target", metavar="HOST:PORT", help=f"the server to ask (default {DEFAULT_SERVER})"
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="per-call deadline"
    )
    add_connection_args(p)
    p.add_argument("--top", type=int, default=20, metavar="N", help="list at most N changes")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE, not stdout")
    p.set_defaults(func=run)


def load_side(arg: str) -> Snapshot | str:
    """A snapshot read from a JSON file, or the reference for the server to resolve."""
    from vmatlas.export import snapshot_from_document

    if not (os.path.isfile(arg) or arg.endswith(".json")):
        return arg
    try:
        with open(arg, encoding="utf-8", errors="surrogateescape") as f:
            return snapshot_from_document(json.load(f))
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.InvalidArgument(f"{arg}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from vmatlas.diff import DiffMode, diff, diff_to_document
    from vmatlas.model import Snapshot

    mode = DiffMode[MODES[args.mode]]
    before, after = load_side(args.before), load_side(args.after)
    if isinstance(before, Snapshot) and isinstance(after, Snapshot):
        result = diff(before, after, mode)
    else:
        with client_for(args, args.target or DEFAULT_SERVER) as client:
            result = client.diff(before, after, mode=mode)
    with output(args) as out:
        if args.format == "json":
            json.dump(diff_to_document(result), out, indent=1)
            out.write("\n")
        else:
            write_table(result, out, top=args.top)
    return 0


def _signed(n: int) -> str:
    return f"{n:+,}"


def _signed_bytes(n: int) -> str:
    return ("+" if n > 0 else "") + human_bytes(n) if n else "0 B"


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def write_table(d: Diff, out: TextIO, *, top: int = 20) -> None:
    from vmatlas.diff import DiffMode

    b, a = d.before, d.after
    if d.mode == DiffMode.ADDRESS:
        elapsed = a.capture_time - b.capture_time
        out.write(
            f"diff by address: pid {a.pid} ({a.name}) on {a.host_id}, "
            f"{_when(b.capture_time)} -> {_when(a.capture_time)} ({elapsed:.1f} s)\n"
        )
    else:
        out.write(
            f"diff by identity: {b.host_id} pid {b.pid} ({b.name}) -> "
            f"{a.host_id} pid {a.pid} ({a.name})\n"
        )
    parts = []
    for name, label, is_bytes in SUMMARY_LABELS:
        before, after = getattr(d.summary_before, name), getattr(d.summary_after, name)
        if is_bytes:
            parts.append(f"{label} {_signed_bytes(after - before)}")
        else:
            parts.append(f"{label} {_signed(after - before)} ({before:,} -> {after:,})")
    out.write("  ".join(parts) + "\n")
    if d.unchanged:
        out.write("no region differs\n")
        return
    out.write("\n")
    print_table(
        ("REGIONS", "BYTES", "BEFORE", "AFTER", "CLASS"),
        [
            (
                _signed(c.region_delta),
                _signed_bytes(c.byte_delta),
                f"{c.regions_before:,}",
                f"{c.regions_after:,}",
                c.label,
            )
            for c in d.classes
        ],
        out=out,
        right=(0, 1, 2, 3),
    )
    if not d.changes:
        return
    out.write("\n")
    shown = d.changes[:top] if top > 0 else d.changes
    print_table(
        ("CHANGE", "REGIONS", "BYTES", "START", "END", "CLASS", "DETAIL"),
        [
            (
                c.kind.name.lower(),
                f"{c.regions_before:,} -> {c.regions_after:,}",
                _signed_bytes(c.byte_delta),
                f"{c.start:016x}",
                f"{c.end:016x}",
                c.label,
                c.detail,
            )
            for c in shown
        ],
        out=out,
        right=(1, 2),
    )
    if len(d.changes) > len(shown):
        out.write(f"... {len(d.changes) - len(shown)} more changes (--top 0 lists all)\n")
