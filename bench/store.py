"""Store benchmarks: summary ingest and a fleet audit's reads, on PostgreSQL against
the embedded SQLite store in the same run.

``python -m bench.store [--quick] [--postgres ADMIN_URL]`` makes a database of its own
on the PostgreSQL server (default ``postgresql://postgres@127.0.0.1:5432/postgres``),
drops it at the end, and prints one table:

* ingest: complete, sequenced pushes of 200 processes each (what an agent sends every
  interval), through ``Store.put_summaries`` as the hub calls it, each committed
  before the next; figures per second of wall time and per CPU second of this
  process (the server's side of ingest: one replica core), and the database's CPU
  seconds read from its backend processes;
* audit: what ``AnalysisService.Audit`` reads for 1,000 hosts x 200 processes (hosts,
  every current process's latest summary as light rows, the points of the series that
  move in the trend window), then the audit itself, as the servicer does it; and as
  reference in the same run, the same audit from full model objects of every process
  and every trend point of the window.

Targets (issue): ingest at least 20,000 summaries/s per server core on PostgreSQL; the
audit of 1,000 x 200 read from PostgreSQL within 1 s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import psutil
import psycopg

from bench.fleet import _host, summary_item
from vmatlas.audit import audit
from vmatlas.model import ProcessOrder, ProcessSummary
from vmatlas.policy import DEFAULT_POLICY
from vmatlas.server.domain.analysis import TREND_MIN_MAP_COUNT, Analysis
from vmatlas.server.store import ProcessFilter, PushOrigin, Store, open_store
from vmatlas.server.store.rules import RuleStore

PROCESSES_PER_HOST = 200
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Ingest:
    summaries: int
    wall_seconds: float
    cpu_seconds: float  # this process
    database_cpu_seconds: float  # the database's backends, where readable

    def line(self, name: str) -> str:
        per_core = self.summaries / self.cpu_seconds if self.cpu_seconds else 0.0
        per_db = (
            f", {self.summaries / self.database_cpu_seconds:,.0f}/s per database CPU s"
            if self.database_cpu_seconds
            else ""
        )
        return (
            f"{name:<34} {self.summaries / self.wall_seconds:>9,.0f} summaries/s wall, "
            f"{per_core:,.0f}/s per server core{per_db} "
            f"({self.summaries:,} in {self.wall_seconds:.2f} s)"
        )


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    name = f"vmatlas_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_cpu_seconds(url: str | None) -> float:
    """CPU seconds so far of the server processes serving the store's connections."""
    if url is None:
        return 0.0
    with psycopg.connect(url, autocommit=True) as db:
        pids = [
            row[0]
            for row in db.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'vmatlas'"
                " AND datname = current_database()"
            )
        ]
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except (psutil.Error, OSError):
            continue
        total += times.user + times.system
    return total


def pushes(
    host_ids: list[str], rounds: int, start: float
) -> list[tuple[str, list[ProcessSummary]]]:
    """Every host's pushes, built before the clock starts."""
    return [
        (
            host_id,
            [summary_item(pid, start + r) for pid in range(1000, 1000 + PROCESSES_PER_HOST)],
        )
        for r in range(rounds)
        for host_id in host_ids
    ]


