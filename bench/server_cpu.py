"""Where a fresh snapshot through the server spends CPU, process by process.

``python -m bench.server_cpu [--rounds N]`` runs ``vmatlas server`` and ``vmatlas
agent`` as ``python -m bench`` does, plants the file-backed and the anonymous-heavy
65,500-region workloads, asks the server for N fresh snapshots of each (the client
library in this process decodes them), and prints the CPU time (user + system) that
each of the three processes spent per snapshot, read from ``/proc`` before and after,
beside the CPU time of ``cat`` of the same maps file. CPU, not wall time: other work
on a shared machine does not blur it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from bench.run import Workload, agent_process, cpu_command, server_process, wait_online

HOST_ID = "bench-agent"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_cpu", description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    from vmatlas.client import Client

    print("| workload | cat maps | server | agent | client | all three / cat |")
    print("|---|---|---|---|---|---|")
    with (
        server_process() as (server, target),
        agent_process("--server", target, "--host-id", HOST_ID) as (agent, _),
    ):
        wait_online(target, HOST_ID)
        client = Client(target)
        for label, anonymous in (("file-backed", False), ("anonymous", True)):
            load = Workload(65_500, anonymous=anonymous)
            try:
                client.snapshot(load.pid, host=HOST_ID, fresh=True)  # files the table
                cat = statistics.median(cpu_command(["cat", load.maps_path]) for _ in range(5))
                before = _cpu_seconds(server.pid), _cpu_seconds(agent.pid), time.process_time()
                for _ in range(args.rounds):
                    client.snapshot(load.pid, host=HOST_ID, fresh=True)
                after = _cpu_seconds(server.pid), _cpu_seconds(agent.pid), time.process_time()
            finally:
                load.close()
            spent = [(b - a) / args.rounds for a, b in zip(before, after, strict=True)]
            cells = " | ".join(f"{s * 1000:.1f} ms" for s in spent)
            print(f"| {label} | {cat * 1000:.1f} ms | {cells} | {sum(spent) / cat:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
