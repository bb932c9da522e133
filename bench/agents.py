"""Many agents on one server: ``python -m bench.agents [--count N] [--heartbeat S]``.

Starts ``vmatlas server`` (loopback, temporary store) with ``--heartbeat`` (the
shortest interval it tells agents) and ``--heartbeat-budget``, then opens COUNT agent
streams (``AgentHubService.Connect``, each registered on a connection of its own, with
an agent's keepalive) from ``--holders`` helper processes (``bench.fleet hold``), so the
server holds COUNT live agents. Each sends heartbeats at the interval the server told
it, as an agent does. Reports the server's memory per agent ((RSS with them - RSS
before) / COUNT), its thread count, and its CPU over ``--idle-seconds`` while the
agents only send heartbeats and get them acknowledged, with the heartbeats a second
sent meanwhile and the interval told. Goals: at most 100 KiB per agent and 5% of a core
at rest for 10,000 agents. Prints a table and one JSON line; never a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

import psutil

from bench.run import MIB, PYTHON, ROOT, server_process

KIB = 1024
# The longest wait for every agent to have heard the interval for all.
SETTLE_SECONDS = 600.0


def _holder_state(procs: list[subprocess.Popen[str]]) -> tuple[int, float, float]:
    """Heartbeats the holders sent so far, and the shortest and longest interval their
    agents keep."""
    states = []
    for p in procs:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write("state\n")
        p.stdin.flush()
    for p in procs:
        assert p.stdout is not None
        states.append(json.loads(p.stdout.readline()))
    return (
        sum(s["heartbeats"] for s in states),
        min(s["intervals"][0] for s in states),
        max(s["intervals"][1] for s in states),
    )


def measure(
    count: int, holders: int, heartbeat: float, budget: float | None, idle_seconds: float
) -> dict[str, float]:
    server_args = ["--heartbeat", str(heartbeat), "--max-agents", str(count + 100)]
    if budget is not None:
        server_args += ["--heartbeat-budget", str(budget)]
    with server_process(*server_args) as (proc, target):
        from vmatlas.client import Client

        server = psutil.Process(proc.pid)
        with Client(target, timeout=30.0) as client:
            client.hosts()  # the query path warmed, as a running server has it
        time.sleep(0.5)
        before = server.memory_info().rss
        threads_before = server.num_threads()
        share = [count // holders + (i < count % holders) for i in range(holders)]
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [PYTHON, "-m", "bench.fleet", "hold", target, str(n), f"h{i}", "beat"],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for i, n in enumerate(share)
        ]
        try:
            for p, n in zip(procs, share, strict=True):
                assert p.stdout is not None
                line = p.stdout.readline()
                if not line or json.loads(line).get("ready") != n:
                    raise RuntimeError(f"a holder's {n} agents did not all register")
            connect_seconds = time.perf_counter() - started
            with Client(target, timeout=60.0) as client:
                online = sum(h.online for h in client.hosts())
            # Settle: the registrations' store writes, and the first heartbeats, whose
            # answers tell the agents that registered early (told a shorter interval,
            # for fewer agents) the one for all; then a few seconds of the steady state.
            time.sleep(min(max(2.0, 2 * heartbeat), 20.0))
            deadline = time.monotonic() + SETTLE_SECONDS
            while time.monotonic() < deadline:
                _, shortest, longest = _holder_state(procs)
                if shortest == longest:
                    break
                time.sleep(2.0)
            time.sleep(5.0)
            after = server.memory_info().rss
            beats0, _, _ = _holder_state(procs)
            cpu0 = sum(server.cpu_times()[:2])
            t0 = time.perf_counter()
            time.sleep(idle_seconds)
            cpu = sum(server.cpu_times()[:2]) - cpu0
            wall = time.perf_counter() - t0
            beats, shortest, longest = _holder_state(procs)
            with Client(target, timeout=60.0) as client:
                still_online = sum(h.online for h in client.hosts())
            threads = server.num_threads()
        finally:
            for p in procs:
                assert p.stdin is not None
                p.stdin.close()
            for p in procs:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    return {
        "agents": count,
        "online": online,
        "still_online": still_online,
        "connect_seconds": connect_seconds,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_agent": (after - before) / count,
        "threads_before": threads_before,
        "threads": threads,
        "idle_cpu_fraction": cpu / wall,
        "idle_seconds": wall,
        "heartbeat_seconds": heartbeat,
        "heartbeats_per_second": (beats - beats0) / wall,
        "told_seconds_min": shortest,
        "told_seconds_max": longest,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agents", description=__doc__)
    parser.add_argument("--count", type=int, default=10_000, help="agents (default 10000)")
    parser.add_argument("--holders", type=int, default=4, help="helper processes (default 4)")
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=10.0,
        help="the server's --heartbeat: the shortest interval it tells agents (default 10)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="the server's --heartbeat-budget, heartbeats a second (default: the server's)",
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=30.0, help="CPU measuring window (default 30)"
    )
    args = parser.parse_args(argv)
    r = measure(args.count, args.holders, args.heartbeat, args.budget, args.idle_seconds)
    per = r["bytes_per_agent"]
    cpu = 100 * r["idle_cpu_fraction"]
    print(f"{'what':<34} {'goal':<14} measured")
    print(f"{'agents connected and online':<34} {'':<14} {r['still_online']:,} of {r['agents']:,}")
    print(f"{'server memory per agent':<34} {'<= 100 KiB':<14} {per / KIB:,.1f} KiB")
    told = f"{r['told_seconds_min']:g}" + (
        f"-{r['told_seconds_max']:g}" if r["told_seconds_max"] != r["told_seconds_min"] else ""
    )
    print(
        f"{'server CPU at rest':<34} {'<= 5% core':<14} {cpu:.1f}% of a core "
        f"({r['heartbeats_per_second']:,.0f} heartbeats/s, every {told} s as told, "
        f"--heartbeat {r['heartbeat_seconds']:g}; over {r['idle_seconds']:.0f} s)"
    )
    print(
        f"server RSS {r['rss_before_bytes'] / MIB:,.0f} -> {r['rss_after_bytes'] / MIB:,.0f} MiB, "
        f"{r['threads_before']} -> {r['threads']} threads; all registered in "
        f"{r['connect_seconds']:.1f} s"
    )
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
