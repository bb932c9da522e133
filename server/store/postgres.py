"""The PostgreSQL store (``postgresql://...``), for one server or several replicas
sharing one database.

SQL and connection handling only; the rules live in :mod:`.rules`, the schema in
:mod:`.migrations`.

* Connections come from a psycopg pool; each call takes one for one transaction.
  A connection lost, a pool exhausted, a lock or statement timeout, a serialization
  failure or deadlock is :class:`~vmatlas.errors.StoreUnavailable` (retry later).
* At start the schema is migrated under a transaction-scoped advisory lock: of several
  servers starting at once on an empty database one migrates, the others wait for its
  commit and then find nothing to do.
* Summaries go in with ``COPY`` into a per-connection staging table, then two
  set-based statements (process rows with their latest summary; history rows), in the
  push's one transaction: a push is acknowledged only after that commit.
* Summaries are partitioned by capture time, one partition a day, made as pushes need
  them (and the next day's with each one). Retention drops whole partitions, so it
  works in steps of a day (``prune_granularity_seconds``); snapshots, far fewer, are
  deleted by row.
* Writes to one host are serialized on its row; a snapshot and the pruning of
  unreferenced region tables exclude each other with an advisory lock.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import sql

from vmatlas import errors
from vmatlas.model import Host
from vmatlas.server.store.base import ProcessFilter
from vmatlas.server.store.migrations import LATEST_VERSION, MIGRATIONS
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

PARTITION_SECONDS = 86400
# Advisory lock keys (one 64-bit space per database): vmatlas's, by purpose.
_MIGRATION_LOCK = 0x766D61746C617301
_REGION_LOCK = 0x766D61746C617302
_PARTITION_LOCK = 0x766D61746C617303
POOL_MAX = 16
POOL_TIMEOUT_SECONDS = 10.0

_COLUMNS = ", ".join(SUMMARY_COLUMNS)
_FACT_COLUMNS = ", ".join(PROCESS_FACT_NAMES)
_STAGING_COLUMNS = (
    "pid",
    "start_time",
    "name",
    "facts",
    *PROCESS_FACT_NAMES,
    "capture_time",
    *SUMMARY_COLUMNS,
)
_STAGING_TYPES = ", ".join(
    [f"{name} {kind}" for name, kind in PROCESS_FACT_COLUMNS]
    + [
        f"{c} {'double precision' if c == 'headroom_fraction' else 'bigint'}"
        for c in SUMMARY_COLUMNS
    ]
)
# Each connection's own staging table for COPY; emptied by every commit.
_STAGING_DDL = f"""
CREATE TEMP TABLE IF NOT EXISTS push_staging (
  pid bigint, start_time double precision, name text, facts jsonb,
  capture_time double precision, {_STAGING_TYPES}
) ON COMMIT DELETE ROWS"""

# A process row holds its latest summary.
_SQL = Statements(
    Dialect(
        param="%s",
        named="%({})s",
        json_text="::text",
        true="true",
        contains="strpos({}, {}) > 0",
        current_from="FROM processes p",
        latest="p",
        latest_time="p.latest_capture_time",
    )
)

_TRANSIENT = (
    psycopg.OperationalError,  # connection lost, server shutting down, pool timeout
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.LockNotAvailable,
    pg_errors.QueryCanceled,
)


def _partition_name(day: int) -> str:
    return f"summaries_d{day}" if day >= 0 else f"summaries_dm{-day}"


def _day_of(name: str) -> int | None:
    tail = name.removeprefix("summaries_d")
    if tail == name:
        return None
    try:
        return -int(tail[1:]) if tail.startswith("m") else int(tail)
    except ValueError:
        return None


def applied_versions(conn: psycopg.Connection[Any]) -> list[int]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return []
    return [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]


def migrate(conn: psycopg.Connection[Any], target: int = LATEST_VERSION) -> list[int]:
    """Bring the database to schema version ``target`` in one transaction under the
    migration lock; return the versions this call applied (empty when another server
    did it first). FailedPrecondition when the database is newer than this vmatlas."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                 version integer PRIMARY KEY,
                 description text NOT NULL,
                 applied_by text NOT NULL,
                 applied_time timestamptz NOT NULL DEFAULT now())"""
        )
        versions = applied_versions(conn)
        current = versions[-1] if versions else 0
        if current > LATEST_VERSION:
            raise errors.FailedPrecondition(
                f"the database has schema version {current}; this vmatlas knows "
                f"version {LATEST_VERSION} and earlier: upgrade it"
            )
        applied = []
        for migration in MIGRATIONS:
            if current < migration.version <= target:
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, description, applied_by)"
                    " VALUES (%s, %s, %s)",
                    (
                        migration.version,
                        migration.description,
                        f"{socket.gethostname()}:{os.getpid()}",
                    ),
                )
                applied.append(migration.version)
    for version in applied:
        log.info("migrated the store to schema version %d", version)
    return applied


@contextmanager
def _translating() -> Iterator[None]:
    try:
        yield
    except psycopg_pool.PoolClosed as exc:
        raise errors.StoreClosed("the store is closed") from exc
    except _TRANSIENT as exc:
        raise errors.StoreUnavailable(
            f"PostgreSQL is unavailable: {type(exc).__name__}: {exc}".strip()
        ) from exc
    except pg_errors.CheckViolation as exc:
        if "no partition" not in str(exc):
            raise
        # Another server dropped a partition this one thought was there.
        raise errors.StoreUnavailable(f"a summary partition is missing: {exc}") from exc


# The process row takes the pushed summary as its latest unless it holds a later one
# already (a replayed older push); then the summary joins history.
_NEWER = "processes.latest_capture_time > excluded.latest_capture_time"
_LATEST = ", ".join(
    f"{c} = CASE WHEN {_NEWER} THEN processes.{c} ELSE excluded.{c} END"
    for c in ("latest_capture_time", *SUMMARY_COLUMNS)
)
_SET_FACTS = ", ".join(f"{c} = excluded.{c}" for c in ("name", "facts", *PROCESS_FACT_NAMES))
_UPSERT_PROCESSES = f"""
    INSERT INTO processes (host_id, pid, start_time, name, facts, {_FACT_COLUMNS}, current,
                           latest_capture_time, {_COLUMNS})
    SELECT %(host_id)s, pid, start_time, name, facts, {_FACT_COLUMNS}, true, capture_time,
           {_COLUMNS}
    FROM push_staging
    ON CONFLICT (host_id, pid, start_time) DO UPDATE SET
      {_SET_FACTS}, current = true, {_LATEST}"""


class _Transaction:
    """:class:`~.rules.Transaction` on one pooled connection."""

    def __init__(self, backend: PostgresBackend, conn: psycopg.Connection[Any]):
        self.backend = backend
        self.conn = conn

    def host_exists(self, host_id: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM hosts WHERE host_id = %s FOR NO KEY UPDATE", (host_id,)
        ).fetchone()
        return row is not None

    def upsert_host(self, host: Host, facts: str, now: float) -> None:
        self.conn.execute(
            """INSERT INTO hosts (host_id, hostname, os, max_map_count, facts, online,
                                  first_seen_time, last_seen_time)
               VALUES (%s, %s, %s, %s, %s::jsonb, true, %s, %s)
               ON CONFLICT (host_id) DO UPDATE SET
                 hostname = excluded.hostname, os = excluded.os,
                 max_map_count = excluded.max_map_count, facts = excluded.facts,
                 online = true, last_seen_time = excluded.last_seen_time""",
            (host.host_id, host.hostname, int(host.os), host.max_map_count, facts, now, now),
        )

    def set_online(self, host_ids: Sequence[str], now: float) -> None:
        self.conn.execute(
            "UPDATE hosts SET online = true, last_seen_time = %s WHERE host_id = ANY(%s)",
            (now, list(host_ids)),
        )

    def set_offline(self, host_id: str) -> None:
        self.conn.execute("UPDATE hosts SET online = false WHERE host_id = %s", (host_id,))

    def set_offline_if_unseen(self, host_id: str, seen_before: float) -> bool:
        cursor = self.conn.execute(
            "UPDATE hosts SET online = false WHERE host_id = %s AND online AND last_seen_time < %s",
            (host_id, seen_before),
        )
        return cursor.rowcount > 0

    def push_sequence(self, host_id: str) -> PushSequence | None:
        return push_sequence_from(self.conn.execute(_SQL.push_sequence, (host_id,)).fetchone())

    def set_push_sequence(self, host_id: str, state: PushSequence) -> None:
        self.conn.execute(_SQL.set_push_sequence, push_sequence_params(host_id, state))

    def current_processes(self, host_id: str) -> list[tuple[int, int, float]]:
        return self.conn.execute(
            "SELECT id, pid, start_time FROM processes WHERE host_id = %s AND current",
            (host_id,),
        ).fetchall()

    def retire_processes(self, process_ids: list[int]) -> None:
        self.conn.execute("UPDATE processes SET current = false WHERE id = ANY(%s)", (process_ids,))

    def set_access_denied_count(self, host_id: str, count: int) -> None:
        self.conn.execute(
            "UPDATE hosts SET access_denied_count = %s WHERE host_id = %s", (count, host_id)
        )

    _UPSERT_PROCESSES = _UPSERT_PROCESSES
    _INSERT_SUMMARIES = f"""
        INSERT INTO summaries (process_id, capture_time, {_COLUMNS})
        SELECT p.id, st.capture_time, {", ".join(f"st.{c}" for c in SUMMARY_COLUMNS)}
        FROM push_staging st JOIN processes p
          ON p.host_id = %(host_id)s AND p.pid = st.pid AND p.start_time = st.start_time
        ON CONFLICT (process_id, capture_time) DO UPDATE SET
          {", ".join(f"{c} = excluded.{c}" for c in SUMMARY_COLUMNS)}"""

    def add_summaries(self, host_id: str, rows: list[SummaryRow]) -> None:
        copy_sql = f"COPY push_staging ({', '.join(_STAGING_COLUMNS)}) FROM STDIN"
        with self.conn.cursor() as cur:
            with cur.copy(copy_sql.encode()) as copy:
                for r in rows:
                    copy.write_row(
                        (
                            r.pid,
                            r.start_time,
                            r.name,
                            r.facts,
                            *r.fact_values,
                            r.capture_time,
                            *r.values,
                        )
                    )
            params = {"host_id": host_id}
            cur.execute(self._UPSERT_PROCESSES.encode(), params)
            cur.execute(self._INSERT_SUMMARIES.encode(), params)

    def lock_region_tables(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (_REGION_LOCK,))

    def region_table_present(self, digest: bytes) -> bool:
        row = self.conn.execute("SELECT 1 FROM region_tables WHERE sha256 = %s", (digest,))
        return row.fetchone() is not None

    def add_region_table(self, digest: bytes, size_bytes: int, packed: bytes) -> None:
        self.conn.execute(
            """INSERT INTO region_tables (sha256, size_bytes, zlib_data) VALUES (%s, %s, %s)
               ON CONFLICT (sha256) DO NOTHING""",
            (digest, size_bytes, packed),
        )

    def add_snapshot(self, host_id: str, row: SnapshotRow) -> int:
        facts = ", ".join(["%s"] * len(PROCESS_FACT_NAMES))
        (process_id,) = self.conn.execute(
            f"""INSERT INTO processes (host_id, pid, start_time, name, facts, {_FACT_COLUMNS})
                VALUES (%s, %s, %s, %s, %s::jsonb, {facts})
                ON CONFLICT (host_id, pid, start_time) DO UPDATE SET {_SET_FACTS}
                RETURNING id""".encode(),
            (host_id, row.pid, row.start_time, row.name, row.facts, *row.fact_values),
        ).fetchone() or (None,)
        placeholders = ", ".join(["%s"] * (7 + len(SUMMARY_COLUMNS)))
        inserted = self.conn.execute(
            f"""INSERT INTO snapshots (process_id, capture_time, host_facts, view,
                    includes_free, includes_residency, regions_sha256, {_COLUMNS})
                VALUES ({placeholders}) RETURNING id""".encode(),
            (
                process_id,
                row.capture_time,
                row.host_facts,
                row.view,
                row.includes_free,
                row.includes_residency,
                row.regions_sha256,
                *row.values,
            ),
        ).fetchone()
        assert inserted is not None  # RETURNING gives the row
        return int(inserted[0])

    def lease(self, kind: str, name: str) -> LeaseRow | None:
        # Make the row first, so that two first claims lock the same row instead of
        # racing to insert it.
        self.conn.execute(
            """INSERT INTO leases (kind, name, holder, address, instance_id, epoch,
                                   expires_time)
               VALUES (%s, %s, '', '', '', 0, 0) ON CONFLICT DO NOTHING""",
            (kind, name),
        )
        row = self.conn.execute(
            """SELECT holder, address, instance_id, epoch, expires_time FROM leases
               WHERE kind = %s AND name = %s FOR UPDATE""",
            (kind, name),
        ).fetchone()
        return None if row is None or row[3] == 0 else LeaseRow(*row)

    def set_lease(self, kind: str, name: str, row: LeaseRow) -> None:
        self.conn.execute(
            """UPDATE leases SET holder = %s, address = %s, instance_id = %s, epoch = %s,
                                 expires_time = %s
               WHERE kind = %s AND name = %s""",
            (row.holder, row.address, row.instance_id, row.epoch, row.expires_time, kind, name),
        )

    def leases(self, kind: str, names: Sequence[str]) -> dict[str, LeaseRow]:
        rows = self.conn.execute(
            """SELECT name, holder, address, instance_id, epoch, expires_time FROM leases
               WHERE kind = %s AND name = ANY(%s) AND epoch > 0 ORDER BY name FOR UPDATE""",
            (kind, list(names)),
        ).fetchall()
        return dict(leases_from(rows))

    def extend_leases(self, kind: str, names: Sequence[str], expires_time: float) -> None:
        self.conn.execute(
            "UPDATE leases SET expires_time = %s WHERE kind = %s AND name = ANY(%s)",
            (expires_time, kind, list(names)),
        )


class PostgresBackend:
    """:class:`~.rules.Backend` on a PostgreSQL database."""

    prune_granularity_seconds = float(PARTITION_SECONDS)
    sql = _SQL

    def __init__(self, url: str, *, read_only: bool = False, pool_max: int = POOL_MAX):
        self.url = url
        self.read_only = read_only
        self._closed = False
        self._partitions: set[int] = set()
        self._partitions_lock = threading.Lock()
        self.migrated: list[int] = []
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_max,
            timeout=POOL_TIMEOUT_SECONDS,
            kwargs={"application_name": "vmatlas"},
            configure=self._configure,
            open=False,
        )
        # The schema first, on a connection of its own: a server that cannot be
        # reached fails here at once, not after the pool's patience.
        with _translating(), psycopg.connect(url, connect_timeout=10) as conn:
            self._start(conn)
        with _translating():
            self._pool.open(wait=True, timeout=POOL_TIMEOUT_SECONDS)

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.autocommit = True
        # The store's reads are short and planned anew each time: compiling a large
        # one (an audit's, the host list's) cost 0.4 s of JIT for 0.1 s of work.
        conn.execute("SET jit = off")
        if self.read_only:
            conn.execute("SET default_transaction_read_only = on")
        else:
            conn.execute(_STAGING_DDL.encode())
        conn.autocommit = False

    def _start(self, conn: psycopg.Connection[Any]) -> None:
        if not self.read_only:
            self.migrated = migrate(conn)
        versions = applied_versions(conn)
        conn.rollback()
        version = versions[-1] if versions else 0
        if version != LATEST_VERSION:
            raise errors.FailedPrecondition(
                f"the database has schema version {version}; this vmatlas reads "
                f"version {LATEST_VERSION}"
            )

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._closed:
            raise errors.StoreClosed("the store is closed")
        with _translating(), self._pool.connection() as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        with self._connection() as conn, conn.transaction():
            yield _Transaction(self, conn)

    def read(self, query: str, params: Any = ()) -> list[Any]:
        with self._connection() as conn:
            return conn.execute(query.encode(), params).fetchall()

    def close(self) -> None:
        self._closed = True
        self._pool.close()

    # -- partitions -----------------------------------------------------------------------

    def _known_partitions(self, conn: psycopg.Connection[Any]) -> set[int]:
        rows = conn.execute(
            """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               WHERE i.inhparent = 'summaries'::regclass"""
        ).fetchall()
        return {day for (name,) in rows if (day := _day_of(name)) is not None}

    def prepare_summaries(self, capture_times: set[float]) -> None:
        """Make the day partitions these capture times fall in (and each one's next
        day, so that midnight finds it made), in a transaction of their own: before the
        push's transaction, which must not hold locks that making one waits for."""
        days = {math.floor(t / PARTITION_SECONDS) for t in capture_times}
        if days <= self._partitions:
            return
        with self._partitions_lock, self._connection() as conn, conn.transaction():
            # Making a partition locks the tables it refers to (processes) against
            # writes for a moment: wait for that a while, never for ever.
            conn.execute("SET LOCAL lock_timeout = '10s'")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK,))
            known = self._known_partitions(conn)
            for day in sorted(days | {d + 1 for d in days}):
                if day in known:
                    continue
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE {} PARTITION OF summaries FOR VALUES FROM ({}) TO ({})"
                    ).format(
                        sql.Identifier(_partition_name(day)),
                        sql.Literal(day * PARTITION_SECONDS),
                        sql.Literal((day + 1) * PARTITION_SECONDS),
                    )
                )
                known.add(day)
            self._partitions = known

    def partition_days(self) -> list[int]:
        """The days (capture time // 86400) that have a summary partition."""
        with self._connection() as conn:
            return sorted(self._known_partitions(conn))

    # -- reads ----------------------------------------------------------------------------

    _HOST_SELECT = f"""SELECT h.facts::text, h.online, h.first_seen_time, h.last_seen_time,
                        (SELECT count(*) FROM processes p
                         WHERE p.host_id = h.host_id AND p.current),
                        q.dropped_push_count, h.access_denied_count, {_SQL.host_lease_columns}
                      FROM hosts h LEFT JOIN push_sequences q ON q.host_id = h.host_id
                        {_SQL.host_lease_join}"""

    # Every host's count in one pass over the current set: counting per host (above)
    # visits each host's rows through the index, 0.4 s for 1,000 hosts of 200.
    _HOSTS_SELECT = f"""SELECT h.facts::text, h.online, h.first_seen_time, h.last_seen_time,
                         coalesce(c.count, 0), q.dropped_push_count, h.access_denied_count,
                         {_SQL.host_lease_columns}
                       FROM hosts h LEFT JOIN push_sequences q ON q.host_id = h.host_id
                         LEFT JOIN (SELECT host_id, count(*) AS count FROM processes
                                    WHERE current GROUP BY host_id) c ON c.host_id = h.host_id
                         {_SQL.host_lease_join}
                       ORDER BY h.host_id"""

    def host_rows(self, host_id: str | None) -> list[tuple[Any, ...]]:
        if host_id is None:
            return self.read(self._HOSTS_SELECT)
        return self.read(self._HOST_SELECT + " WHERE h.host_id = %s", (host_id,))

    def current_rows(self, where: ProcessFilter, *, light: bool = False) -> list[tuple[Any, ...]]:
        query, params = _SQL.current(where, light=light)
        with self._connection() as conn, conn.cursor(binary=True) as cur:
            # Binary results: an audit reads every current process at once.
            return cur.execute(query.encode(), params).fetchall()

    def region_table_present(self, digest: bytes) -> bool:
        return bool(self.read("SELECT 1 FROM region_tables WHERE sha256 = %s", (digest,)))

    def region_table_digests(self) -> list[bytes]:
        rows = self.read("SELECT sha256 FROM region_tables ORDER BY sha256")
        return [bytes(row[0]) for row in rows]

    def region_table(self, digest: bytes) -> tuple[int, bytes] | None:
        rows = self.read(
            "SELECT size_bytes, zlib_data FROM region_tables WHERE sha256 = %s", (digest,)
        )
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    def database_problems(self) -> list[str]:
        # PostgreSQL enforces the references itself; what it cannot know is that a
        # current process's latest summary must be in history.
        problems: list[str] = []
        with self._connection() as conn:
            versions = applied_versions(conn)
            if versions != list(range(1, LATEST_VERSION + 1)):
                problems.append(f"schema versions {versions}, expected 1 to {LATEST_VERSION}")
            rows = conn.execute(
                """SELECT p.id FROM processes p WHERE p.current AND NOT EXISTS
                     (SELECT 1 FROM summaries s WHERE s.process_id = p.id
                      AND s.capture_time = p.latest_capture_time)
                   ORDER BY p.id"""
            ).fetchall()
        problems += [f"current process row {row[0]} has no latest summary" for row in rows]
        return problems

    # -- retention ----------------------------------------------------------------------

    def prune(self, older_than: float) -> int:
        removed = 0
        with self._connection() as conn:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '10s'")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK,))
                old = sorted(
                    day
                    for day in self._known_partitions(conn)
                    if (day + 1) * PARTITION_SECONDS <= older_than
                )
                for day in old:
                    name = sql.Identifier(_partition_name(day))
                    count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(name))
                    removed += (count.fetchone() or (0,))[0]
                    conn.execute(sql.SQL("DROP TABLE {}").format(name))
                if old:
                    # Processes whose latest summary went leave the current set.
                    conn.execute(
                        "UPDATE processes SET current = false"
                        " WHERE current AND latest_capture_time < %s",
                        ((old[-1] + 1) * PARTITION_SECONDS,),
                    )
                with self._partitions_lock:
                    self._partitions -= set(old)
            with conn.transaction():
                removed += conn.execute(
                    "DELETE FROM snapshots WHERE capture_time < %s", (older_than,)
                ).rowcount
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_REGION_LOCK,))
                conn.execute(
                    """DELETE FROM region_tables r WHERE NOT EXISTS
                         (SELECT 1 FROM snapshots s WHERE s.regions_sha256 = r.sha256)"""
                )
                # A process with no history left and no place in a current push is gone.
                conn.execute(
                    """DELETE FROM processes p WHERE NOT p.current
                         AND NOT EXISTS (SELECT 1 FROM summaries s WHERE s.process_id = p.id)
                         AND NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.process_id = p.id)"""
                )
        return removed


class PostgresStore(RuleStore):
    """The store in the PostgreSQL database ``url`` names."""

    backend: PostgresBackend

    def __init__(self, url: str, *, read_only: bool = False, pool_max: int = POOL_MAX):
        super().__init__(PostgresBackend(url, read_only=read_only, pool_max=pool_max))
