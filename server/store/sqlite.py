"""The embedded store: one SQLite file in the data directory.

Durability: WAL journal with ``synchronous=FULL``. A commit returns only after the WAL
is fsynced, so anything acknowledged survives a server crash *and* a power cut
(``NORMAL`` with WAL survives a process crash but may lose the last commits on power
loss; a snapshot is acknowledged to a client, so FULL is the honest setting).

Threads: writes go through one connection guarded by one lock. Every write is a short
transaction, so serializing them costs little next to the fsync each commit pays
anyway. Reads take a connection of their own from a small pool (read-only ones): with
WAL they proceed while a writer commits, and each sees every commit made before it
began.

Summaries are plain columns (``summaries``; ``current_summaries`` is a view of every
host's latest push) so audits can use SQL. Region tables are the serialized
``RegionTable`` compressed with zlib, keyed by the SHA-256 of the uncompressed bytes:
an unchanged process snapshotted twice costs one row, not two tables.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from operator import attrgetter
from typing import Any

from vmatlas import errors, wire
from vmatlas.fleet import FleetProcess, History, HostStatus, StoredSnapshotInfo
from vmatlas.model import (
    Host,
    OperatingSystem,
    Process,
    ProcessOrder,
    ProcessSummary,
    RegionTable,
    Snapshot,
    SnapshotView,
    Summary,
)
from vmatlas.server.store import ProcessFilter, PushOrigin, SnapshotRecord

log = logging.getLogger(__name__)

DATABASE_NAME = "vmatlas.sqlite3"
# Region tables are already packed columns: level 1 compresses a 65K-region table to
# within 2% of level 6 in a fifth of the time (3 ms against 15), on the fresh path.
ZLIB_LEVEL = 1
SCHEMA_VERSION = 1
# Read connections open at most; more readers at once wait for one to come free.
MAX_READERS = 8

_SUMMARY_COLUMNS = tuple(Summary.__dataclass_fields__)
_SUMMARY_DDL = ",\n  ".join(
    f"{name} {'REAL' if name == 'headroom_fraction' else 'INTEGER'} NOT NULL"
    for name in _SUMMARY_COLUMNS
)
_SUMMARY_SELECT = ", ".join(f"s.{name}" for name in _SUMMARY_COLUMNS)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS hosts (
  host_id TEXT PRIMARY KEY,
  hostname TEXT NOT NULL,
  os INTEGER NOT NULL,
  max_map_count INTEGER NOT NULL,
  facts TEXT NOT NULL,               -- the Host as JSON (addresses are uint64)
  online INTEGER NOT NULL,
  first_seen_time REAL NOT NULL,
  last_seen_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS processes (
  id INTEGER PRIMARY KEY,
  host_id TEXT NOT NULL REFERENCES hosts(host_id),
  pid INTEGER NOT NULL,
  start_time REAL NOT NULL,
  name TEXT NOT NULL,
  facts TEXT NOT NULL,               -- the Process as JSON
  current INTEGER NOT NULL DEFAULT 0,  -- in the host's latest push
  latest_capture_time REAL,
  UNIQUE (host_id, pid, start_time)
);
CREATE INDEX IF NOT EXISTS processes_current ON processes (host_id, current);
CREATE TABLE IF NOT EXISTS summaries (
  process_id INTEGER NOT NULL REFERENCES processes(id),
  capture_time REAL NOT NULL,
  {_SUMMARY_DDL},
  PRIMARY KEY (process_id, capture_time)
);
CREATE INDEX IF NOT EXISTS summaries_time ON summaries (capture_time);
CREATE TABLE IF NOT EXISTS region_tables (
  sha256 BLOB PRIMARY KEY,           -- of the uncompressed serialized RegionTable
  size_bytes INTEGER NOT NULL,
  zlib_data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
  id INTEGER PRIMARY KEY,
  process_id INTEGER NOT NULL REFERENCES processes(id),
  capture_time REAL NOT NULL,
  host_facts TEXT NOT NULL,          -- the Host as it was at capture time
  view INTEGER NOT NULL,
  includes_free INTEGER NOT NULL,
  includes_residency INTEGER NOT NULL,
  {_SUMMARY_DDL},
  regions_sha256 BLOB NOT NULL REFERENCES region_tables(sha256)
);
-- Per host, the agent instance whose pushes are being stored and its last stored
-- push: a replayed push (sequence not above it) is a no-op.
CREATE TABLE IF NOT EXISTS push_sequences (
  host_id TEXT PRIMARY KEY REFERENCES hosts(host_id),
  instance_id TEXT NOT NULL,
  sequence INTEGER NOT NULL,
  instance_dropped_push_count INTEGER NOT NULL,  -- that instance's running total
  dropped_push_count INTEGER NOT NULL            -- over every instance of the host
);
-- Per host, what its agent's latest complete push said besides the summaries.
CREATE TABLE IF NOT EXISTS latest_pushes (
  host_id TEXT PRIMARY KEY REFERENCES hosts(host_id),
  access_denied_count INTEGER NOT NULL  -- processes the agent could not read
);
CREATE INDEX IF NOT EXISTS snapshots_process ON snapshots (process_id, capture_time);
CREATE INDEX IF NOT EXISTS snapshots_time ON snapshots (capture_time);
CREATE VIEW IF NOT EXISTS current_summaries AS
  SELECT p.host_id, p.pid, p.name, p.start_time, s.*
  FROM processes p JOIN summaries s
    ON s.process_id = p.id AND s.capture_time = p.latest_capture_time
  WHERE p.current = 1;
"""

