"""The SQLite store under concurrent use from real threads and a second real
connection: a snapshot stored while retention prunes, and reads while a write
waits."""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
from pathlib import Path

from vmatlas import wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.fleet import HostStatus
from vmatlas.server.sqlite_store import DATABASE_NAME, SQLiteStore
from vmatlas.server.store import SnapshotRecord


def test_snapshots_stored_while_pruning_keep_their_region_tables(
    tmp_path: Path, reader: LinuxReader
) -> None:
    store = SQLiteStore(tmp_path)
    host = reader.host()
    store.put_host(host, 1000.0)
    header, regions = wire.snapshot_parts(reader.snapshot(os.getpid()))
    # Captured long ago: every prune deletes it, and its table with it, at once.
    record = SnapshotRecord(wire.snapshot_header_from_bytes(header), regions)
    done = threading.Event()
    failures: list[BaseException] = []

    def prune() -> None:
        while not done.is_set():
            store.prune(float("inf"))

    pruner = threading.Thread(target=prune)
    pruner.start()
    try:
        for _ in range(300):
            try:
                store.put_snapshot(host.host_id, record)
            except Exception as exc:
                failures.append(exc)
    finally:
        done.set()
        pruner.join()
    assert failures == []
    assert store.check() == []
    store.close()


def test_reads_go_on_while_a_write_waits(tmp_path: Path, reader: LinuxReader) -> None:
    store = SQLiteStore(tmp_path)
    host = reader.host()
    store.put_host(host, 1000.0)
    other = sqlite3.connect(tmp_path / DATABASE_NAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock: the store's writes wait
    writing = threading.Thread(target=store.mark_online, args=(host.host_id, 2000.0))
    writing.start()
    try:
        threading.Event().wait(0.3)  # the write is waiting for the lock by now
        answers: queue.Queue[list[HostStatus]] = queue.Queue()
        threading.Thread(target=lambda: answers.put(store.hosts()), daemon=True).start()
        hosts = answers.get(timeout=5.0)
    finally:
        other.execute("ROLLBACK")
        other.close()
        writing.join()
    assert [(h.host_id, h.last_seen_time) for h in hosts] == [(host.host_id, 1000.0)]
    assert store.host(host.host_id).last_seen_time == 2000.0
    store.close()
