"""What only the PostgreSQL store does: migrations under a lock with several servers
starting at once, each migration from the version before with data in it, retention by
dropping partitions, column types, a lost connection, and ``vmatlas server --store``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.store.conftest import make_host, make_item, make_process
from vmatlas import errors
from vmatlas.audit import AUDIT_ROW_FIELDS
from vmatlas.server.store import ProcessFilter, PushOrigin, open_store
from vmatlas.server.store.migrations import LATEST_VERSION, MIGRATIONS
from vmatlas.server.store.postgres import PostgresStore, migrate

DAY = 86400.0


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def test_servers_starting_at_once_on_an_empty_database_migrate_once(postgres_url: str) -> None:
    # Real processes, each opening the store as `vmatlas server` does at start.
    script = (
        "import json, os, sys\n"
        "from vmatlas.model import Host, OperatingSystem\n"
        "from vmatlas.server.store import open_store\n"
        "store = open_store(sys.argv[1])\n"
        "store.put_host(Host(f'h{os.getpid()}', 'x', OperatingSystem.LINUX), 1.0)\n"
        "print(json.dumps([os.getpid(), store.backend.migrated]))\n"
        "store.close()\n"
    )
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", script, postgres_url], stdout=subprocess.PIPE, text=True
        )
        for _ in range(5)
    ]
    results = []
    for start in starts:
        out, _ = start.communicate(timeout=120)
        assert start.returncode == 0
        results.append(json.loads(out))
    migrators = [pid for pid, migrated in results if migrated]
    assert len(migrators) == 1, results
    assert [m for _, m in results if m] == [list(range(1, LATEST_VERSION + 1))]
    with connect(postgres_url) as db:
        rows = db.execute("SELECT version, applied_by FROM schema_migrations ORDER BY 1").fetchall()
        assert [v for v, _ in rows] == list(range(1, LATEST_VERSION + 1))
        assert {by.rsplit(":", 1)[1] for _, by in rows} == {str(migrators[0])}
        assert db.execute("SELECT count(*) FROM hosts").fetchone() == (5,)  # all served


# Rows of each released schema version, as that version's SQL writes them: the test of
# the migration to the next version fills the database with them first.
SEEDS: dict[int, list[str]] = {
    1: [
        """INSERT INTO hosts VALUES ('h1', 'h1.example', 1, 65530,
             '{"host_id": "h1", "hostname": "h1.example", "os": 1, "os_version": "",
               "kernel_version": "", "page_size_bytes": 4096,
               "allocation_granularity_bytes": 4096, "user_address_min": 0,
               "user_address_max": 18446744073709551615, "max_map_count": 65530,
               "overcommit_mode": -1, "cpu_count": 2, "memory_total_bytes": 1024}',
             false, 10.0, 20.0, 3)""",
        """INSERT INTO processes (host_id, pid, start_time, name, facts, current,
             latest_capture_time, region_count, map_count, max_map_count, headroom_fraction,
             committed_bytes, reserved_bytes, free_bytes, largest_free_bytes,
             single_page_region_count, guard_region_count, allocation_count, unusable_bytes)
           VALUES ('h1', 42, 5.5, 'db',
             '{"pid": 42, "parent_pid": 1, "name": "db", "executable": "/db",
               "command_line": ["db"], "user": "u", "start_time": 5.5, "pointer_bits": 64,
               "user_address_min": 0, "user_address_max": 18446744073709551615,
               "address_space_empty": false}',
             true, 100.25, 9, 8, 65530, 0.75, 1, 2, 3, 4, 5, 6, 7, 8)""",
        """CREATE TABLE summaries_d0 PARTITION OF summaries FOR VALUES FROM (0) TO (86400)""",
        """INSERT INTO summaries SELECT id, 100.25, 9, 8, 65530, 0.75, 1, 2, 3, 4, 5, 6, 7, 8
           FROM processes""",
        """INSERT INTO push_sequences VALUES ('h1', 'agent-1', 7, 1, 2)""",
    ],
}
# Version 2 added the leases; its process facts carry every field the audit reads, none
# at its default.
SEEDS[2] = [
    statement.replace(
        '"address_space_empty": false}',
        '"address_space_empty": true, "container_id": "c0ffee", "pod_uid": "pod-1"}',
    ).replace('"pointer_bits": 64', '"pointer_bits": 32')
    for statement in SEEDS[1]
] + [
    """INSERT INTO leases VALUES ('host', 'h1', 'replica-1', '127.0.0.1:1', 'agent-1', 3,
         1e12)""",
]


@pytest.mark.parametrize("migration", MIGRATIONS[1:], ids=lambda m: f"to-{m.version}")
def test_each_migration_keeps_the_data_of_the_version_before(
    postgres_url: str, migration: Any
) -> None:
    previous = migration.version - 1
    with connect(postgres_url) as db:
        db.autocommit = False
        assert migrate(db, target=previous) == list(range(1, previous + 1))
        with db.transaction():
            for statement in SEEDS[previous]:
                db.execute(statement.encode())
    store = open_store(postgres_url)
    try:
        assert isinstance(store, PostgresStore)
        assert store.backend.migrated == list(range(migration.version, LATEST_VERSION + 1))
        status = store.host("h1")
        assert status.host.user_address_max == (1 << 64) - 1
        assert (status.online, status.last_seen_time, status.access_denied_count) == (
            False,
            20.0,
            3,
        )
        assert status.dropped_push_count == 2
        [listed] = store.processes(ProcessFilter())
        assert (listed.item.process.pid, listed.item.capture_time) == (42, 100.25)
        assert listed.item.summary.map_count == 8
        # What an audit reads of the process: the same facts, read as columns.
        [row] = store.audit_processes()["h1"]
        light = dict(zip(AUDIT_ROW_FIELDS, row, strict=True))
        process = listed.item.process
        assert (
            light["executable"],
            light["pointer_bits"],
            light["address_space_empty"],
            light["container_id"],
            light["pod_uid"],
        ) == (
            process.executable,
            process.pointer_bits,
            process.address_space_empty,
            process.container_id,
            process.pod_uid,
        )
        assert process.executable == "/db"
        if previous >= 2:
            assert (process.pointer_bits, process.container_id) == (32, "c0ffee")
            assert store.host_owners()["h1"].epoch == 3
        assert [s.capture_time for s in store.history("h1", 42, 0, 1e9).summaries] == [100.25]
        # The sequence carried over: a replay of push 7 is a no-op.
        item = make_item(make_process(42), 200.0)
        assert not store.put_summaries("h1", [item], origin=PushOrigin("agent-1", 7))
        assert store.put_summaries("h1", [item], origin=PushOrigin("agent-1", 8))
        assert store.check() == []
    finally:
        store.close()


def test_every_released_version_has_seed_rows() -> None:
    assert set(SEEDS) == {m.version for m in MIGRATIONS[:-1]}


def test_a_database_newer_than_this_vmatlas_is_refused(postgres_url: str) -> None:
    open_store(postgres_url).close()
    with connect(postgres_url) as db:
        db.execute(
            "INSERT INTO schema_migrations (version, description, applied_by)"
            " VALUES (%s, 'future', 'x')",
            (LATEST_VERSION + 1,),
        )
    with pytest.raises(errors.FailedPrecondition, match="upgrade"):
        open_store(postgres_url)


def test_retention_drops_whole_partitions(postgres_url: str) -> None:
    store = open_store(postgres_url)
    assert isinstance(store, PostgresStore)
    store.put_host(make_host(), 1.0)
    process = make_process(1)
    for day in (1, 2, 3):
        for hour in range(3):
            t = day * DAY + hour * 3600
            store.put_summaries("host-a", [make_item(process, t)], complete=False)
    # Each day's partition, and the next one's made ahead.
    assert store.backend.partition_days() == [1, 2, 3, 4]
    with connect(postgres_url) as db:
        kinds = db.execute(
            "SELECT relname, relkind FROM pg_class WHERE relname LIKE 'summaries%'"
            " AND relkind IN ('p', 'r') AND relnamespace = current_schema()::regnamespace"
            " ORDER BY relname"
        ).fetchall()
    assert kinds == [
        ("summaries", "p"),
        ("summaries_d1", "r"),
        ("summaries_d2", "r"),
        ("summaries_d3", "r"),
        ("summaries_d4", "r"),
    ]
    # Day 1 is older than the cutoff as a whole and goes; day 2 holds rows newer than
    # the cutoff, so it stays whole.
    assert store.prune(2.5 * DAY) == 3
    assert store.backend.partition_days() == [2, 3, 4]
    times = [s.capture_time for s in store.history("host-a", 1, 0, 1e9).summaries]
    assert times == [d * DAY + h * 3600 for d in (2, 3) for h in range(3)]
    with connect(postgres_url) as db:
        # No row was deleted: the partition went as a whole.
        deleted = db.execute(
            "SELECT coalesce(sum(n_tup_del), 0) FROM pg_stat_user_tables"
            " WHERE relname LIKE 'summaries%' AND schemaname = current_schema()"
        ).fetchone()
    assert deleted == (0,)
    # A late push for a dropped day makes its partition again.
    store.put_summaries("host-a", [make_item(process, 1 * DAY + 5)], complete=False)
    assert 1 in store.backend.partition_days()
    assert store.check() == []
    store.close()


def test_column_types_fit_the_data(postgres_url: str) -> None:
    open_store(postgres_url).close()
    with connect(postgres_url) as db:
        types = dict(
            db.execute(
                "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema()"
            ).fetchall()
        )
        partitioned = db.execute(
            "SELECT partstrat FROM pg_partitioned_table WHERE partrelid = 'summaries'::regclass"
        ).fetchone()
    assert partitioned == ("r",)  # by range of capture time
    for column in ("committed_bytes", "free_bytes", "largest_free_bytes", "map_count"):
        assert types[f"summaries.{column}"] == "bigint"
        assert types[f"snapshots.{column}"] == "bigint"
    for column in ("summaries.capture_time", "snapshots.capture_time", "hosts.last_seen_time"):
        assert types[column] == "double precision"
    assert types["region_tables.sha256"] == types["region_tables.zlib_data"] == "bytea"
    assert types["hosts.facts"] == types["processes.facts"] == "jsonb"
    # The facts an audit reads, as columns beside the process's facts.
    assert types["processes.executable"] == types["processes.container_id"] == "text"
    assert types["processes.pointer_bits"] == "integer"
    assert types["processes.address_space_empty"] == "boolean"


def test_a_lost_connection_is_transient(postgres_url: str) -> None:
    store = open_store(postgres_url)
    store.put_host(make_host(), 1.0)
    with connect(postgres_url) as db:
        killed = db.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'vmatlas' AND datname = current_database()"
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    with pytest.raises(errors.StoreUnavailable):
        store.hosts()
    assert [h.host_id for h in store.hosts()] == ["host-a"]  # the retry works
    store.close()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmatlas", *args], capture_output=True, text=True, timeout=120
    )


def test_server_check_on_a_postgres_store(postgres_url: str, tmp_path: Any) -> None:
    store = open_store(postgres_url)
    store.put_host(make_host(), 1.0)
    store.put_summaries("host-a", [make_item(make_process(1), 10.0)])
    store.close()
    done = run_cli("server", "--store", postgres_url, "--check")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"vmatlas store {postgres_url}: consistent"
    with connect(postgres_url) as db:
        db.execute("UPDATE processes SET latest_capture_time = 11.0")
    done = run_cli("server", "--store", postgres_url, "--check")
    assert done.returncode == 1
    assert done.stdout.splitlines()[0].startswith("current process row ")
    bad = run_cli("server", "--store", "mysql://db/vmatlas", "--check")
    assert bad.returncode != 0
    assert bad.stderr.strip().startswith("vmatlas server: unknown store 'mysql://db/vmatlas'")
    both = run_cli("server", "--store", postgres_url, "--data-dir", str(tmp_path), "--check")
    assert both.returncode != 0 and "not both" in both.stderr


def test_a_new_store_on_an_empty_schema_starts_clean(make_postgres_url: Callable[[], str]) -> None:
    # Two stores in two schemas of one database share nothing (what the tests rely on).
    first, second = open_store(make_postgres_url()), open_store(make_postgres_url())
    first.put_host(make_host("one"), 1.0)
    assert second.hosts() == []
    first.close()
    second.close()
