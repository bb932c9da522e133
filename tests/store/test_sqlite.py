"""What only the embedded SQLite store does: its own integrity check finds tampered
tables, reads go on while a write waits for the file's lock, and a file of the previous
schema version is upgraded in place with its data."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import sqlite3
import threading
import zlib
from pathlib import Path

import pytest

from tests.store.conftest import make_host, make_item, make_process
from vmatlas import errors, wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.audit import AUDIT_ROW_FIELDS
from vmatlas.fleet import HostStatus
from vmatlas.model import Process
from vmatlas.server.store import ProcessFilter, SnapshotRecord, parse_duration
from vmatlas.server.store.rules import PROCESS_FACT_NAMES, process_from_json, process_json
from vmatlas.server.store.sqlite import DATABASE_NAME, SQLiteStore


def test_parse_duration() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("12h") == 12 * 3600
    assert parse_duration("90m") == 5400
    assert parse_duration("45s") == 45
    assert parse_duration("0") == 0
    with pytest.raises(errors.InvalidArgument):
        parse_duration("12 parsecs")


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
        checker.backend._db.execute("UPDATE hosts SET online = 1")  # type: ignore[attr-defined]
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


def test_reads_go_on_while_a_write_waits(tmp_path: Path, reader: LinuxReader) -> None:
    store = SQLiteStore(tmp_path)
    host = reader.host()
    store.put_host(host, 1000.0)
    other = sqlite3.connect(tmp_path / DATABASE_NAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock: the store's writes wait
    writing = threading.Thread(target=store.put_host, args=(host, 2000.0))
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


def _as_version(path: Path, version: int) -> None:
    """Make the store file at ``path`` what ``version`` wrote: 3 added the process
    facts' columns, 2 the leases."""
    db = sqlite3.connect(path, isolation_level=None)
    if version < 3:
        for name in PROCESS_FACT_NAMES:
            db.execute(f"ALTER TABLE processes DROP COLUMN {name}")
    if version < 2:
        db.execute("DROP TABLE leases")
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    db.close()


@pytest.mark.parametrize("version", [1, 2])
def test_a_file_of_an_earlier_version_is_upgraded_with_its_data(
    tmp_path: Path, version: int
) -> None:
    store = SQLiteStore(tmp_path)
    store.put_host(make_host(), 1000.0)
    odd = make_process(2, pointer_bits=32, address_space_empty=True, container_id="c0", pod_uid="p")
    items = [make_item(make_process(1), 1000.0), make_item(odd, 1000.0)]
    store.put_summaries("host-a", items)
    store.close()
    _as_version(tmp_path / DATABASE_NAME, version)

    store = SQLiteStore(tmp_path)
    assert [p.item.process.pid for p in store.processes(ProcessFilter())] == [1, 2]
    # The facts an audit reads came into their columns from the stored facts.
    names = ("pid", "executable", "pointer_bits", "address_space_empty", "container_id", "pod_uid")
    light = [
        tuple(row[AUDIT_ROW_FIELDS.index(name)] for name in names)
        for row in store.audit_processes()["host-a"]
    ]
    assert light == [
        (1, "/usr/bin/proc1", 64, False, "", ""),
        (2, "/usr/bin/proc2", 32, True, "c0", "p"),
    ]
    assert store.acquire_job("retention", holder="r1", now=1.0, ttl_seconds=1.0) is not None
    assert store.check() == []
    store.close()
    db = sqlite3.connect(tmp_path / DATABASE_NAME, isolation_level=None)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("3",)
    db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(errors.FailedPrecondition, match="schema version 4"):
        SQLiteStore(tmp_path)


@pytest.mark.parametrize(
    "process",
    [
        make_process(7),
        Process(
            pid=9,
            name='é"\\\n\t\x7f',
            executable="/usr/bin/ü",
            command_line=("a b", "\u2603", ""),
            start_time=0.1 + 0.2,
            user_address_max=(1 << 64) - 1,
            address_space_empty=True,
            container_id="c",
            pod_uid="p",
        ),
        Process(pid=True, command_line=["x"], start_time=float("inf")),  # type: ignore[arg-type]
        Process(pid=3, start_time=5, address_space_empty=0),  # type: ignore[arg-type]
    ],
)
def test_process_facts_are_the_json_of_its_fields(process: Process) -> None:
    assert process_json(process) == json.dumps(dataclasses.asdict(process))
    assert process_from_json(process_json(process)) == dataclasses.replace(
        process, command_line=tuple(process.command_line)
    )
