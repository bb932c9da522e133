"""The SQLite store on its own: retention prunes exactly what is older than the cutoff,
a replayed push is a no-op, and the integrity check finds what is broken."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from vmatlas import errors, wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.model import ProcessSummary
from vmatlas.server.sqlite_store import DATABASE_NAME, SQLiteStore
from vmatlas.server.store import PushOrigin, SnapshotRecord, parse_duration


def test_parse_duration() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("12h") == 12 * 3600
    assert parse_duration("90m") == 5400
    assert parse_duration("45s") == 45
    assert parse_duration("0") == 0
    with pytest.raises(errors.InvalidArgument):
        parse_duration("12 parsecs")


def test_prune_removes_exactly_what_is_older(tmp_path: Path, reader: LinuxReader) -> None:
    store = SQLiteStore(tmp_path)
    host = reader.host()
    store.put_host(host, 1000.0)
    base = reader.process_summary(os.getpid())
    times = [1000.0, 2000.0, 2999.0, 3000.0, 3001.0, 4000.0]
    for t in times:
        item = ProcessSummary(base.process, base.summary, t)
        store.put_summaries(host.host_id, [item])
    snapshot = reader.snapshot(os.getpid())
    ids = {}
    for t in (2000.0, 3000.0, 4000.0):
        header, regions = wire.snapshot_parts(snapshot)
        record = SnapshotRecord(
            replace(wire.snapshot_header_from_bytes(header), capture_time=t), regions
        )
        ids[t] = store.put_snapshot(host.host_id, record)

    removed = store.prune(3000.0)

    assert removed == 3 + 1  # summaries at 1000, 2000, 2999 and the snapshot at 2000
    pid = os.getpid()
    history = store.history(host.host_id, pid, 0.0, float("inf"))
    assert [s.capture_time for s in history.summaries] == [3000.0, 3001.0, 4000.0]
    assert [s.snapshot_id for s in history.snapshots] == [ids[3000.0], ids[4000.0]]
    with pytest.raises(errors.NotFound):
        store.get_snapshot(ids[2000.0])
    assert store.get_snapshot(ids[3000.0])[1].regions == regions
    assert [h.host_id for h in store.hosts()] == [host.host_id]  # hosts stay
    # The one region table is still referenced; pruning everything drops it.
    db = sqlite3.connect(tmp_path / DATABASE_NAME)
    assert db.execute("SELECT count(*) FROM region_tables").fetchone() == (1,)
    store.prune(5000.0)
    assert db.execute("SELECT count(*) FROM region_tables").fetchone() == (0,)
    store.close()


def test_replayed_push_is_a_no_op_and_drops_add_up(tmp_path: Path, reader: LinuxReader) -> None:
    store = SQLiteStore(tmp_path)
    host = reader.host()
    store.put_host(host, 1000.0)
    base = reader.process_summary(os.getpid())

    def push(t: float, origin: PushOrigin) -> bool:
        item = ProcessSummary(base.process, replace(base.summary, map_count=int(t)), t)
        return store.put_summaries(host.host_id, [item], origin=origin)

    assert push(1000.0, PushOrigin("a", 1))
    assert push(1001.0, PushOrigin("a", 2))
    # The same pushes again (their acknowledgements were lost): nothing changes.
    assert not push(1000.0, PushOrigin("a", 1))
    assert not push(1001.0, PushOrigin("a", 2))
    # Pushes 3-5 dropped by the agent; 6 reports it, and 7 the same running total.
    assert push(1006.0, PushOrigin("a", 6, dropped_push_count=3))
    assert push(1007.0, PushOrigin("a", 7, dropped_push_count=3))
    assert store.host(host.host_id).dropped_push_count == 3
    # A restarted agent numbers from 1 again and its drops add to the host's total.
    assert push(1010.0, PushOrigin("b", 1, dropped_push_count=2))
    assert not push(1010.0, PushOrigin("b", 1, dropped_push_count=2))
    assert store.hosts()[0].dropped_push_count == 5
    history = store.history(host.host_id, os.getpid(), 0.0, float("inf"))
    assert [s.capture_time for s in history.summaries] == [1000.0, 1001.0, 1006.0, 1007.0, 1010.0]
    assert [s.summary.map_count for s in history.summaries] == [1000, 1001, 1006, 1007, 1010]
    store.close()


def test_integrity_check_finds_broken_tables(tmp_path: Path, reader: LinuxReader) -> None:
    store = SQLiteStore(tmp_path)
    host = reader.host()
    store.put_host(host, 1000.0)
    header, regions = wire.snapshot_parts(reader.snapshot(os.getpid()))
    record = SnapshotRecord(wire.snapshot_header_from_bytes(header), regions)
    snapshot_id = store.put_snapshot(host.host_id, record)
    assert store.check() == []
    store.close()
    checker = SQLiteStore(tmp_path, read_only=True)
    assert checker.check() == []
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        checker._db.execute("UPDATE hosts SET online = 1")
    checker.close()

    db = sqlite3.connect(tmp_path / DATABASE_NAME, isolation_level=None)
    # A region table that decompresses to bytes that are not a RegionTable.
    garbage = b"\xff\xff\xff"
    db.execute(
        "UPDATE region_tables SET zlib_data = ?, size_bytes = ?",
        (zlib.compress(garbage), len(garbage)),
    )
    problems = SQLiteStore(tmp_path, read_only=True).check()
    assert len(problems) == 1 and "does not match" in problems[0]
    # The same bytes filed under their own hash: intact, but not a region table.
    fake = hashlib.sha256(garbage).digest()
    db.execute("UPDATE region_tables SET sha256 = ?", (fake,))
    db.execute("UPDATE snapshots SET regions_sha256 = ?", (fake,))
    problems = SQLiteStore(tmp_path, read_only=True).check()
    assert len(problems) == 1 and "does not decode" in problems[0]
    db.execute("UPDATE region_tables SET zlib_data = ?", (b"not zlib",))
    problems = SQLiteStore(tmp_path, read_only=True).check()
    assert len(problems) == 1 and "does not decompress" in problems[0]
    # A snapshot whose region table is gone.
    db.execute("DELETE FROM region_tables")
    problems = SQLiteStore(tmp_path, read_only=True).check()
    assert problems == [f"snapshots row {snapshot_id} refers to a missing region_tables row"]
    with pytest.raises(errors.NotFound):
        SQLiteStore(tmp_path / "elsewhere", read_only=True)


def test_map_count_series_reads_every_process_in_one_go(
    tmp_path: Path, reader: LinuxReader
) -> None:
    store = SQLiteStore(tmp_path)
    host = reader.host()
    store.put_host(host, 1000.0)
    base = reader.process_summary(os.getpid())
    # The same pid, reused by a second process that started later.
    reused = replace(base.process, start_time=base.process.start_time + 500.0)

    def item(process: object, t: float, maps: int) -> ProcessSummary:
        return ProcessSummary(process, replace(base.summary, map_count=maps), t)  # type: ignore[arg-type]

    store.put_summaries(host.host_id, [item(base.process, 1000.0, 100)])
    store.put_summaries(host.host_id, [item(base.process, 1010.0, 110)])
    store.put_summaries(host.host_id, [item(reused, 1020.0, 7)])
    snapshot = reader.snapshot(os.getpid())
    header, regions = wire.snapshot_parts(snapshot)
    stored_header = replace(
        wire.snapshot_header_from_bytes(header),
        capture_time=1005.0,
        summary=replace(snapshot.summary, map_count=105),
    )
    store.put_snapshot(host.host_id, SnapshotRecord(stored_header, regions))

    series = store.map_count_series(1001.0, 2000.0)
    pid, first = base.process.pid, base.process.start_time
    assert series == {
        (host.host_id, pid, first): [(1005.0, 105), (1010.0, 110)],  # 1000.0 is before
        (host.host_id, pid, reused.start_time): [(1020.0, 7)],
    }
    store.close()


def test_a_closed_store_says_so(tmp_path: Path, reader: LinuxReader) -> None:
    store = SQLiteStore(tmp_path)
    host = reader.host()
    store.put_host(host, 1000.0)
    assert [h.host_id for h in store.hosts()] == [host.host_id]  # a reader in the pool
    store.close()
    # Threads that outlive a stopping server get the store's own error, not sqlite's.
    with pytest.raises(errors.FailedPrecondition, match="closed"):
        store.put_host(host, 1001.0)
    with pytest.raises(errors.FailedPrecondition, match="closed"):
        store.hosts()
