"""The embedded store: one SQLite file in the data directory (``sqlite:///PATH``).

SQL and connection handling only; the rules live in :mod:`.rules`.

Durability: WAL journal with ``synchronous=FULL``. A commit returns only after the WAL
is fsynced, so anything acknowledged survives a server crash *and* a power cut
(``NORMAL`` with WAL survives a process crash but may lose the last commits on power
loss; a snapshot is acknowledged to a client, so FULL is the honest setting).

Threads: writes go through one connection guarded by one lock. Every write is a short
transaction, so serializing them costs little next to the fsync each commit pays
anyway. Reads take a connection of their own from a small pool (read-only ones): with
WAL they proceed while a writer commits, and each sees every commit made before it
began.

Summaries are plain columns (``summaries``; a process row points at its latest one) so
audits can use SQL. Region tables are the serialized ``RegionTable`` compressed with
zlib, keyed by the SHA-256 of the uncompressed bytes: an unchanged process snapshotted
twice costs one row, not two tables. Retention deletes rows (exact to the second).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from vmatlas import errors
from vmatlas.model import Host, Process
from vmatlas.server.store.base import ProcessFilter
from vmatlas.server.store.rules import (
    PROCESS_FACT_COLUMNS,
    PROCESS_FACT_NAMES,
    SUMMARY_COLUMNS,
    Dialect,
    LeaseRow,
    PushSequence,
    RuleStore,
    SnapshotRow,
    Statements,
    SummaryRow,
    leases_from,
    push_sequence_from,
    push_sequence_params,
)

log = logging.getLogger(__name__)

DATABASE_NAME = "vmatlas.sqlite3"
# 2 added the leases table; 3 the process facts an audit reads as columns of the process
# row (see UPGRADES).
SCHEMA_VERSION = 3
# Read connections open at most; more readers at once wait for one to come free.
MAX_READERS = 8

_SUMMARY_DDL = ",\n  ".join(
    f"{name} {'REAL' if name == 'headroom_fraction' else 'INTEGER'} NOT NULL"
    for name in SUMMARY_COLUMNS
)


def _literal(value: object) -> str:
    return (
        str(int(value))
        if isinstance(value, bool | int)
        else "'" + str(value).replace("'", "''") + "'"
    )


def _default(name: str) -> str:
    """The model's default of a process fact, for facts stored before it existed."""
    return _literal(Process.__dataclass_fields__[name].default)


_FACT_TYPES = {"text": "TEXT", "integer": "INTEGER", "boolean": "INTEGER"}
_FACT_COLUMNS = [
    f"{name} {_FACT_TYPES[kind]} NOT NULL DEFAULT {_default(name)}"
    for name, kind in PROCESS_FACT_COLUMNS
]
_FACT_DDL = ",\n  ".join(_FACT_COLUMNS)

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
  {_FACT_DDL},
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
-- Host ownership ('host', host id) and singleton jobs ('job', job name).
CREATE TABLE IF NOT EXISTS leases (
  kind TEXT NOT NULL,
  name TEXT NOT NULL,
  holder TEXT NOT NULL,
  address TEXT NOT NULL,
  instance_id TEXT NOT NULL,
  epoch INTEGER NOT NULL,
  expires_time REAL NOT NULL,
  PRIMARY KEY (kind, name)
);
"""


_SQL = Statements(
    Dialect(
        param="?",
        named=":{}",
        json_text="",
        true="1",
        contains="instr({}, {}) > 0",
        current_from="""FROM processes p JOIN summaries s
                          ON s.process_id = p.id AND s.capture_time = p.latest_capture_time""",
        latest="s",
        latest_time="s.capture_time",
    )
)

# What brings a file from the version before each to it, run before SCHEMA (which
# makes the tables a version adds).
UPGRADES: dict[int, list[str]] = {
    3: [
        *(f"ALTER TABLE processes ADD COLUMN {column}" for column in _FACT_COLUMNS),
        "UPDATE processes SET "
        + ", ".join(
            f"{name} = coalesce(json_extract(facts, '$.{name}'), {_default(name)})"
            for name in PROCESS_FACT_NAMES
        ),
    ],
}


def _translated(exc: sqlite3.Error) -> Exception:
    """SQLite's errors as the store's: a lock held past the busy timeout is transient."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return errors.StoreUnavailable(f"the SQLite store is busy: {text}")
    return exc


