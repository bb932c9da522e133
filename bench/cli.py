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
import os
import sys
import time
from pathlib import Path

from bench.run import (
    PATHS,
    PYTHON,
    Row,
    Workload,
    agent_at_rest,
    interleaved,
    interleaved_paths,
    machine,
    render,
    time_command,
)
from vmatlas import native

FOOTNOTE = """\
Command rows (`vmatlas ...`) are whole processes, timed from fork to exit exactly as
their references are: interpreter start, imports, capture, formatting and output to
/dev/null. The snapshot commands run on both paths, the pure one with
VMATLAS_NO_NATIVE set, as an install without a C compiler runs them."""


def vmatlas_command() -> list[str]:
    """The console script users run, next to this interpreter."""
    script = Path(PYTHON).parent / "vmatlas"
    return [str(script)] if script.exists() else [PYTHON, "-m", "vmatlas"]


def timed_on(path: str, argv: list[str]) -> float:
    """One whole run of ``argv`` on a capture path: the pure one as a machine without
    the extension would run it (VMATLAS_NO_NATIVE set), the native one as installed."""
    env = {k: v for k, v in os.environ.items() if k != "VMATLAS_NO_NATIVE"}
    if path == "pure":
        env["VMATLAS_NO_NATIVE"] = "1"
    return time_command(argv, env=env)


def snapshot_rows(rounds: int, load: Workload, paths: tuple[str, ...]) -> list[Row]:
    """Each format on every given path, beside ``pmap -x`` in the same rounds."""
    vmatlas = vmatlas_command()
    pmap = ["pmap", "-x", str(load.pid)]
    rows = []
    for fmt in ("table", "json", "csv"):
        argv = [*vmatlas, "snapshot", "--local", str(load.pid), "--format", fmt]
        rows.append(
            interleaved_paths(
                rounds,
                lambda: time_command(pmap),
                {path: (lambda path=path, argv=argv: timed_on(path, argv)) for path in paths},
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


def command_rows(rounds: int, load: Workload, paths: tuple[str, ...] | None = None) -> list[Row]:
    """The snapshot commands on ``paths`` (by default both where the extension is
    built, pure alone where it is not: the console script beside this interpreter
    loads the same one), and ``--help``, which captures nothing."""
    if paths is None:
        paths = PATHS if native.available() else ("pure",)
    return [*snapshot_rows(rounds, load, paths), help_row(rounds)]


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