def ingest(
    store: Store, host_ids: list[str], rounds: int, pg_url: str | None, threads: int
) -> Ingest:
    start = 1_700_000_000.0 + 3600
    for host_id in host_ids:
        store.put_host(_host(host_id), start)
    # A first round outside the clock: the process rows exist, as in steady state.
    for host_id, items in pushes(host_ids, 1, start - 60):
        store.put_summaries(host_id, items, origin=PushOrigin(host_id, 1))
    work = pushes(host_ids, rounds, start)
    sequences = {host_id: 1 for host_id in host_ids}
    lock = threading.Lock()
    # Pushes of one host stay in one thread, in order (as one agent's stream is).
    by_thread: list[list[tuple[str, list[ProcessSummary]]]] = [[] for _ in range(threads)]
    for host_id, items in work:
        by_thread[host_ids.index(host_id) % threads].append((host_id, items))

    def run(mine: list[tuple[str, list[ProcessSummary]]]) -> None:
        for host_id, items in mine:
            with lock:
                sequences[host_id] += 1
                sequence = sequences[host_id]
            store.put_summaries(host_id, items, origin=PushOrigin(host_id, sequence))

    db_before = database_cpu_seconds(pg_url)
    cpu_before = time.process_time()
    wall_before = time.perf_counter()
    workers = [threading.Thread(target=run, args=(mine,)) for mine in by_thread]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - wall_before
    cpu = time.process_time() - cpu_before
    db = database_cpu_seconds(pg_url) - db_before
    return Ingest(len(work) * PROCESSES_PER_HOST, wall, cpu, db)


