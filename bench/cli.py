"""The command line as a user meets it: whole ``vmatlas`` commands, each a fresh process
(interpreter start, imports, capture, formatting, output), timed beside the command it
stands in for, in interleaved rounds.

* ``vmatlas snapshot PID --local --format table|json|csv`` beside ``pmap -x PID`` on
  the same process, both writing to /dev/null;
* ``vmatlas --help`` beside a bare ``python -c pass`` of the same interpreter;
* standalone, also the idle agent (``bench.run.agent_at_rest``).

``python -m bench.cli [--quick]`` prints these rows alone; ``python -m bench`` includes
them in the full table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.run import (
    PYTHON,
    Row,
    Workload,
    agent_at_rest,
    interleaved,
    machine,
    render,
    time_command,
)

FOOTNOTE = """\
Command rows (`vmatlas ...`) are whole processes, timed from fork to exit exactly as
their references are: interpreter start, imports, capture, formatting and output to
/dev/null."""


def vmatlas_command() -> list[str]:
    """The console script users run, next to this interpreter."""
    script = Path(PYTHON).parent / "vmatlas"
    return [str(script)] if script.exists() else [PYTHON, "-m", "vmatlas"]


def snapshot_rows(rounds: int, load: Workload) -> list[Row]:
    vmatlas = vmatlas_command()
    pmap = ["pmap", "-x", str(load.pid)]
    rows = []
    for fmt in ("table", "json", "csv"):
        argv = [*vmatlas, "snapshot", "--local", str(load.pid), "--format", fmt]
        rows.append(
            interleaved(
                rounds,
                lambda: time_command(pmap),
                lambda argv=argv: time_command(argv),
                Row(
                    f"`vmatlas snapshot --local --format {fmt}`, {load.regions:,} regions",
                    "<= 1.0x (0.5x)",
                    "pmap -x",
                    goal=lambda r: r <= 1.0,
                ),
            )
        )
    return rows


def help_row(rounds: int) -> Row:
    return interleaved(
        rounds,
        lambda: time_command([PYTHON, "-c", "pass"]),
        lambda: time_command([*vmatlas_command(), "--help"]),
        Row("`vmatlas --help`", "<= 4.0x", "python -c pass", goal=lambda r: r <= 4.0),
    )


def command_rows(rounds: int, load: Workload) -> list[Row]:
    return [*snapshot_rows(rounds, load), help_row(rounds)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cli", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load = Workload(65_500)
    try:
        table = command_rows(3 if args.quick else 7, load)
        table.append(agent_at_rest(3.0 if args.quick else 10.0))
    finally:
        load.close()
    print(render(table))
    print()
    print(FOOTNOTE)
    print(f"Machine: {machine()}")
    print(f"Run: {'--quick, ' if args.quick else ''}{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