_ORDER_BY = {
    ProcessOrder.REGIONS: "s.map_count DESC, p.host_id, p.pid",
    ProcessOrder.HEADROOM: "s.headroom_fraction ASC, p.host_id, p.pid",
    ProcessOrder.PID: "p.host_id, p.pid",
}


def _host_json(host: Host) -> str:
    return json.dumps({**asdict(host), "os": int(host.os)})


def _host_from_json(text: str) -> Host:
    values = json.loads(text)
    values["os"] = OperatingSystem(values["os"])
    return Host(**values)


_PROCESS_FIELDS = tuple(Process.__dataclass_fields__)
_process_values = attrgetter(*_PROCESS_FIELDS)


def _process_json(process: Process) -> str:
    # What json.dumps(asdict(process)) gives (the fields are flat), without asdict's
    # deep copy: this runs once per stored summary.
    return json.dumps(dict(zip(_PROCESS_FIELDS, _process_values(process), strict=True)))


def _process_from_json(text: str) -> Process:
    values = json.loads(text)
    values["command_line"] = tuple(values["command_line"])
    return Process(**values)


_summary_values: Callable[[Summary], tuple[Any, ...]] = attrgetter(*_SUMMARY_COLUMNS)


def _summary_from(row: sqlite3.Row | tuple[Any, ...], first: int) -> Summary:
    return Summary(*row[first : first + len(_SUMMARY_COLUMNS)])


