"""Several servers on one PostgreSQL database: ``python -m bench.replicas [--quick]``.

Every figure is a ratio from the same run, against a reference measured beside it:

* summary ingest: real agent streams (``bench.fleet ingest``) pushing complete batches
  of 200 summaries into one server, then into three servers sharing one fresh
  database at once (one client each): summaries per second in all and per server
  CPU second, and the three's total against the one's;
* a fresh snapshot of a planted process (``bench.workload``) through a server that
  forwards it to the server holding the agent, against the same snapshot through the
  holder itself (goal: at most 1.2x), interleaved round by round;
* the database's bytes per stored summary (the summary partitions' size over their
  rows);
* from these and two figures of ``python -m bench.agents`` (given as options), the
  README's capacity table: server cores, replicas, their memory and the database's
  size for 1,000, 10,000 and 100,000 hosts.

It makes a database of its own on the PostgreSQL server (``--postgres ADMIN_URL``,
default ``postgresql://postgres@127.0.0.1:5432/postgres``) for each part and drops it
at the end. Prints a table and one JSON line; never a pass/fail test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import psycopg

from bench.run import PYTHON, ROOT, vmatlas_process, wait_online
from bench.store import DEFAULT_POSTGRES, database_cpu_seconds, postgres_database

BATCH = 200  # processes a push, as bench.store and the audit use
HOST_ID = "bench-replicas"


@contextlib.contextmanager
def replica(url: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``vmatlas server --store URL`` on a loopback port (it advertises that port)."""
    with vmatlas_process(
        "server",
        "--store",
        url,
        "--retain",
        "0",
        "--http",
        "off",
        "--rate-limit",
        "1000000",
        "--rate-burst",
        "1000000",
    ) as started:
        yield started


def _cpu(proc: subprocess.Popen[str]) -> float:
    times = psutil.Process(proc.pid).cpu_times()
    return times.user + times.system