_FACT_NAMES = ", ".join(PROCESS_FACT_NAMES)
_FACT_PARAMS = ", ".join("?" * len(PROCESS_FACT_NAMES))
_SET_FACTS = ", ".join(f"{c} = excluded.{c}" for c in ("name", "facts", *PROCESS_FACT_NAMES))


class _Transaction:
    """:class:`~.rules.Transaction` on the one write connection."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def host_exists(self, host_id: str) -> bool:
        row = self.db.execute("SELECT 1 FROM hosts WHERE host_id = ?", (host_id,)).fetchone()
        return row is not None

    def upsert_host(self, host: Host, facts: str, now: float) -> None:
        self.db.execute(
            """INSERT INTO hosts (host_id, hostname, os, max_map_count, facts, online,
                                  first_seen_time, last_seen_time)
               VALUES (?, ?, ?, ?, ?, 1, ?, ?)
               ON CONFLICT (host_id) DO UPDATE SET
                 hostname = excluded.hostname, os = excluded.os,
                 max_map_count = excluded.max_map_count, facts = excluded.facts,
                 online = 1, last_seen_time = excluded.last_seen_time""",
            (host.host_id, host.hostname, int(host.os), host.max_map_count, facts, now, now),
        )

    def set_online(self, host_ids: Sequence[str], now: float) -> None:
        self.db.execute(
            "UPDATE hosts SET online = 1, last_seen_time = ?"
            " WHERE host_id IN (SELECT value FROM json_each(?))",
            (now, json.dumps(list(host_ids))),
        )

    def set_offline(self, host_id: str) -> None:
        self.db.execute("UPDATE hosts SET online = 0 WHERE host_id = ?", (host_id,))

    def set_offline_if_unseen(self, host_id: str, seen_before: float) -> bool:
        cursor = self.db.execute(
            "UPDATE hosts SET online = 0 WHERE host_id = ? AND online AND last_seen_time < ?",
            (host_id, seen_before),
        )
        return cursor.rowcount > 0

    def push_sequence(self, host_id: str) -> PushSequence | None:
        return push_sequence_from(self.db.execute(_SQL.push_sequence, (host_id,)).fetchone())

    def set_push_sequence(self, host_id: str, state: PushSequence) -> None:
        self.db.execute(_SQL.set_push_sequence, push_sequence_params(host_id, state))

    def current_processes(self, host_id: str) -> list[tuple[int, int, float]]:
        return self.db.execute(
            "SELECT id, pid, start_time FROM processes WHERE host_id = ? AND current = 1",
            (host_id,),
        ).fetchall()

    def retire_processes(self, process_ids: list[int]) -> None:
        self.db.executemany(
            "UPDATE processes SET current = 0 WHERE id = ?", [(i,) for i in process_ids]
        )

    def set_access_denied_count(self, host_id: str, count: int) -> None:
        self.db.execute(
            """INSERT INTO latest_pushes (host_id, access_denied_count) VALUES (?, ?)
               ON CONFLICT (host_id) DO UPDATE SET
                 access_denied_count = excluded.access_denied_count""",
            (host_id, count),
        )

    # One statement per table for a whole push: the process row (current, latest
    # capture time) first, then the summary keyed by the row's id.
    _UPSERT_CURRENT_PROCESS = f"""
        INSERT INTO processes (host_id, pid, start_time, name, facts, {_FACT_NAMES}, current,
                               latest_capture_time)
        VALUES (?, ?, ?, ?, ?, {_FACT_PARAMS}, 1, ?)
        ON CONFLICT (host_id, pid, start_time) DO UPDATE SET
          {_SET_FACTS}, current = 1,
          latest_capture_time = max(coalesce(latest_capture_time,
                                             excluded.latest_capture_time),
                                    excluded.latest_capture_time)"""

    _INSERT_SUMMARY = f"""
        INSERT OR REPLACE INTO summaries (process_id, capture_time, {", ".join(SUMMARY_COLUMNS)})
        SELECT id, ?{", ?" * len(SUMMARY_COLUMNS)} FROM processes
        WHERE host_id = ? AND pid = ? AND start_time = ?"""

    def add_summaries(self, host_id: str, rows: list[SummaryRow]) -> None:
        self.db.executemany(
            self._UPSERT_CURRENT_PROCESS,
            [
                (host_id, r.pid, r.start_time, r.name, r.facts, *r.fact_values, r.capture_time)
                for r in rows
            ],
        )
        self.db.executemany(
            self._INSERT_SUMMARY,
            [(r.capture_time, *r.values, host_id, r.pid, r.start_time) for r in rows],
        )

    def lock_region_tables(self) -> None:
        pass  # every write transaction already excludes every other (BEGIN IMMEDIATE)

    def region_table_present(self, digest: bytes) -> bool:
        row = self.db.execute("SELECT 1 FROM region_tables WHERE sha256 = ?", (digest,))
        return row.fetchone() is not None

    def add_region_table(self, digest: bytes, size_bytes: int, packed: bytes) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO region_tables (sha256, size_bytes, zlib_data) VALUES (?, ?, ?)",
            (digest, size_bytes, packed),
        )

    def add_snapshot(self, host_id: str, row: SnapshotRow) -> int:
        (process_id,) = self.db.execute(
            f"""INSERT INTO processes (host_id, pid, start_time, name, facts, {_FACT_NAMES})
                VALUES (?, ?, ?, ?, ?, {_FACT_PARAMS})
                ON CONFLICT (host_id, pid, start_time) DO UPDATE SET {_SET_FACTS}
                RETURNING id""",
            (host_id, row.pid, row.start_time, row.name, row.facts, *row.fact_values),
        ).fetchone()
        columns = ", ".join(SUMMARY_COLUMNS)
        placeholders = ", ".join("?" * (7 + len(SUMMARY_COLUMNS)))
        cursor = self.db.execute(
            f"""INSERT INTO snapshots (process_id, capture_time, host_facts, view,
                    includes_free, includes_residency, regions_sha256, {columns})
                VALUES ({placeholders})""",
            (
                process_id,
                row.capture_time,
                row.host_facts,
                row.view,
                int(row.includes_free),
                int(row.includes_residency),
                row.regions_sha256,
                *row.values,
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def lease(self, kind: str, name: str) -> LeaseRow | None:
        row = self.db.execute(
            """SELECT holder, address, instance_id, epoch, expires_time FROM leases
               WHERE kind = ? AND name = ?""",
            (kind, name),
        ).fetchone()
        return None if row is None else LeaseRow(*row)

    def set_lease(self, kind: str, name: str, row: LeaseRow) -> None:
        self.db.execute(
            """INSERT OR REPLACE INTO leases (kind, name, holder, address, instance_id, epoch,
                                              expires_time)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            (kind, name, row.holder, row.address, row.instance_id, row.epoch, row.expires_time),
        )

    def leases(self, kind: str, names: Sequence[str]) -> dict[str, LeaseRow]:
        # Every write transaction already excludes every other (BEGIN IMMEDIATE).
        rows = self.db.execute(
            """SELECT name, holder, address, instance_id, epoch, expires_time FROM leases
               WHERE kind = ? AND name IN (SELECT value FROM json_each(?))""",
            (kind, json.dumps(list(names))),
        ).fetchall()
        return dict(leases_from(rows))

    def extend_leases(self, kind: str, names: Sequence[str], expires_time: float) -> None:
        self.db.execute(
            """UPDATE leases SET expires_time = ?
               WHERE kind = ? AND name IN (SELECT value FROM json_each(?))""",
            (expires_time, kind, json.dumps(list(names))),
        )