class SQLiteStore:
    """:class:`~vmatlas.server.store.Store` on one SQLite file under ``data_dir``."""

    def __init__(self, data_dir: str | os.PathLike[str], *, read_only: bool = False):
        """Open (or create) the store. ``read_only`` opens an existing store for
        :meth:`check` without changing it, also beside a running server (WAL lets a
        reader in while the server writes); NotFound when there is none."""
        self.path = os.path.join(os.fspath(data_dir), DATABASE_NAME)
        self._lock = threading.RLock()
        self._readers: list[sqlite3.Connection] = []
        self._idle_readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._readers_lock = threading.Lock()
        self._closed = False
        if read_only:
            if not os.path.exists(self.path):
                raise errors.NotFound(f"no vmatlas store in {os.fspath(data_dir)}")
            self._db = self._connect_reader()
            return
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Layouts defeat ASLR: keep them readable by this user only.
        os.chmod(self.path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=10000")
        with self._tx() as db:
            for statement in SCHEMA.split(";\n"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) != SCHEMA_VERSION:
                raise errors.FailedPrecondition(
                    f"{self.path} has schema version {row[0]}; this vmatlas reads "
                    f"version {SCHEMA_VERSION}"
                )
            # Nobody is connected to a server that just started.
            db.execute("UPDATE hosts SET online = 0")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise errors.FailedPrecondition("the store is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (disk full, an I/O error at fsync) may leave the
                # transaction open: end it, or every later write would fail too.
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        log.exception("rolling back failed")
                raise

    def _connect_reader(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=10000")
        # Opening may replay the WAL a crashed server left (that is recovery, not a
        # change); no statement of ours may write.
        db.execute("PRAGMA query_only=ON")
        return db

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A read connection for this thread's use until the block ends."""
        try:
            db = self._idle_readers.get_nowait()
        except queue.Empty:
            with self._readers_lock:
                if self._closed:
                    raise errors.FailedPrecondition("the store is closed") from None
                fresh = len(self._readers) < MAX_READERS
                if fresh:
                    db = self._connect_reader()
                    self._readers.append(db)
            if not fresh:
                db = self._idle_readers.get()
        if self._closed:  # closed while idle in the pool
            self._idle_readers.put(db)
            raise errors.FailedPrecondition("the store is closed")
        try:
            yield db
        finally:
            self._idle_readers.put(db)

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._reading() as db:
            return db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock, self._readers_lock:
            self._closed = True
            for db in self._readers:
                db.close()
            self._db.close()

    # -- hosts ----------------------------------------------------------------------------

    def put_host(self, host: Host, now: float) -> None:
        with self._tx() as db:
            db.execute(
                """INSERT INTO hosts (host_id, hostname, os, max_map_count, facts, online,
                                      first_seen_time, last_seen_time)
                   VALUES (?, ?, ?, ?, ?, 1, ?, ?)
                   ON CONFLICT (host_id) DO UPDATE SET
                     hostname = excluded.hostname, os = excluded.os,
                     max_map_count = excluded.max_map_count, facts = excluded.facts,
                     online = 1, last_seen_time = excluded.last_seen_time""",
                (
                    host.host_id,
                    host.hostname,
                    int(host.os),
                    host.max_map_count,
                    _host_json(host),
                    now,
                    now,
                ),
            )

    def mark_online(self, host_id: str, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE hosts SET online = 1, last_seen_time = ? WHERE host_id = ?",
                (now, host_id),
            )

    def mark_offline(self, host_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE hosts SET online = 0 WHERE host_id = ?", (host_id,))

    def _host_status(self, row: tuple[Any, ...]) -> HostStatus:
        facts, online, first_seen, last_seen, count, dropped, denied = row
        return HostStatus(
            host=_host_from_json(facts),
            online=bool(online),
            first_seen_time=first_seen,
            last_seen_time=last_seen,
            process_count=count,
            dropped_push_count=dropped or 0,
            access_denied_count=denied or 0,
        )

    _HOST_SELECT = """SELECT h.facts, h.online, h.first_seen_time, h.last_seen_time,
                        (SELECT count(*) FROM processes p
                         WHERE p.host_id = h.host_id AND p.current = 1),
                        q.dropped_push_count, l.access_denied_count
                      FROM hosts h
                        LEFT JOIN push_sequences q ON q.host_id = h.host_id
                        LEFT JOIN latest_pushes l ON l.host_id = h.host_id"""

    def hosts(self) -> list[HostStatus]:
        rows = self._read(self._HOST_SELECT + " ORDER BY h.host_id")
        return [self._host_status(row) for row in rows]

    def host(self, host_id: str) -> HostStatus:
        rows = self._read(self._HOST_SELECT + " WHERE h.host_id = ?", (host_id,))
        if not rows:
            raise errors.NotFound(f"no host {host_id!r}")
        return self._host_status(rows[0])

    def _require_host(self, db: sqlite3.Connection, host_id: str) -> None:
        if db.execute("SELECT 1 FROM hosts WHERE host_id = ?", (host_id,)).fetchone() is None:
            raise errors.NotFound(f"no host {host_id!r}")

    # -- summaries ----------------------------------------------------------------------

    def _process_id(self, db: sqlite3.Connection, host_id: str, process: Process) -> int:
        row = db.execute(
            """INSERT INTO processes (host_id, pid, start_time, name, facts)
               VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (host_id, pid, start_time) DO UPDATE SET
                 name = excluded.name, facts = excluded.facts
               RETURNING id""",
            (host_id, process.pid, process.start_time, process.name, _process_json(process)),
        ).fetchone()
        return int(row[0])

    def _sequence(self, db: sqlite3.Connection, host_id: str, origin: PushOrigin) -> bool:
        """Record ``origin`` as the host's latest push; False when it is not newer
        than the last one stored from the same agent instance (a replay)."""
        row = db.execute(
            """SELECT instance_id, sequence, instance_dropped_push_count, dropped_push_count
               FROM push_sequences WHERE host_id = ?""",
            (host_id,),
        ).fetchone()
        same = row is not None and row[0] == origin.instance_id
        sequence, instance_dropped, total = (row[1], row[2], row[3]) if same else (0, 0, 0)
        if row is not None and not same:
            total = row[3]
        dropped = max(instance_dropped, origin.dropped_push_count)
        db.execute(
            """INSERT INTO push_sequences (host_id, instance_id, sequence,
                                           instance_dropped_push_count, dropped_push_count)
               VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (host_id) DO UPDATE SET
                 instance_id = excluded.instance_id, sequence = excluded.sequence,
                 instance_dropped_push_count = excluded.instance_dropped_push_count,
                 dropped_push_count = excluded.dropped_push_count""",
            (
                host_id,
                origin.instance_id,
                max(sequence, origin.sequence),
                dropped,
                total + dropped - instance_dropped,
            ),
        )
        return origin.sequence > sequence

    def put_summaries(
        self,
        host_id: str,
        items: list[ProcessSummary],
        *,
        complete: bool = True,
        origin: PushOrigin | None = None,
        access_denied_count: int = 0,
    ) -> bool:
        processes = [
            (
                host_id,
                item.process.pid,
                item.process.start_time,
                item.process.name,
                _process_json(item.process),
                item.capture_time,
            )
            for item in items
        ]
        summaries = [
            (item.capture_time, *_summary_values(item.summary), host_id, p[1], p[2])
            for item, p in zip(items, processes, strict=True)
        ]
        with self._tx() as db:
            self._require_host(db, host_id)
            if origin is not None and origin.sequence and not self._sequence(db, host_id, origin):
                return False
            if complete:
                # Only the processes that left stop being current: clearing every row
                # and setting most of them again costs more than it looks (the rows
                # and the index on current change twice per push).
                pushed = {(p[1], p[2]) for p in processes}
                gone = [
                    (process_id,)
                    for process_id, pid, start_time in db.execute(
                        "SELECT id, pid, start_time FROM processes"
                        " WHERE host_id = ? AND current = 1",
                        (host_id,),
                    )
                    if (pid, start_time) not in pushed
                ]
                db.executemany("UPDATE processes SET current = 0 WHERE id = ?", gone)
                db.execute(
                    """INSERT INTO latest_pushes (host_id, access_denied_count) VALUES (?, ?)
                       ON CONFLICT (host_id) DO UPDATE SET
                         access_denied_count = excluded.access_denied_count""",
                    (host_id, access_denied_count),
                )
            db.executemany(self._UPSERT_CURRENT_PROCESS, processes)
            db.executemany(self._INSERT_SUMMARY, summaries)
        return True

    # One statement per table for a whole push: the process row (current, latest
    # capture time) first, then the summary keyed by the row's id.
    _UPSERT_CURRENT_PROCESS = """
        INSERT INTO processes (host_id, pid, start_time, name, facts, current,
                               latest_capture_time)
        VALUES (?, ?, ?, ?, ?, 1, ?)
        ON CONFLICT (host_id, pid, start_time) DO UPDATE SET
          name = excluded.name, facts = excluded.facts, current = 1,
          latest_capture_time = max(coalesce(latest_capture_time,
                                             excluded.latest_capture_time),
                                    excluded.latest_capture_time)"""

    _INSERT_SUMMARY = f"""
        INSERT OR REPLACE INTO summaries (process_id, capture_time, {", ".join(_SUMMARY_COLUMNS)})
        SELECT id, ?{", ?" * len(_SUMMARY_COLUMNS)} FROM processes
        WHERE host_id = ? AND pid = ? AND start_time = ?"""

    _CURRENT = f"""SELECT p.host_id, p.facts, s.capture_time, {_SUMMARY_SELECT}
                   FROM processes p JOIN summaries s
                     ON s.process_id = p.id AND s.capture_time = p.latest_capture_time
                   WHERE p.current = 1"""

    @staticmethod
    def _fleet_process(row: tuple[Any, ...]) -> FleetProcess:
        return FleetProcess(
            host_id=row[0],
            item=ProcessSummary(
                process=_process_from_json(row[1]),
                summary=_summary_from(row, 3),
                capture_time=row[2],
            ),
        )

    def processes(self, where: ProcessFilter) -> list[FleetProcess]:
        if where.order not in _ORDER_BY:
            raise errors.InvalidArgument(f"unknown process order {where.order!r}")
        sql = self._CURRENT
        params: list[Any] = []
        if where.host_id:
            self.host(where.host_id)  # NotFound for an unknown host
            sql += " AND p.host_id = ?"
            params.append(where.host_id)
        if where.name_contains:
            sql += " AND instr(p.name, ?) > 0"
            params.append(where.name_contains)
        sql += f" ORDER BY {_ORDER_BY[where.order]}"
        if where.limit:
            sql += " LIMIT ?"
            params.append(where.limit)
        return [self._fleet_process(row) for row in self._read(sql, tuple(params))]

    def latest_summaries_all_hosts(self) -> list[FleetProcess]:
        sql = self._CURRENT + " ORDER BY p.host_id, p.pid"
        return [self._fleet_process(row) for row in self._read(sql)]

    # -- snapshots ----------------------------------------------------------------------

    def put_snapshot(self, host_id: str, record: SnapshotRecord) -> str:
        header = record.header
        digest = hashlib.sha256(record.regions).digest()
        known = self._read("SELECT 1 FROM region_tables WHERE sha256 = ?", (digest,))
        # Compress outside the transaction: it is the slow part.
        packed = None if known else zlib.compress(record.regions, ZLIB_LEVEL)
        with self._tx() as db:
            self._require_host(db, host_id)
            # Whether the table is there decides here, in the transaction that refers
            # to it: a prune since the look above may have deleted it (rare, so
            # compressing under the lock then costs little).
            present = db.execute("SELECT 1 FROM region_tables WHERE sha256 = ?", (digest,))
            if packed is None and present.fetchone() is None:
                packed = zlib.compress(record.regions, ZLIB_LEVEL)
            if packed is not None:
                db.execute(
                    """INSERT OR IGNORE INTO region_tables (sha256, size_bytes, zlib_data)
                       VALUES (?, ?, ?)""",
                    (digest, len(record.regions), packed),
                )
            process_id = self._process_id(db, host_id, header.process)
            columns = ", ".join(_SUMMARY_COLUMNS)
            placeholders = ", ".join("?" * (7 + len(_SUMMARY_COLUMNS)))
            cursor = db.execute(
                f"""INSERT INTO snapshots (process_id, capture_time, host_facts, view,
                        includes_free, includes_residency, regions_sha256, {columns})
                    VALUES ({placeholders})""",
                (
                    process_id,
                    header.capture_time,
                    _host_json(header.host),
                    int(header.view),
                    int(header.includes_free),
                    int(header.includes_residency),
                    digest,
                    *_summary_values(header.summary),
                ),
            )
            return str(cursor.lastrowid)

    _SNAPSHOT_SELECT = f"""SELECT p.host_id, p.facts, s.capture_time, s.host_facts, s.view,
                             s.includes_free, s.includes_residency, r.zlib_data, s.id,
                             {_SUMMARY_SELECT}
                           FROM snapshots s
                           JOIN processes p ON p.id = s.process_id
                           JOIN region_tables r ON r.sha256 = s.regions_sha256"""

    @staticmethod
    def _record(row: tuple[Any, ...]) -> SnapshotRecord:
        header = Snapshot(
            host=_host_from_json(row[3]),
            process=_process_from_json(row[1]),
            capture_time=row[2],
            summary=_summary_from(row, 9),
            regions=RegionTable(),
            view=SnapshotView(row[4]),
            includes_free=bool(row[5]),
            includes_residency=bool(row[6]),
        )
        return SnapshotRecord(header=header, regions=zlib.decompress(row[7]))

    def get_snapshot(self, snapshot_id: str) -> tuple[str, SnapshotRecord]:
        try:
            key = int(snapshot_id)
        except ValueError:
            raise errors.NotFound(f"no snapshot {snapshot_id!r}") from None
        rows = self._read(self._SNAPSHOT_SELECT + " WHERE s.id = ?", (key,))
        if not rows:
            raise errors.NotFound(f"no snapshot {snapshot_id!r}")
        return rows[0][0], self._record(rows[0])

    def latest_snapshot(self, host_id: str, pid: int) -> tuple[str, SnapshotRecord]:
        rows = self._read(
            self._SNAPSHOT_SELECT
            + " WHERE p.host_id = ? AND p.pid = ? ORDER BY s.capture_time DESC, s.id DESC"
            + " LIMIT 1",
            (host_id, pid),
        )
        if not rows:
            raise errors.NotFound(f"no stored snapshot of pid {pid} on {host_id!r}", pid=pid)
        return str(rows[0][8]), self._record(rows[0])

    def history(self, host_id: str, pid: int, since: float, until: float) -> History:
        self.host(host_id)
        summary_rows = self._read(
            f"""SELECT p.facts, s.capture_time, {_SUMMARY_SELECT}
                FROM summaries s JOIN processes p ON p.id = s.process_id
                WHERE p.host_id = ? AND p.pid = ? AND s.capture_time BETWEEN ? AND ?
                ORDER BY s.capture_time""",
            (host_id, pid, since, until),
        )
        snapshot_rows = self._read(
            f"""SELECT s.id, p.facts, s.capture_time, {_SUMMARY_SELECT}
                FROM snapshots s JOIN processes p ON p.id = s.process_id
                WHERE p.host_id = ? AND p.pid = ? AND s.capture_time BETWEEN ? AND ?
                ORDER BY s.capture_time, s.id""",
            (host_id, pid, since, until),
        )
        return History(
            summaries=[
                ProcessSummary(_process_from_json(r[0]), _summary_from(r, 2), r[1])
                for r in summary_rows
            ],
            snapshots=[
                StoredSnapshotInfo(
                    snapshot_id=str(r[0]),
                    host_id=host_id,
                    process=_process_from_json(r[1]),
                    capture_time=r[2],
                    summary=_summary_from(r, 3),
                )
                for r in snapshot_rows
            ],
        )

    def map_count_series(
        self, since: float, until: float
    ) -> dict[tuple[str, int, float], list[tuple[float, int]]]:
        rows = self._read(
            """SELECT p.host_id, p.pid, p.start_time, s.capture_time, s.map_count
                 FROM summaries s JOIN processes p ON p.id = s.process_id
                WHERE s.capture_time BETWEEN ? AND ?
               UNION ALL
               SELECT p.host_id, p.pid, p.start_time, s.capture_time, s.map_count
                 FROM snapshots s JOIN processes p ON p.id = s.process_id
                WHERE s.capture_time BETWEEN ? AND ?
               ORDER BY 4""",
            (since, until, since, until),
        )
        series: dict[tuple[str, int, float], list[tuple[float, int]]] = {}
        for host_id, pid, start_time, capture_time, map_count in rows:
            series.setdefault((host_id, pid, start_time), []).append((capture_time, map_count))
        return series

    # -- retention ----------------------------------------------------------------------

    def prune(self, older_than: float) -> int:
        with self._tx() as db:
            summaries = db.execute(
                "DELETE FROM summaries WHERE capture_time < ?", (older_than,)
            ).rowcount
            snapshots = db.execute(
                "DELETE FROM snapshots WHERE capture_time < ?", (older_than,)
            ).rowcount
            db.execute(
                """DELETE FROM region_tables WHERE sha256 NOT IN
                   (SELECT regions_sha256 FROM snapshots)"""
            )
            # A process with no history left and no place in a current push is gone.
            db.execute(
                """DELETE FROM processes WHERE current = 0
                   AND id NOT IN (SELECT process_id FROM summaries)
                   AND id NOT IN (SELECT process_id FROM snapshots)"""
            )
            db.execute(
                """UPDATE processes SET current = 0 WHERE current = 1 AND NOT EXISTS
                   (SELECT 1 FROM summaries s WHERE s.process_id = processes.id
                    AND s.capture_time = processes.latest_capture_time)"""
            )
            return summaries + snapshots

    # -- integrity ----------------------------------------------------------------------

    def check(self) -> list[str]:
        problems: list[str] = []
        with self._reading() as db:
            rows = db.execute("PRAGMA integrity_check").fetchall()
            if [tuple(r) for r in rows] != [("ok",)]:
                problems += [f"integrity: {r[0]}" for r in rows]
            for table, rowid, parent, _ in db.execute("PRAGMA foreign_key_check"):
                problems.append(f"{table} row {rowid} refers to a missing {parent} row")
            version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if version is None:
            problems.append("no schema version")
        # One table at a time: a store may hold thousands of them.
        for (digest,) in self._read("SELECT sha256 FROM region_tables ORDER BY sha256"):
            problems += self._check_region_table(digest)
        return problems

    def _check_region_table(self, digest: bytes) -> list[str]:
        rows = self._read(
            "SELECT size_bytes, zlib_data FROM region_tables WHERE sha256 = ?", (digest,)
        )
        if not rows:  # pruned meanwhile
            return []
        size_bytes, packed = rows[0]
        name = f"region table {digest.hex()[:16]}"
        try:
            data = zlib.decompress(packed)
        except zlib.error as exc:
            return [f"{name} does not decompress: {exc}"]
        if len(data) != size_bytes or hashlib.sha256(data).digest() != digest:
            return [f"{name} does not match its size or hash"]
        try:
            wire.table_from_bytes(data)
        except Exception as exc:  # any decoding failure is the finding
            return [f"{name} does not decode: {type(exc).__name__}: {exc}"]
        return []