def _ingest_client(target: str, streams: int, pushes: int, tag: str) -> subprocess.Popen[str]:
    argv = ["ingest", target, str(streams), str(pushes), str(BATCH), tag]
    return subprocess.Popen(
        [PYTHON, "-m", "bench.fleet", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ingest(url: str, replicas: int, streams: int, pushes: int, tag: str) -> dict[str, float]:
    """``replicas`` servers on ``url``, one ``bench.fleet ingest`` client on each, all
    at once: summaries per second in all, and per server CPU second."""
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(replica(url)) for _ in range(replicas)]
        cpu0 = [_cpu(proc) for proc, _ in servers]
        db0 = database_cpu_seconds(url)
        clients = [
            _ingest_client(target, streams, pushes, f"{tag}-{i}")
            for i, (_, target) in enumerate(servers)
        ]
        answers = []
        for client in clients:
            out, err = client.communicate(timeout=600)
            lines = out.strip().splitlines()
            answer = json.loads(lines[-1]) if lines else {"error": err[-200:]}
            if "error" in answer:
                raise RuntimeError(f"ingest client: {answer['error']}")
            answers.append(answer)
        cpu = sum(_cpu(proc) - before for (proc, _), before in zip(servers, cpu0, strict=True))
        db = database_cpu_seconds(url) - db0
    summaries = replicas * streams * pushes * BATCH
    seconds = max(a["seconds"] for a in answers)
    return {
        "replicas": replicas,
        "summaries": summaries,
        "per_second": sum(a["per_second"] for a in answers),
        "seconds": seconds,
        "per_server_cpu_second": summaries / cpu if cpu else 0.0,
        "per_database_cpu_second": summaries / db if db else 0.0,
    }


def summary_bytes(url: str) -> tuple[float, int]:
    """(bytes a stored summary takes, summaries): the summary partitions' total size
    (heap, indexes, TOAST) over their rows."""
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("VACUUM ANALYZE summaries")
        (size,) = db.execute(
            """SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0)
               FROM pg_inherits i WHERE i.inhparent = 'summaries'::regclass"""
        ).fetchone() or (0,)
        (rows,) = db.execute("SELECT count(*) FROM summaries").fetchone() or (0,)
    return (float(size) / rows if rows else 0.0), int(rows)


@contextlib.contextmanager
def planted(regions: int) -> Iterator[int]:
    """A process holding about ``regions`` mappings: its pid."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "bench.workload", str(regions), "--anonymous"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # its region count, once planted
        yield proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


def forwarded_snapshot(url: str, rounds: int, regions: int) -> dict[str, Any]:
    """Seconds of a fresh snapshot through the holder and through another server,
    interleaved: the median of each and their ratio."""
    from vmatlas.client import Client

    with (
        planted(regions) as pid,
        replica(url) as (_, holder),
        replica(url) as (_, other),
        vmatlas_process("agent", "--server", holder, "--host-id", HOST_ID),
    ):
        wait_online(holder, HOST_ID)
        direct, forwarded = [], []
        with Client(holder) as near, Client(other) as far:
            for client in (near, far):  # connect, store the region table once: untimed
                client.snapshot(pid, host=HOST_ID, fresh=True)
            pairs = [(near, direct), (far, forwarded)]
            for _ in range(rounds):
                pairs.reverse()  # holder first, then the other first: neither always leads
                for client, times in pairs:
                    start = time.perf_counter()
                    snapshot = client.snapshot(pid, host=HOST_ID, fresh=True)
                    times.append(time.perf_counter() - start)
    ratio = statistics.median(f / d for f, d in zip(forwarded, direct, strict=True))
    return {
        "regions": len(snapshot.regions),
        "direct_seconds": statistics.median(direct),
        "forwarded_seconds": statistics.median(forwarded),
        "ratio": ratio,
    }


PROCESSES_PER_HOST = 200
PUSH_SECONDS = 60.0  # the agents' default --interval
RETAIN_DAYS = 30 + 1  # the default --retain, and up to a day more (whole partitions)
REPLICA_BUSY = 0.75  # of its one core (one event loop) a replica is planned to use


def capacity(
    summaries_per_cpu_second: float,
    summaries_per_database_cpu_second: float,
    bytes_per_summary: float,
    heartbeat_cpu_per_10k: float,
    kib_per_agent: float,
) -> list[str]:
    """The README's capacity table (markdown rows) for 1K, 10K and 100K hosts of
    PROCESSES_PER_HOST processes pushing every PUSH_SECONDS, from the measured
    figures: ingest per server CPU second and bytes per stored summary (this
    benchmark), idle CPU of 10,000 agents and memory per agent (bench.agents)."""
    rows = [
        "| hosts | summaries/s | server cores (ingest + heartbeats) | replicas "
        "(one spare) | memory per replica | database cores | database size (30 d) |",
        "|---|---|---|---|---|---|---|",
    ]
    for hosts in (1_000, 10_000, 100_000):
        rate = hosts * PROCESSES_PER_HOST / PUSH_SECONDS
        ingest_cores = rate / summaries_per_cpu_second
        heartbeat_cores = heartbeat_cpu_per_10k * hosts / 10_000
        cores = ingest_cores + heartbeat_cores
        replicas = max(1, -(-cores // REPLICA_BUSY)) + 1
        memory = hosts / (replicas - 1) * kib_per_agent / 1024
        database_cores = rate / summaries_per_database_cpu_second
        size = rate * 86_400 * RETAIN_DAYS * bytes_per_summary
        rows.append(
            f"| {hosts:,} | {rate:,.0f} | {cores:.2f} ({ingest_cores:.2f} + "
            f"{heartbeat_cores:.2f}) | {replicas:.0f} | {memory:,.0f} MiB | "
            f"{database_cores:.1f} | {size / 1e12:,.1f} TB |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replicas", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a fraction of the work")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, metavar="ADMIN_URL")
    parser.add_argument(
        "--heartbeat-cpu",
        type=float,
        default=0.29,
        metavar="CORES",
        help="server CPU at rest of 10,000 agents at the default heartbeat, from "
        "python -m bench.agents (for the capacity table; default 0.29)",
    )
    parser.add_argument(
        "--kib-per-agent",
        type=float,
        default=55.0,
        metavar="KIB",
        help="server memory per agent, from python -m bench.agents (default 55)",
    )
    args = parser.parse_args(argv)
    streams, pushes, rounds = (4, 10, 5) if args.quick else (4, 25, 15)
    result: dict[str, Any] = {}
    print(f"{'what':<52} measured", flush=True)
    with postgres_database(args.postgres) as url:
        one = ingest(url, 1, streams, pushes, "one")
        three = ingest(url, 3, streams, pushes, "three")
        per_summary, stored = summary_bytes(url)
    result.update(ingest_one=one, ingest_three=three, summary_bytes=per_summary)
    for name, r in (("summary ingest, 1 server", one), ("summary ingest, 3 servers", three)):
        print(
            f"{name:<52} {r['per_second']:,.0f} summaries/s in all, "
            f"{r['per_server_cpu_second']:,.0f}/s per server CPU s, "
            f"{r['per_database_cpu_second']:,.0f}/s per database CPU s",
            flush=True,
        )
    print(f"{'  3 servers / 1 server':<52} {three['per_second'] / one['per_second']:.2f}x")
    print(f"{'database bytes per stored summary':<52} {per_summary:,.0f} ({stored:,} summaries)")
    try:
        with postgres_database(args.postgres) as url:
            snap = forwarded_snapshot(url, rounds, 20_000)
        result["snapshot"] = snap
        print(
            f"{'fresh snapshot, through another server / the holder':<52} "
            f"{snap['ratio']:.2f}x (goal <= 1.2x; {snap['forwarded_seconds'] * 1e3:,.1f} ms "
            f"against {snap['direct_seconds'] * 1e3:,.1f} ms, {snap['regions']:,} regions)",
            flush=True,
        )
    except Exception as exc:  # a server that cannot forward yet: say so, keep the rest
        result["snapshot"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        print(f"{'fresh snapshot, through another server / the holder':<52} n/a ({exc})"[:160])
    print()
    for line in capacity(
        three["per_server_cpu_second"],
        three["per_database_cpu_second"],
        per_summary,
        args.heartbeat_cpu,
        args.kib_per_agent,
    ):
        print(line)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
