"""The PostgreSQL schema as versioned migrations, applied in order at start.

A migration is never edited once released: a change to the schema is a new entry at
the end. Each runs inside the one transaction that holds the migration lock (DDL is
transactional in PostgreSQL), so a database is at one version or the next, never in
between. ``tests/store/test_postgres.py`` fills each previous version with data and
checks it reads back after the upgrade.

Column types: byte counts and other figures are ``bigint`` (the server refuses values
of 2**63 and above before they reach a store); times are ``double precision`` seconds
since the epoch, the same float the agents send, so a time read back equals the one
written (``timestamptz`` would round it to microseconds). Addresses live only in the
facts of hosts and processes, kept as ``jsonb``, whose numbers are exact decimals:
unsigned 64-bit addresses above 2**63 survive as they are, with no bias or wrapping.
Host ids are ``COLLATE "C"``, so they sort by code point as everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmatlas.server.store.rules import SUMMARY_COLUMNS


def _summary_columns(nullable: bool = False) -> str:
    null = "" if nullable else " NOT NULL"
    return ",\n  ".join(
        f"{name} {'double precision' if name == 'headroom_fraction' else 'bigint'}{null}"
        for name in SUMMARY_COLUMNS
    )


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "hosts, processes, summaries partitioned by capture time, snapshots, region tables",
        f"""
CREATE TABLE hosts (
  host_id text COLLATE "C" PRIMARY KEY,
  hostname text NOT NULL,
  os smallint NOT NULL,
  max_map_count bigint NOT NULL,
  facts jsonb NOT NULL,
  online boolean NOT NULL,
  first_seen_time double precision NOT NULL,
  last_seen_time double precision NOT NULL,
  -- What the agent's latest complete push said besides the summaries.
  access_denied_count bigint
);
-- A process row also holds its latest summary: the current set (what audits and
-- listings read) is one scan of this table, not a join into every partition.
CREATE TABLE processes (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  host_id text COLLATE "C" NOT NULL REFERENCES hosts (host_id),
  pid bigint NOT NULL,
  start_time double precision NOT NULL,
  name text NOT NULL,
  facts jsonb NOT NULL,
  current boolean NOT NULL DEFAULT false,
  latest_capture_time double precision,
  {_summary_columns(nullable=True)},
  UNIQUE (host_id, pid, start_time)
) WITH (fillfactor = 70);  -- room for the update every push makes (HOT updates)
CREATE INDEX processes_current ON processes (host_id) WHERE current;
-- One partition per day of capture time (see PostgresBackend): retention drops whole
-- partitions.
CREATE TABLE summaries (
  process_id bigint NOT NULL REFERENCES processes (id),
  capture_time double precision NOT NULL,
  {_summary_columns()},
  PRIMARY KEY (process_id, capture_time)
) PARTITION BY RANGE (capture_time);
CREATE TABLE region_tables (
  sha256 bytea PRIMARY KEY,  -- of the uncompressed serialized RegionTable
  size_bytes bigint NOT NULL,
  zlib_data bytea NOT NULL
);
-- zlib already compressed it: do not let TOAST try again.
ALTER TABLE region_tables ALTER COLUMN zlib_data SET STORAGE EXTERNAL;
CREATE TABLE snapshots (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  process_id bigint NOT NULL REFERENCES processes (id),
  capture_time double precision NOT NULL,
  host_facts jsonb NOT NULL,
  view smallint NOT NULL,
  includes_free boolean NOT NULL,
  includes_residency boolean NOT NULL,
  {_summary_columns()},
  regions_sha256 bytea NOT NULL REFERENCES region_tables (sha256)
);
CREATE INDEX snapshots_process ON snapshots (process_id, capture_time);
CREATE INDEX snapshots_time ON snapshots (capture_time);
CREATE INDEX snapshots_regions ON snapshots (regions_sha256);
-- Every current process's latest summary, for SQL of one's own (as in SQLite).
CREATE VIEW current_summaries AS
  SELECT host_id, pid, name, start_time, id AS process_id,
         latest_capture_time AS capture_time, {", ".join(SUMMARY_COLUMNS)}
  FROM processes WHERE current;
CREATE TABLE push_sequences (
  host_id text COLLATE "C" PRIMARY KEY REFERENCES hosts (host_id),
  instance_id text NOT NULL,
  sequence bigint NOT NULL,
  instance_dropped_push_count bigint NOT NULL,
  dropped_push_count bigint NOT NULL
);
""",
    ),
    Migration(
        2,
        "leases: host ownership and singleton jobs, for several replicas",
        """
CREATE TABLE leases (
  kind text NOT NULL,                -- 'host' or 'job'
  name text COLLATE "C" NOT NULL,    -- host id or job name
  holder text NOT NULL,              -- replica id; '' when released
  address text NOT NULL,
  instance_id text NOT NULL,
  epoch bigint NOT NULL,
  expires_time double precision NOT NULL,
  PRIMARY KEY (kind, name)
);
""",
    ),
    Migration(
        3,
        "processes: the facts an audit reads as columns, filled from the stored facts",
        # Adding a column with a constant default rewrites nothing; the backfill then
        # rewrites each process row once. The summaries (partitioned) are not touched.
        """
ALTER TABLE processes
  ADD COLUMN executable text NOT NULL DEFAULT '',
  ADD COLUMN pointer_bits integer NOT NULL DEFAULT 64,
  ADD COLUMN address_space_empty boolean NOT NULL DEFAULT false,
  ADD COLUMN container_id text NOT NULL DEFAULT '',
  ADD COLUMN pod_uid text NOT NULL DEFAULT '';
-- Facts written before a field existed keep the column's default (the model's).
UPDATE processes SET
  executable = coalesce(facts->>'executable', ''),
  pointer_bits = coalesce((facts->>'pointer_bits')::integer, 64),
  address_space_empty = coalesce((facts->>'address_space_empty')::boolean, false),
  container_id = coalesce(facts->>'container_id', ''),
  pod_uid = coalesce(facts->>'pod_uid', '');
""",
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version