class SQLiteBackend:
    """:class:`~.rules.Backend` on one SQLite file."""

    prune_granularity_seconds = 0.0
    sql = _SQL

    def __init__(self, path: str, *, read_only: bool = False):
        self.path = path
        self._lock = threading.RLock()
        self._readers: list[sqlite3.Connection] = []
        self._idle_readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._readers_lock = threading.Lock()
        self._closed = False
        if read_only:
            if not os.path.exists(path):
                raise errors.NotFound(f"no vmatlas store at {path}")
            self._db = self._connect_reader()
            return
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Layouts defeat ASLR: keep them readable by this user only.
        os.chmod(path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=10000")
        with self._writing() as db:
            version = self._schema_version(db)
            if version is not None and version > SCHEMA_VERSION:
                raise errors.FailedPrecondition(
                    f"{path} has schema version {version}; this vmatlas reads "
                    f"version {SCHEMA_VERSION} and earlier"
                )
            for target in range((version or SCHEMA_VERSION) + 1, SCHEMA_VERSION + 1):
                for statement in UPGRADES.get(target, ()):
                    db.execute(statement)
                log.info("upgraded %s to schema version %d", path, target)
            for statement in SCHEMA.split(";\n"):
                if statement.strip():
                    db.execute(statement)
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            # The embedded store serves one server: nobody is connected to a server
            # that just started.
            db.execute("UPDATE hosts SET online = 0")

    @staticmethod
    def _schema_version(db: sqlite3.Connection) -> int | None:
        exists = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
        if exists is None:
            return None
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return None if row is None else int(row[0])

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise errors.StoreClosed("the store is closed")
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _translated(exc) from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                # A failed COMMIT (disk full, an I/O error at fsync) may leave the
                # transaction open: end it, or every later write would fail too.
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        log.exception("rolling back failed")
                if isinstance(exc, sqlite3.Error):
                    raise _translated(exc) from exc
                raise

    @contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        with self._writing() as db:
            yield _Transaction(db)

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
                    raise errors.StoreClosed("the store is closed") from None
                fresh = len(self._readers) < MAX_READERS
                if fresh:
                    db = self._connect_reader()
                    self._readers.append(db)
            if not fresh:
                db = self._idle_readers.get()
        if self._closed:  # closed while idle in the pool
            self._idle_readers.put(db)
            raise errors.StoreClosed("the store is closed")
        try:
            yield db
        except sqlite3.Error as exc:
            raise _translated(exc) from exc
        finally:
            self._idle_readers.put(db)

    def read(self, query: str, params: Any = ()) -> list[Any]:
        with self._reading() as db:
            return db.execute(query, params).fetchall()

    def prepare_summaries(self, capture_times: set[float]) -> None:
        pass  # one table holds every time

    def close(self) -> None:
        with self._lock, self._readers_lock:
            self._closed = True
            for db in self._readers:
                db.close()
            self._db.close()

    # -- reads ----------------------------------------------------------------------------

    _HOST_SELECT = f"""SELECT h.facts, h.online, h.first_seen_time, h.last_seen_time,
                        (SELECT count(*) FROM processes p
                         WHERE p.host_id = h.host_id AND p.current = 1),
                        q.dropped_push_count, l.access_denied_count, {_SQL.host_lease_columns}
                      FROM hosts h
                        LEFT JOIN push_sequences q ON q.host_id = h.host_id
                        LEFT JOIN latest_pushes l ON l.host_id = h.host_id
                        {_SQL.host_lease_join}"""

    def host_rows(self, host_id: str | None) -> list[tuple[Any, ...]]:
        if host_id is None:
            return self.read(self._HOST_SELECT + " ORDER BY h.host_id")
        return self.read(self._HOST_SELECT + " WHERE h.host_id = ?", (host_id,))

    def current_rows(self, where: ProcessFilter, *, light: bool = False) -> list[tuple[Any, ...]]:
        return self.read(*_SQL.current(where, light=light))

    def region_table_present(self, digest: bytes) -> bool:
        return bool(self.read("SELECT 1 FROM region_tables WHERE sha256 = ?", (digest,)))

    def region_table_digests(self) -> list[bytes]:
        return [row[0] for row in self.read("SELECT sha256 FROM region_tables ORDER BY sha256")]

    def region_table(self, digest: bytes) -> tuple[int, bytes] | None:
        rows = self.read(
            "SELECT size_bytes, zlib_data FROM region_tables WHERE sha256 = ?", (digest,)
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def database_problems(self) -> list[str]:
        problems: list[str] = []
        with self._reading() as db:
            rows = db.execute("PRAGMA integrity_check").fetchall()
            if [tuple(r) for r in rows] != [("ok",)]:
                problems += [f"integrity: {r[0]}" for r in rows]
            for table, rowid, parent, _ in db.execute("PRAGMA foreign_key_check"):
                problems.append(f"{table} row {rowid} refers to a missing {parent} row")
            version = self._schema_version(db)
        if version is None:
            problems.append("no schema version")
        return problems

    # -- retention ----------------------------------------------------------------------

    def prune(self, older_than: float) -> int:
        with self._writing() as db:
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
            return int(summaries + snapshots)


class SQLiteStore(RuleStore):
    """The store in ``DATABASE_NAME`` under ``data_dir``."""

    def __init__(self, data_dir: str | os.PathLike[str], *, read_only: bool = False):
        """Open (or create) the store. ``read_only`` opens an existing store for
        :meth:`check` without changing it, also beside a running server (WAL lets a
        reader in while the server writes); NotFound when there is none."""
        self.path = os.path.join(os.fspath(data_dir), DATABASE_NAME)
        super().__init__(SQLiteBackend(self.path, read_only=read_only))

    @classmethod
    def file(cls, path: str, *, read_only: bool = False) -> SQLiteStore:
        """The store in the file ``path`` (what ``sqlite:///PATH`` names)."""
        store = cls.__new__(cls)
        store.path = path
        RuleStore.__init__(store, SQLiteBackend(path, read_only=read_only))
        return store
