"""The SQLite store on its own: retention prunes exactly what is older than the cutoff."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from vmatlas import errors, wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.model import ProcessSummary
from vmatlas.server.sqlite_store import DATABASE_NAME, SQLiteStore
from vmatlas.server.store import SnapshotRecord, parse_duration


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
