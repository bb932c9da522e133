"""``vmatlas snapshot PID``: one process's address space, pmap-like."""

from __future__ import annotations

import argparse
import operator
from collections.abc import Iterable
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
    from vmatlas.export import write_csv, write_json

    with output(args) as out:
        if args.format == "json":
            write_json(snap, out)
        elif args.format == "csv":
            write_csv(snap, out)
        else:
            write_table(snap, out)
    return 0


def write_table(snap: Snapshot, out: TextIO) -> None:
    """pmap-like: a line per region, each column as wide as its widest value, then the
    summary. Straight from the columns: each distinct size, state, perms, type and
    path is formatted once, and the rows go out in batches."""
    from vmatlas.export import FormatOnce, write_batched
    from vmatlas.model import RegionState, RegionType, perms_text

    p, s, h = snap.process, snap.summary, snap.host
    table = snap.regions
    n = len(table)
    command = " ".join(p.command_line) or p.name
    out.write(f"{p.pid}: {command}   ({h.host_id}, {snap.view.name.lower()} view)\n")

    sizes = list(map(operator.sub, table.end, table.start))
    size_texts = {size: human_bytes(size) for size in set(sizes)}
    states = {v: RegionState(v).name.lower() for v in set(table.state)}
    perms = {v: perms_text(v) for v in set(table.protection)}
    types = {v: RegionType(v).name.lower() if v else "-" for v in set(table.type)}
    # Addresses are uint64: always 16 hex digits.
    address = ["0" * 16] if n else []
    # (title, the distinct texts of its cells) for every column but the path.
    columns: list[tuple[str, Iterable[str]]] = [
        ("START", address),
        ("END", address),
        ("SIZE", size_texts.values()),
        ("STATE", states.values()),
        ("PERMS", perms.values()),
        ("TYPE", types.values()),
    ]
    windows = bool(table.allocation_base)
    if windows:
        bases = set(table.allocation_base)
        base_texts = (["-"] if 0 in bases else []) + (address if bases - {0} else [])
        columns.append(("ALLOC BASE", base_texts))
    residency: list[dict[int, str]] = []
    if snap.includes_residency:
        for title, name in (("RSS", "rss_bytes"), ("PSS", "pss_bytes"), ("SWAP", "swap_bytes")):
            values = set(table.residency.get(name, ()))
            residency.append({v: human_bytes(v) for v in values})
            columns.append((title, residency[-1].values()))
    widths = [max([len(title), *map(len, texts)]) for title, texts in columns]
    titles = [title.ljust(w) for (title, _), w in zip(columns, widths, strict=True)]
    titles[2] = "SIZE".rjust(widths[2])
    out.write("  ".join([*titles, "PATH"]).rstrip() + "\n")

    # A row is its cells joined by two spaces, the last (the path) unpadded, and no
    # trailing blanks. The cells before the path are padded once per distinct value.
    start_pad = " " * (widths[0] - 16) + "  "
    end_pad = " " * (widths[1] - 16) + "  "
    size_cells = {size: text.rjust(widths[2]) + "  " for size, text in size_texts.items()}
    middle = FormatOnce(
        lambda key: (
            f"{states[key[0]].ljust(widths[3])}  {perms[key[1]].ljust(widths[4])}  "
            f"{types[key[2]].ljust(widths[5])}  "
        )
    )
    paths = FormatOnce(lambda key: key[0] + (" (deleted)" if key[1] else ""))
    extra: Iterable[str] = [""] * n
    if windows:
        base_width = widths[6]
        extra = (
            (f"{base:016x}" if base else "-").ljust(base_width) + "  "
            for base in table.allocation_base
        )
    if residency and table.residency:
        rss, pss, swap = (
            {v: text.ljust(w) + "  " for v, text in texts.items()}
            for texts, w in zip(residency, widths[-3:], strict=True)
        )
        before = extra
        extra = (
            prefix + rss[a] + pss[b] + swap[c]
            for prefix, a, b, c in zip(
                before,
                table.residency["rss_bytes"],
                table.residency["pss_bytes"],
                table.residency["swap_bytes"],
                strict=True,
            )
        )
    rows = (
        f"{start:016x}{start_pad}{end:016x}{end_pad}{size_cells[size]}"
        f"{middle[state, prot, rtype]}{more}{paths[path, deleted]}".rstrip()
        + "\n"
        for start, end, size, state, prot, rtype, more, path, deleted in zip(
            table.start,
            table.end,
            sizes,
            table.state,
            table.protection,
            table.type,
            extra,
            table.path,
            table.deleted,
            strict=True,
        )
    )
    write_batched(out, rows)
    limit = f"{s.max_map_count}" if s.max_map_count else "no limit"
    out.write(
        f"regions {s.region_count}  maps {s.map_count} of {limit}  "
        f"headroom {100 * s.headroom_fraction:.1f}%\n"
        f"committed {human_bytes(s.committed_bytes)}  reserved {human_bytes(s.reserved_bytes)}  "
        f"free {human_bytes(s.free_bytes)}  largest free {human_bytes(s.largest_free_bytes)}\n"
        f"single-page {s.single_page_region_count}  guard {s.guard_region_count}  "
        f"allocations {s.allocation_count}  unusable {human_bytes(s.unusable_bytes)}\n"
    )