def fill(store: Store, hosts: int) -> None:
    """``hosts`` hosts of PROCESSES_PER_HOST processes, each with a complete push
    ten minutes ago and one now (the current set and a trend point), four writers.
    One process in ten gains maps between the two (its trend is fitted); the others
    hold theirs."""
    now = time.time()
    host_ids = [f"audit-{i:05d}" for i in range(hosts)]
    for host_id in host_ids:
        store.put_host(_host(host_id), now)

    def item(pid: int, minutes: int) -> ProcessSummary:
        made = summary_item(pid, now - minutes * 60)
        if pid % 10:
            return made
        gained = (10 - minutes) * 5
        summary = replace(made.summary, map_count=made.summary.map_count + gained)
        return replace(made, summary=summary)

    def run(mine: list[str]) -> None:
        for minutes in (10, 0):
            for host_id in mine:
                items = [item(pid, minutes) for pid in range(1000, 1000 + PROCESSES_PER_HOST)]
                store.put_summaries(host_id, items)

    writers = [threading.Thread(target=run, args=(host_ids[i::4],)) for i in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()


def audit_reads(store: Store) -> tuple[float, float, int]:
    """(seconds reading, seconds in all with the audit, processes): the store's reads
    an audit makes, one after another, then the audit as the server runs it (domain
    Analysis.audit, whose reads run at once)."""
    began = time.perf_counter()
    now = time.time()
    store.hosts()
    count = sum(len(rows) for rows in store.audit_processes().values())
    store.trend_series(now - DEFAULT_POLICY.trend.window_seconds, now, TREND_MIN_MAP_COUNT)
    read = time.perf_counter() - began
    began = time.perf_counter()
    Analysis(store).audit(DEFAULT_POLICY, now=now)
    return read, time.perf_counter() - began, count


def audit_everything(store: Store) -> tuple[float, float]:
    """(seconds, 0): the reference: the same audit from full model objects of every
    current process and every trend point of the window (the reads an audit made
    before it read light rows and only the series that move)."""
    began = time.perf_counter()
    now = time.time()
    hosts = [status.host for status in store.hosts()]
    processes: dict[str, list[ProcessSummary]] = {}
    for fleet_process in store.latest_summaries_all_hosts():
        processes.setdefault(fleet_process.host_id, []).append(fleet_process.item)
    series = store.map_count_series(now - DEFAULT_POLICY.trend.window_seconds, now)
    history = {
        (host_id, item.process.pid): series.get(
            (host_id, item.process.pid, item.process.start_time), []
        )
        for host_id, items in processes.items()
        for item in items
        if item.summary.map_count >= TREND_MIN_MAP_COUNT
    }
    audit(hosts, processes, history, policy=DEFAULT_POLICY, now=now)
    return time.perf_counter() - began, 0.0


def audit_rows(store: Store) -> tuple[float, int]:
    """(seconds, rows): the same reads as raw rows from the database, before they
    become rows the audit reads: the database's and the driver's share of the audit."""
    assert isinstance(store, RuleStore)
    began = time.perf_counter()
    now = time.time()
    since = now - DEFAULT_POLICY.trend.window_seconds
    rows = len(store.backend.host_rows(None))
    rows += len(store.backend.current_rows(ProcessFilter(order=ProcessOrder.PID), light=True))
    trend = {"since": since, "until": now, "least": TREND_MIN_MAP_COUNT}
    rows += len(store.backend.read(store.backend.sql.trend_rows, trend))
    return time.perf_counter() - began, rows


def best(runs: int, measure: Callable[[], Any]) -> Any:
    results = [measure() for _ in range(runs)]
    return min(results, key=lambda r: r[0])


class Lines(list[str]):
    """Result lines, each printed as it comes (a long run that fails keeps them)."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.store", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a fraction of the work")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, metavar="ADMIN_URL")
    parser.add_argument(
        "--audit-hosts", type=int, default=1000, metavar="N", help="hosts in the audit (1000)"
    )
    args = parser.parse_args(argv)
    hosts, rounds = (20, 5) if args.quick else (50, 20)
    audit_hosts = args.audit_hosts
    host_ids = [f"ingest-{i:04d}" for i in range(hosts)]
    lines = Lines()
    with tempfile.TemporaryDirectory() as tmp:
        with postgres_database(args.postgres) as pg_url:
            sqlite = open_store(f"sqlite:///{tmp}/ingest.sqlite3")
            postgres = open_store(pg_url)
            try:
                reference = ingest(sqlite, host_ids, rounds, None, 1)
                one = ingest(postgres, host_ids, rounds, pg_url, 1)
                four = ingest(postgres, [h + "-t" for h in host_ids], rounds, pg_url, 4)
            finally:
                sqlite.close()
                postgres.close()
        lines.append(reference.line("ingest, SQLite (reference)"))
        lines.append(one.line("ingest, PostgreSQL, 1 writer"))
        lines.append(four.line("ingest, PostgreSQL, 4 writers"))
        ratio = (one.summaries / one.wall_seconds) / (reference.summaries / reference.wall_seconds)
        lines.append(f"{'':34} PostgreSQL 1 writer / SQLite: {ratio:.2f}x wall")
        # The audit on stores holding just the audited fleet.
        with postgres_database(args.postgres) as pg_url:
            sqlite = open_store(f"sqlite:///{tmp}/audit.sqlite3")
            postgres = open_store(pg_url)
            try:
                fill(sqlite, audit_hosts)
                fill(postgres, audit_hosts)
                sq_read, sq_all, count = best(3, lambda: audit_reads(sqlite))
                pg_read, pg_all, count = best(3, lambda: audit_reads(postgres))
                sq_rows, rows = best(3, lambda: audit_rows(sqlite))
                pg_rows, rows = best(3, lambda: audit_rows(postgres))
                sq_ref, _ = best(3, lambda: audit_everything(sqlite))
                pg_ref, _ = best(3, lambda: audit_everything(postgres))
            finally:
                sqlite.close()
                postgres.close()
        name = f"{audit_hosts} x {PROCESSES_PER_HOST}"
        lines.append(
            f"{f'audit reads, {name}, SQLite':<34} {sq_read:.3f} s reading, "
            f"{sq_all:.3f} s for the whole audit ({count:,} processes)"
        )
        lines.append(
            f"{f'audit reads, {name}, PostgreSQL':<34} {pg_read:.3f} s reading, "
            f"{pg_all:.3f} s for the whole audit ({pg_read / sq_read:.2f}x SQLite's reading)"
        )
        lines.append(
            f"{'  reference: from every summary':<34} PostgreSQL {pg_ref:.3f} s "
            f"({pg_ref / pg_all:.1f}x), SQLite {sq_ref:.3f} s ({sq_ref / sq_all:.1f}x): full "
            "model objects of every process and every trend point"
        )
        lines.append(
            f"{'  of which rows from the database':<34} PostgreSQL {pg_rows:.3f} s, SQLite "
            f"{sq_rows:.3f} s ({rows:,} rows; the rest is making the rows the audit reads)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
