"""``vmatlas audit``: findings over the latest data of every host, per-application
statistics, and a recommended vm.max_map_count per host group.

Asks the server (--target) by default, whose stored history also gives each process's
trend and forecast; --local audits this host alone, as it is now (no trend).
The exit status is 3 when a finding at or above --fail-on exists.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from vmatlas.cli import COMMANDS
from vmatlas.cli.common import (
    DEFAULT_SERVER,
    add_connection_args,
    client_for,
    human_bytes,
    output,
    print_table,
    short_container,
)

if TYPE_CHECKING:
    from vmatlas.audit import AuditReport
    from vmatlas.policy import Policy

EXIT_FINDINGS = 3
CSV_COLUMNS = (
    "severity",
    "check",
    "host_id",
    "pid",
    "process",
    "value",
    "threshold",
    "limit",
    "forecast_seconds",
    "container_id",
    "pod_uid",
    "message",
)
BYTE_CHECKS = {"largest_free_block", "unusable", "reserved_vs_committed"}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "audit",
        help=COMMANDS["audit"],
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--target", metavar="HOST:PORT", help=f"the server to ask (default {DEFAULT_SERVER})"
    )
    where.add_argument("--local", action="store_true", help="audit this host directly")
    p.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS", help="per-call deadline"
    )
    add_connection_args(p)
    p.add_argument(
        "--policy", metavar="FILE", help="policy file (.toml or .json) over the built-in defaults"
    )
    p.add_argument(
        "--fail-on",
        choices=("info", "warning", "critical", "never"),
        default="never",
        help="exit 3 when a finding this severe or worse exists (default never)",
    )
    p.add_argument("--top", type=int, default=10, metavar="N", help="list at most N applications")
    p.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output format"
    )
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE, not stdout")
    p.set_defaults(func=run)


def local_report(policy: Policy) -> AuditReport:
    """This host audited as it is now."""
    from vmatlas.agents import default_reader
    from vmatlas.audit import audit
    from vmatlas.model import ProcessSummary

    reader = default_reader()
    host = reader.host()
    items = [i for i in reader.process_summaries() if isinstance(i, ProcessSummary)]
    return audit([host], {host.host_id: items}, policy=policy)


def run(args: argparse.Namespace) -> int:
    from vmatlas.audit import Severity, report_to_document
    from vmatlas.policy import DEFAULT_POLICY, load_policy

    policy = load_policy(args.policy) if args.policy else DEFAULT_POLICY
    if args.local:
        report = local_report(policy)
    else:
        with client_for(args, args.target or DEFAULT_SERVER) as client:
            report = client.audit(policy=policy)
    with output(args) as out:
        if args.format == "json":
            json.dump(report_to_document(report), out, indent=1)
            out.write("\n")
        elif args.format == "csv":
            write_csv(report, out)
        else:
            write_table(report, out, top=args.top)
    if args.fail_on != "never" and report.worst >= Severity[args.fail_on.upper()]:
        print(
            f"vmatlas audit: {report.worst.name.lower()} findings (--fail-on {args.fail_on})",
            file=sys.stderr,
        )
        return EXIT_FINDINGS
    return 0


def write_csv(report: AuditReport, out: TextIO) -> None:
    from vmatlas.audit import report_to_document

    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for f in report_to_document(report)["findings"]:
        writer.writerow([f[name] if f[name] is not None else "" for name in CSV_COLUMNS])


def write_table(report: AuditReport, out: TextIO, *, top: int = 10) -> None:
    from vmatlas.audit import human_duration

    out.write(
        f"audit of {report.host_count} hosts, {report.process_count} processes: "
        f"{len(report.findings)} findings\n"
    )
    if report.findings:
        out.write("\n")
        rows = []
        # A container column only where some finding is in a container.
        containers = any(f.container_id for f in report.findings)
        for f in report.findings:
            check = f.check.name.lower()
            value = f"{f.value:,.0f}" if check not in BYTE_CHECKS else human_bytes(int(f.value))
            if f.forecast_seconds is not None:
                value = f"{value} (limit in {human_duration(f.forecast_seconds)})"
            row: tuple[Any, ...] = (
                f.severity.name.lower(),
                f.host_id,
                f.pid or "-",
                f.process or "-",
            )
            if containers:
                row += (short_container(f.container_id),)
            rows.append((*row, check, value, f.message))
        header: tuple[str, ...] = ("SEVERITY", "HOST", "PID", "PROCESS")
        if containers:
            header += ("CONTAINER",)
        print_table(
            (*header, "CHECK", "VALUE", "WHAT TO DO"),
            rows,
            out=out,
            right=(2,),
        )
    if report.applications:
        out.write("\n")
        apps = report.applications[:top] if top > 0 else report.applications
        print_table(
            ("INSTANCES", "HOSTS", "MAX", "MEAN", "MIN", "EXECUTABLE"),
            [
                (
                    a.instances,
                    a.host_count,
                    f"{a.map_count_max:,}",
                    f"{a.map_count_mean:,.0f}",
                    f"{a.map_count_min:,}",
                    a.executable,
                )
                for a in apps
            ],
            out=out,
            right=(0, 1, 2, 3, 4),
        )
        if len(report.applications) > len(apps):
            out.write(f"... {len(report.applications) - len(apps)} more applications\n")
    for r in report.recommendations:
        current = ", ".join(f"{v:,}" for v in r.current_values)
        out.write(
            f"\nrecommended vm.max_map_count for group {r.group} "
            f"({len(r.host_ids)} hosts, now {current}): {r.recommended_max_map_count:,}\n"
            f"  because {r.reasoning}\n"
        )
