"""Where one capture's time goes, stage by stage, on both benchmark workloads.

``python -m bench.profile [--rounds N]`` plants the file-backed and the anonymous-heavy
65,500-region workloads (bench.workload) and times, in this process, each stage of a
snapshot as the agent runs it: reading maps (and smaps), parsing, the summary, the
packed-column encode into the table's bytes and the whole answer the agent sends, then
the client's decode and the server's decode and check of the answer; ``cat`` of the
same file beside them. Medians of N rounds, in milliseconds of CPU time (user + system,
the kernel's formatting of procfs text included), so that other work on a shared
machine does not blur the split.
``VMATLAS_NO_NATIVE=1`` profiles the pure-Python path.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.run import Workload, cpu_command


def _median_ms(rounds: int, work: Callable[[], Any]) -> float:
    times = []
    for _ in range(rounds):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return statistics.median(times) * 1000


def profile(load: Workload, rounds: int) -> dict[str, float]:
    from vmatlas import wire
    from vmatlas.agents import linux
    from vmatlas.summary import summarize_process
    from vmatlas.validate import validate_snapshot_parts

    reader = linux.LinuxReader()
    host = reader.host()
    process = reader.process(load.pid, host)
    out: dict[str, float] = {}
    for name in ("maps", "smaps"):
        path = f"/proc/{load.pid}/{name}"
        out[f"cat {name}"] = (
            statistics.median(cpu_command(["cat", path]) for _ in range(rounds)) * 1000
        )
        with open(path, "rb") as f:
            data = f.read()
        out[f"{name} bytes"] = len(data)
        out[f"read {name}"] = _median_ms(rounds, lambda p=path: open(p, "rb").read())  # noqa: SIM115
        parse = linux.parse_maps if name == "maps" else linux.parse_smaps

        def parsed(d: bytes = data, parse: Callable[[bytes], Any] = parse) -> Any:
            linux.classify_path.cache_clear()
            linux.parse_rest.cache_clear()
            return parse(d)

        out[f"parse {name}"] = _median_ms(rounds, parsed)
    # What the reader does for residency: smaps scanned as it is read (native path),
    # or read whole and then parsed (pure path).
    out["smaps read and parsed, as the reader does"] = _median_ms(
        rounds, lambda: reader.regions(load.pid, residency=True)
    )
    table = linux.parse_maps(open(f"/proc/{load.pid}/maps", "rb").read())  # noqa: SIM115
    out["regions"] = len(table)
    out["summary"] = _median_ms(rounds, lambda: summarize_process(table, host, process))
    out["process identity"] = _median_ms(rounds, lambda: reader.process(load.pid, host))
    # The agent's own path: the table written straight to its bytes (no message built),
    # and GetSnapshot's whole answer, header and table, as the agent sends it.
    page = host.page_size_bytes
    out["encode"] = _median_ms(rounds, lambda: wire.table_to_bytes(table, page_size_bytes=page))
    data = wire.table_to_bytes(table, page_size_bytes=page)
    out["wire bytes"] = len(data)
    out["decode"] = _median_ms(rounds, lambda: wire.table_from_bytes(data))
    out["snapshot, as the agent answers it"] = _median_ms(
        rounds, lambda: wire.snapshot_response(reader.snapshot(load.pid))
    )
    # What the server does with the agent's answer before filing it: decode and check.
    header, regions = wire.snapshot_parts(reader.snapshot(load.pid))
    out["server: decode and check the answer"] = _median_ms(
        rounds, lambda: validate_snapshot_parts(header, regions, host)
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    from vmatlas import native

    print(f"capture path: {native.describe()}")
    loads = {"file-backed": Workload(65_500), "anonymous": Workload(65_500, anonymous=True)}
    try:
        results = {label: profile(load, args.rounds) for label, load in loads.items()}
    finally:
        for load in loads.values():
            load.close()
    stages = list(next(iter(results.values())))
    print("| stage | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for stage in stages:
        cells = []
        for result in results.values():
            value = result[stage]
            is_count = stage.endswith("bytes") or stage == "regions"
            cells.append(f"{value:,.0f}" if is_count else f"{value:.1f} ms")
        print(f"| {stage} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
