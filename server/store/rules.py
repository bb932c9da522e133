"""What every store backend does the same way, kept once above the backends.

:class:`RuleStore` implements the :class:`~.base.Store` protocol on top of a
:class:`Backend`, which only runs SQL and handles connections. Here, and nowhere else:

* the one codec for hosts and processes (JSON text with exact integers: addresses are
  unsigned 64-bit and may exceed any signed column);
* region tables: keyed by the SHA-256 of the serialized table, compressed with zlib,
  checked by decompressing, hashing and decoding;
* push sequencing and replay, and dropped-push accounting (:func:`next_sequence`);
* the "complete push" rule: processes missing from a complete push leave the current
  set; a process listed twice in one push counts once;
* leases and ownership records: epochs, expiry, who wins a claim.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from operator import attrgetter, itemgetter
from typing import Any, Protocol

from vmatlas import errors, wire
from vmatlas.audit import AUDIT_ROW_FIELDS, AuditRow
from vmatlas.fleet import FleetProcess, History, HostStatus, StoredSnapshotInfo
from vmatlas.model import (
    PROCESS_FIELD_TYPES,
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
from vmatlas.server.store.base import (
    HostOwnership,
    JobLease,
    ProcessFilter,
    PushOrigin,
    SnapshotRecord,
)

# Region tables are already packed columns: level 1 compresses a 65K-region table to
# within 2% of level 6 in a fifth of the time (3 ms against 15), on the fresh path.
ZLIB_LEVEL = 1

SUMMARY_COLUMNS: tuple[str, ...] = tuple(Summary.__dataclass_fields__)
summary_values: Callable[[Summary], tuple[Any, ...]] = attrgetter(*SUMMARY_COLUMNS)
HOST_LEASE = "host"
JOB_LEASE = "job"

# -- the codec for hosts and processes ---------------------------------------------------


def host_json(host: Host) -> str:
    return json.dumps({**asdict(host), "os": int(host.os)})


def host_from_json(text: str) -> Host:
    values = json.loads(text)
    values["os"] = OperatingSystem(values["os"])
    return Host(**values)


_PROCESS_FIELDS = tuple(Process.__dataclass_fields__)
_process_values = attrgetter(*_PROCESS_FIELDS)


# process_json writes the fields in this order, each as json.dumps would.
_PROCESS_JSON = "{{" + ", ".join(f'"{name}": {{}}' for name in _PROCESS_FIELDS) + "}}"
_json_str = json.encoder.encode_basestring_ascii  # json.dumps's str, ensure_ascii
_JSON_BOOL = ("false", "true")
_ONLY_STR = frozenset((str,))


def process_json(process: Process) -> str:
    """What ``json.dumps(asdict(process))`` gives (the fields are flat). It runs once
    per stored summary: a process of the plain types is written field by field, in
    one format call; anything else (a subclass, an infinite time) goes to json.dumps."""
    values = _process_values(process)
    if tuple(map(type, values)) == PROCESS_FIELD_TYPES:
        pid, ppid, name, exe, args, user, start, bits, low, high, empty, cid, pod = values
        if start - start == 0.0 and _ONLY_STR.issuperset(map(type, args)):
            return _PROCESS_JSON.format(
                pid, ppid, _json_str(name), _json_str(exe),
                "[" + ", ".join(map(_json_str, args)) + "]", _json_str(user),
                float.__repr__(start), bits, low, high, _JSON_BOOL[empty],
                _json_str(cid), _json_str(pod),
            )  # fmt: skip
    return json.dumps(dict(zip(_PROCESS_FIELDS, values, strict=True)))


def process_from_json(text: str) -> Process:
    values = json.loads(text)
    values["command_line"] = tuple(values["command_line"])
    return Process(**values)


# The process facts an audit reads besides pid, name and start time: columns of the
# process row as well as part of its stored facts, written with them on every write of
# the row, so that a light read of the current set reads columns, not JSON. (name,
# PostgreSQL type); SQLite keeps booleans as integers.
PROCESS_FACT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("executable", "text"),
    ("pointer_bits", "integer"),
    ("address_space_empty", "boolean"),
    ("container_id", "text"),
    ("pod_uid", "text"),
)
PROCESS_FACT_NAMES = tuple(name for name, _ in PROCESS_FACT_COLUMNS)
process_fact_values: Callable[[Process], tuple[Any, ...]] = attrgetter(*PROCESS_FACT_NAMES)


def summary_from(row: Sequence[Any], first: int) -> Summary:
    return Summary(*row[first : first + len(SUMMARY_COLUMNS)])


# -- region tables ------------------------------------------------------------------------


def region_digest(regions: bytes) -> bytes:
    return hashlib.sha256(regions).digest()


def pack_regions(regions: bytes) -> bytes:
    return zlib.compress(regions, ZLIB_LEVEL)


def unpack_regions(packed: bytes) -> bytes:
    return zlib.decompress(packed)


def region_table_problems(digest: bytes, size_bytes: int, packed: bytes) -> list[str]:
    """What is wrong with one stored region table; empty when it is intact."""
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


# -- push sequencing ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushSequence:
    """Per host: the agent instance whose pushes are being stored, its last stored
    push, its own running drop total, and the drop total over every instance."""

    instance_id: str
    sequence: int
    instance_dropped_push_count: int
    dropped_push_count: int


def next_sequence(previous: PushSequence | None, origin: PushOrigin) -> tuple[PushSequence, bool]:
    """The host's sequence state after a push from ``origin``, and whether the push is
    new (its sequence above the last one stored from the same instance). A restarted
    agent (another instance) numbers from 1 again; its drops add to the host's total."""
    same = previous is not None and previous.instance_id == origin.instance_id
    sequence, instance_dropped = (
        (previous.sequence, previous.instance_dropped_push_count)
        if same and previous is not None
        else (0, 0)
    )
    total = previous.dropped_push_count if previous is not None else 0
    dropped = max(instance_dropped, origin.dropped_push_count)
    state = PushSequence(
        origin.instance_id,
        max(sequence, origin.sequence),
        dropped,
        total + dropped - instance_dropped,
    )
    return state, origin.sequence > sequence


# -- SQL both backends run as it is --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dialect:
    """Where the two backends' SQL differs, for :class:`Statements`."""

    param: str  # a positional placeholder
    named: str  # a named one, {} for the name
    json_text: str  # what reads a JSON column as text
    true: str
    contains: str  # whether {0} contains {1}
    # The current set with each process's latest summary: FROM clause, the alias the
    # summary's columns are read under, and its capture time.
    current_from: str
    latest: str
    latest_time: str


class Statements:
    """The statements both backends run, written once and made in a backend's
    :class:`Dialect`; their rows are in the orders :class:`Backend` gives."""

    def __init__(self, d: Dialect):
        self.dialect = d
        p, text = d.param, d.json_text
        summary = ", ".join(f"s.{c}" for c in SUMMARY_COLUMNS)
        latest = ", ".join(f"{d.latest}.{c}" for c in SUMMARY_COLUMNS)
        # The row an audit reads (vmatlas.audit.AUDIT_ROW_FIELDS), from columns only.
        light = ", ".join(
            d.latest_time
            if name == "capture_time"
            else f"{d.latest}.{name}"
            if name in SUMMARY_COLUMNS
            else f"p.{name}"
            for name in AUDIT_ROW_FIELDS
        )
        self.order_by = {
            ProcessOrder.REGIONS: f"{d.latest}.map_count DESC, p.host_id, p.pid",
            ProcessOrder.HEADROOM: f"{d.latest}.headroom_fraction ASC, p.host_id, p.pid",
            ProcessOrder.PID: "p.host_id, p.pid",
        }
        self.current_select = (
            f"SELECT p.host_id, p.facts{text}, {d.latest_time}, {latest} {d.current_from}"
        )
        self.current_light_select = f"SELECT {light} {d.current_from}"
        self.push_sequence = f"""
            SELECT instance_id, sequence, instance_dropped_push_count, dropped_push_count
            FROM push_sequences WHERE host_id = {p}"""
        self.set_push_sequence = f"""
            INSERT INTO push_sequences (host_id, instance_id, sequence,
                                        instance_dropped_push_count, dropped_push_count)
            VALUES ({p}, {p}, {p}, {p}, {p})
            ON CONFLICT (host_id) DO UPDATE SET
              instance_id = excluded.instance_id, sequence = excluded.sequence,
              instance_dropped_push_count = excluded.instance_dropped_push_count,
              dropped_push_count = excluded.dropped_push_count"""
        snapshot = f"""
            SELECT p.host_id, p.facts{text}, s.capture_time, s.host_facts{text}, s.view,
                   s.includes_free, s.includes_residency, r.zlib_data, s.id,
                   s.regions_sha256, {summary}
            FROM snapshots s
            JOIN processes p ON p.id = s.process_id
            JOIN region_tables r ON r.sha256 = s.regions_sha256"""
        self.snapshot_by_id = f"{snapshot} WHERE s.id = {p}"
        self.latest_snapshot = f"""{snapshot} WHERE p.host_id = {p} AND p.pid = {p}
            ORDER BY s.capture_time DESC, s.id DESC LIMIT 1"""
        self.summary_history = f"""
            SELECT p.facts{text}, s.capture_time, {summary}
            FROM summaries s JOIN processes p ON p.id = s.process_id
            WHERE p.host_id = {p} AND p.pid = {p} AND s.capture_time BETWEEN {p} AND {p}
            ORDER BY s.capture_time"""
        self.snapshot_history = f"""
            SELECT s.id, p.facts{text}, s.capture_time, {summary}
            FROM snapshots s JOIN processes p ON p.id = s.process_id
            WHERE p.host_id = {p} AND p.pid = {p} AND s.capture_time BETWEEN {p} AND {p}
            ORDER BY s.capture_time, s.id"""
        self.series_rows = f"""
            SELECT p.host_id, p.pid, p.start_time, s.capture_time, s.map_count
              FROM summaries s JOIN processes p ON p.id = s.process_id
             WHERE s.capture_time BETWEEN {p} AND {p}
            UNION ALL
            SELECT p.host_id, p.pid, p.start_time, s.capture_time, s.map_count
              FROM snapshots s JOIN processes p ON p.id = s.process_id
             WHERE s.capture_time BETWEEN {p} AND {p}
            ORDER BY 4"""
        since, until, least = (d.named.format(name) for name in ("since", "until", "least"))
        # The processes with a point off their latest map count are found in the
        # database; only their points travel.
        self.trend_rows = f"""
            WITH points AS (
              SELECT process_id, capture_time, map_count FROM summaries
               WHERE capture_time BETWEEN {since} AND {until}
              UNION ALL
              SELECT process_id, capture_time, map_count FROM snapshots
               WHERE capture_time BETWEEN {since} AND {until}),
            latest AS (
              SELECT process_id, host_id, pid, start_time, map_count
                FROM current_summaries WHERE map_count >= {least}),
            changing AS (
              SELECT DISTINCT x.process_id FROM points x JOIN latest l
                  ON l.process_id = x.process_id AND x.map_count <> l.map_count)
            SELECT l.host_id, l.pid, l.start_time, x.capture_time, x.map_count
              FROM points x JOIN changing USING (process_id) JOIN latest l USING (process_id)
             ORDER BY x.capture_time"""
        # A host's ownership record beside its row (holder, address, instance, epoch,
        # expiry; NULLs when it never had one), joined as the host is read.
        self.host_lease_columns = "o.holder, o.address, o.instance_id, o.epoch, o.expires_time"
        self.host_lease_join = (
            f"LEFT JOIN leases o ON o.kind = '{HOST_LEASE}' AND o.name = h.host_id AND o.epoch > 0"
        )
        self.host_lease = f"""
            SELECT {self.host_lease_columns} FROM hosts h {self.host_lease_join}
            WHERE h.host_id = {p}"""
        self.lease_rows = f"""
            SELECT name, holder, address, instance_id, epoch, expires_time FROM leases
            WHERE kind = {p} AND epoch > 0 ORDER BY name"""
        self.unseen_hosts = f"""
            SELECT host_id FROM hosts WHERE online = {d.true} AND last_seen_time < {p}
            ORDER BY host_id"""

    def current(self, where: ProcessFilter, *, light: bool = False) -> tuple[str, list[Any]]:
        """The statement and parameters of :meth:`Backend.current_rows`."""
        d = self.dialect
        condition = f"p.current = {d.true}"
        params: list[Any] = []
        if where.host_id:
            condition += f" AND p.host_id = {d.param}"
            params.append(where.host_id)
        if where.name_contains:
            condition += " AND " + d.contains.format("p.name", d.param)
            params.append(where.name_contains)
        order = self.order_by[where.order]
        if where.per_host_limit:
            # Each host's first rows in the order, in one pass over the current set.
            condition = f"""p.id IN (SELECT id FROM (
                SELECT p.id, row_number() OVER (PARTITION BY p.host_id ORDER BY {order}) AS rank
                {d.current_from} WHERE {condition}) ranked WHERE rank <= {d.param})"""
            params.append(where.per_host_limit)
        select = self.current_light_select if light else self.current_select
        query = f"{select} WHERE {condition} ORDER BY {order}"
        if where.limit:
            query += f" LIMIT {d.param}"
            params.append(where.limit)
        return query, params


def push_sequence_params(host_id: str, state: PushSequence) -> tuple[Any, ...]:
    return (
        host_id,
        state.instance_id,
        state.sequence,
        state.instance_dropped_push_count,
        state.dropped_push_count,
    )


def push_sequence_from(row: Sequence[Any] | None) -> PushSequence | None:
    return None if row is None else PushSequence(*row)


def leases_from(rows: Sequence[Sequence[Any]]) -> list[tuple[str, LeaseRow]]:
    """``(name, lease)`` of ``(name, holder, address, instance_id, epoch, expires_time)``
    rows."""
    return [(row[0], LeaseRow(*row[1:])) for row in rows]


# -- rows between the rules and a backend -------------------------------------------------


@dataclass(frozen=True, slots=True)
class SummaryRow:
    pid: int
    start_time: float
    name: str
    facts: str  # process_json
    fact_values: tuple[Any, ...]  # in PROCESS_FACT_NAMES order
    capture_time: float
    values: tuple[Any, ...]  # in SUMMARY_COLUMNS order


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    pid: int
    start_time: float
    name: str
    facts: str
    fact_values: tuple[Any, ...]
    capture_time: float
    host_facts: str
    view: int
    includes_free: bool
    includes_residency: bool
    regions_sha256: bytes
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class LeaseRow:
    holder: str
    address: str
    instance_id: str
    epoch: int
    expires_time: float


class Transaction(Protocol):
    """One write transaction of a backend: committed when the block that opened it
    ends without an exception, rolled back otherwise."""

    def host_exists(self, host_id: str) -> bool:
        """Whether the host is known; locks its row until the end (a backend with
        concurrent writers serializes each host's writes on it)."""

    def upsert_host(self, host: Host, facts: str, now: float) -> None: ...
    def set_online(self, host_ids: Sequence[str], now: float) -> None:
        """These hosts are online, last seen ``now`` (unknown ones are passed over)."""

    def set_offline(self, host_id: str) -> None: ...
    def set_offline_if_unseen(self, host_id: str, seen_before: float) -> bool:
        """Mark the host offline if it is online and was last seen before
        ``seen_before``; whether it was."""
        ...

    def push_sequence(self, host_id: str) -> PushSequence | None: ...
    def set_push_sequence(self, host_id: str, state: PushSequence) -> None: ...

    def current_processes(self, host_id: str) -> list[tuple[int, int, float]]:
        """``(process row id, pid, start_time)`` of the host's current set."""

    def retire_processes(self, process_ids: list[int]) -> None:
        """Take these processes out of the current set."""

    def set_access_denied_count(self, host_id: str, count: int) -> None: ...

    def add_summaries(self, host_id: str, rows: list[SummaryRow]) -> None:
        """Each row's process joins the current set (its latest capture time the
        newest seen) and its summary joins history (replacing one at the same time)."""

    def lock_region_tables(self) -> None:
        """Until the end of the transaction no prune deletes a region table."""

    def region_table_present(self, digest: bytes) -> bool: ...
    def add_region_table(self, digest: bytes, size_bytes: int, packed: bytes) -> None: ...
    def add_snapshot(self, host_id: str, row: SnapshotRow) -> int: ...

    def lease(self, kind: str, name: str) -> LeaseRow | None:
        """The lease row, locked until the end of the transaction."""

    def set_lease(self, kind: str, name: str, row: LeaseRow) -> None: ...

    def leases(self, kind: str, names: Sequence[str]) -> dict[str, LeaseRow]:
        """The existing lease rows of these names, locked until the end of the
        transaction (in name order, so that two writers cannot deadlock)."""

    def extend_leases(self, kind: str, names: Sequence[str], expires_time: float) -> None:
        """These lease rows expire at ``expires_time``; nothing else of them changes."""


class Backend(Protocol):
    """SQL and connection handling for :class:`RuleStore`. Reads return rows in the
    column orders given; a closed backend raises StoreClosed, a database that cannot be
    reached StoreUnavailable."""

    prune_granularity_seconds: float

    def transaction(self) -> contextlib.AbstractContextManager[Transaction]: ...

    def prepare_summaries(self, capture_times: set[float]) -> None:
        """Make room for summaries captured at these times (partitions), before the
        transaction that adds them."""

    def host_rows(self, host_id: str | None) -> list[tuple[Any, ...]]:
        """``(facts, online, first_seen_time, last_seen_time, current process count,
        dropped push count or None, access denied count or None, *its ownership
        record's columns (Statements.host_lease_columns, NULLs for none))``, by host
        id."""

    def current_rows(self, where: ProcessFilter, *, light: bool = False) -> list[tuple[Any, ...]]:
        """``(host_id, process facts, capture_time, *summary values)`` of the current
        set, filtered by ``where`` (host id, substring of the name, order, limits);
        ``light``: rows of :data:`vmatlas.audit.AUDIT_ROW_FIELDS`."""

    # The statements of this backend's dialect, and a read of one: ``params`` a tuple
    # for positional placeholders, a dict for named ones. The rows of
    # ``snapshot_by_id`` and ``latest_snapshot``: ``(host_id, process facts,
    # capture_time, host_facts, view, includes_free, includes_residency, compressed
    # regions, id, regions_sha256, *summary values)``; of ``summary_history``: ``(process facts,
    # capture_time, *summary values)``; of ``snapshot_history``: ``(id, process facts,
    # capture_time, *summary values)``; of ``series_rows`` and ``trend_rows``:
    # ``(host_id, pid, start_time, capture_time, map_count)`` by capture time.
    sql: Statements

    def read(self, query: str, params: Any = ()) -> list[tuple[Any, ...]]: ...

    def region_table_present(self, digest: bytes) -> bool: ...
    def region_table_digests(self) -> list[bytes]: ...
    def region_table(self, digest: bytes) -> tuple[int, bytes] | None: ...

    def database_problems(self) -> list[str]:
        """The database's own integrity and reference checks."""

    def prune(self, older_than: float) -> int: ...
    def close(self) -> None: ...


class RuleStore:
    """The :class:`~.base.Store` protocol over a :class:`Backend`."""

    def __init__(self, backend: Backend):
        self.backend = backend

    @property
    def prune_granularity_seconds(self) -> float:
        return self.backend.prune_granularity_seconds

    def close(self) -> None:
        self.backend.close()

    @contextlib.contextmanager
    def _tx(self, host_id: str | None = None) -> Iterator[Transaction]:
        with self.backend.transaction() as tx:
            if host_id is not None and not tx.host_exists(host_id):
                raise errors.NotFound(f"no host {host_id!r}")
            yield tx

    # -- hosts ----------------------------------------------------------------------------

    def put_host(self, host: Host, now: float) -> None:
        with self._tx() as tx:
            tx.upsert_host(host, host_json(host), now)

    def mark_offline(self, host_id: str) -> None:
        with self._tx() as tx:
            tx.set_offline(host_id)

    def mark_stale_offline(self, seen_before: float, now: float) -> list[str]:
        unseen = self.backend.read(self.backend.sql.unseen_hosts, (seen_before,))
        if not unseen:
            # The usual case, every period: the leases (one row per host) go unread.
            return []
        held = {host_id for host_id, owner in self.host_owners().items() if owner.live(now)}
        candidates = [host_id for (host_id,) in unseen if host_id not in held]
        marked = []
        for host_id in candidates:
            # Decided again under the lease row's lock: a claim may have come meanwhile.
            with self._tx() as tx:
                row = tx.lease(HOST_LEASE, host_id)
                if (
                    row is None or not self._ownership(host_id, row).live(now)
                ) and tx.set_offline_if_unseen(host_id, seen_before):
                    marked.append(host_id)
        return marked

    def _host_status(self, row: tuple[Any, ...], now: float | None) -> HostStatus:
        facts, online, first_seen, last_seen, count, dropped, denied, *lease = row
        host = host_from_json(facts)
        owner = self._lease_ownership(host.host_id, lease)
        held = owner is not None and owner.live(time.time() if now is None else now)
        return HostStatus(
            host=host,
            online=bool(online),
            first_seen_time=first_seen,
            last_seen_time=last_seen,
            process_count=count,
            dropped_push_count=dropped or 0,
            access_denied_count=denied or 0,
            replica_id=owner.replica_id if held and owner is not None else "",
        )

    def hosts(self, *, now: float | None = None) -> list[HostStatus]:
        return [self._host_status(row, now) for row in self.backend.host_rows(None)]

    def host(self, host_id: str, *, now: float | None = None) -> HostStatus:
        rows = self.backend.host_rows(host_id)
        if not rows:
            raise errors.NotFound(f"no host {host_id!r}")
        return self._host_status(rows[0], now)

    # -- summaries ----------------------------------------------------------------------

    def put_summaries(
        self,
        host_id: str,
        items: list[ProcessSummary],
        *,
        complete: bool = True,
        origin: PushOrigin | None = None,
        access_denied_count: int = 0,
    ) -> bool:
        # One row per process: the later entry of a process listed twice wins.
        latest: dict[tuple[int, float], ProcessSummary] = {}
        for item in items:
            latest[(item.process.pid, item.process.start_time)] = item
        rows = [
            SummaryRow(
                pid=item.process.pid,
                start_time=item.process.start_time,
                name=item.process.name,
                facts=process_json(item.process),
                fact_values=process_fact_values(item.process),
                capture_time=item.capture_time,
                values=summary_values(item.summary),
            )
            for item in latest.values()
        ]
        if rows:
            self.backend.prepare_summaries({row.capture_time for row in rows})
        with self._tx(host_id) as tx:
            if origin is not None and origin.sequence:
                state, new = next_sequence(tx.push_sequence(host_id), origin)
                tx.set_push_sequence(host_id, state)
                if not new:
                    return False
            if complete:
                # Only the processes that left stop being current: clearing every row
                # and setting most of them again costs more than it looks.
                gone = [
                    process_id
                    for process_id, pid, start_time in tx.current_processes(host_id)
                    if (pid, start_time) not in latest
                ]
                if gone:
                    tx.retire_processes(gone)
                tx.set_access_denied_count(host_id, access_denied_count)
            if rows:
                tx.add_summaries(host_id, rows)
        return True

    @staticmethod
    def _fleet_process(row: tuple[Any, ...]) -> FleetProcess:
        return FleetProcess(
            host_id=row[0],
            item=ProcessSummary(
                process=process_from_json(row[1]),
                summary=summary_from(row, 3),
                capture_time=row[2],
            ),
        )

    def processes(self, where: ProcessFilter) -> list[FleetProcess]:
        order = ProcessOrder.parse(where.order)  # InvalidArgument for an unknown one
        if order is not where.order:
            where = replace(where, order=order)
        if where.limit < 0 or where.per_host_limit < 0:
            raise errors.InvalidArgument(
                f"a limit must not be negative ({min(where.limit, where.per_host_limit)})"
            )
        if where.host_id:
            self.host(where.host_id)  # NotFound for an unknown host
        return [self._fleet_process(row) for row in self.backend.current_rows(where)]

    def latest_summaries_all_hosts(self) -> list[FleetProcess]:
        rows = self.backend.current_rows(ProcessFilter(order=ProcessOrder.PID))
        return [self._fleet_process(row) for row in rows]

    def audit_processes(self) -> dict[str, list[AuditRow]]:
        # The rows as the driver made them: an audit reads each field once or twice.
        rows = self.backend.current_rows(ProcessFilter(order=ProcessOrder.PID), light=True)
        return {
            host_id: list(host_rows)
            for host_id, host_rows in itertools.groupby(rows, key=itemgetter(0))
        }

    # -- snapshots ----------------------------------------------------------------------

    def put_snapshot(self, host_id: str, record: SnapshotRecord) -> str:
        header = record.header
        digest = region_digest(record.regions)
        # Compress outside the transaction: it is the slow part.
        known = self.backend.region_table_present(digest)
        packed = None if known else pack_regions(record.regions)
        row = SnapshotRow(
            pid=header.process.pid,
            start_time=header.process.start_time,
            name=header.process.name,
            facts=process_json(header.process),
            fact_values=process_fact_values(header.process),
            capture_time=header.capture_time,
            host_facts=host_json(header.host),
            view=int(header.view),
            includes_free=header.includes_free,
            includes_residency=header.includes_residency,
            regions_sha256=digest,
            values=summary_values(header.summary),
        )
        with self._tx(host_id) as tx:
            tx.lock_region_tables()
            # Whether the table is there decides here, in the transaction that refers
            # to it: a prune since the look above may have deleted it (rare, so
            # compressing in the transaction then costs little).
            if packed is None and not tx.region_table_present(digest):
                packed = pack_regions(record.regions)
            if packed is not None:
                tx.add_region_table(digest, len(record.regions), packed)
            return str(tx.add_snapshot(host_id, row))

    @staticmethod
    def _record(row: tuple[Any, ...]) -> SnapshotRecord:
        header = Snapshot(
            host=host_from_json(row[3]),
            process=process_from_json(row[1]),
            capture_time=row[2],
            summary=summary_from(row, 10),
            regions=RegionTable(),
            view=SnapshotView(row[4]),
            includes_free=bool(row[5]),
            includes_residency=bool(row[6]),
        )
        return SnapshotRecord(
            header=header, regions=unpack_regions(row[7]), regions_sha256=bytes(row[9])
        )

    def get_snapshot(self, snapshot_id: str) -> tuple[str, SnapshotRecord]:
        try:
            key = int(snapshot_id)
        except ValueError:
            raise errors.NotFound(f"no snapshot {snapshot_id!r}") from None
        rows = (
            self.backend.read(self.backend.sql.snapshot_by_id, (key,)) if 0 < key < 1 << 63 else []
        )
        row = rows[0] if rows else None
        if row is None:
            raise errors.NotFound(f"no snapshot {snapshot_id!r}")
        return row[0], self._record(row)

    def latest_snapshot(self, host_id: str, pid: int) -> tuple[str, SnapshotRecord]:
        rows = self.backend.read(self.backend.sql.latest_snapshot, (host_id, pid))
        row = rows[0] if rows else None
        if row is None:
            raise errors.NotFound(f"no stored snapshot of pid {pid} on {host_id!r}", pid=pid)
        return str(row[8]), self._record(row)

    def history(self, host_id: str, pid: int, since: float, until: float) -> History:
        self.host(host_id)
        sql, params = self.backend.sql, (host_id, pid, since, until)
        summaries = self.backend.read(sql.summary_history, params)
        snapshots = self.backend.read(sql.snapshot_history, params)
        return History(
            summaries=[
                ProcessSummary(process_from_json(r[0]), summary_from(r, 2), r[1]) for r in summaries
            ],
            snapshots=[
                StoredSnapshotInfo(
                    snapshot_id=str(r[0]),
                    host_id=host_id,
                    process=process_from_json(r[1]),
                    capture_time=r[2],
                    summary=summary_from(r, 3),
                )
                for r in snapshots
            ],
        )

    def map_count_series(
        self, since: float, until: float
    ) -> dict[tuple[str, int, float], list[tuple[float, int]]]:
        series: dict[tuple[str, int, float], list[tuple[float, int]]] = {}
        for host_id, pid, start_time, capture_time, map_count in self.backend.read(
            self.backend.sql.series_rows, (since, until, since, until)
        ):
            series.setdefault((host_id, pid, start_time), []).append((capture_time, map_count))
        return series

    def trend_series(
        self, since: float, until: float, min_map_count: int
    ) -> dict[tuple[str, int, float], list[tuple[float, int]]]:
        series: dict[tuple[str, int, float], list[tuple[float, int]]] = {}
        for host_id, pid, start_time, capture_time, map_count in self.backend.read(
            self.backend.sql.trend_rows, {"since": since, "until": until, "least": min_map_count}
        ):
            series.setdefault((host_id, pid, start_time), []).append((capture_time, map_count))
        return series

    # -- retention and integrity ----------------------------------------------------------

    def prune(self, older_than: float) -> int:
        return self.backend.prune(older_than)

    def prepare_ahead(self, now: float, ahead_seconds: float) -> None:
        step = self.backend.prune_granularity_seconds
        if step:
            steps = int(ahead_seconds // step) + 1
            self.backend.prepare_summaries({now + k * step for k in range(steps)})

    def check(self) -> list[str]:
        problems = self.backend.database_problems()
        # One table at a time: a store may hold thousands of them.
        for digest in self.backend.region_table_digests():
            stored = self.backend.region_table(digest)
            if stored is not None:  # else pruned meanwhile
                problems += region_table_problems(digest, *stored)
        return problems

    # -- ownership and singleton jobs ---------------------------------------------------

    @classmethod
    def _lease_ownership(cls, host_id: str, columns: Sequence[Any]) -> HostOwnership | None:
        """The record in a row's Statements.host_lease_columns; None for NULLs."""
        return None if columns[0] is None else cls._ownership(host_id, LeaseRow(*columns))

    @staticmethod
    def _ownership(host_id: str, row: LeaseRow) -> HostOwnership:
        return HostOwnership(
            host_id=host_id,
            replica_id=row.holder,
            address=row.address,
            instance_id=row.instance_id,
            epoch=row.epoch,
            expires_time=row.expires_time,
        )

    def claim_host(
        self,
        host_id: str,
        *,
        replica_id: str,
        address: str,
        instance_id: str,
        now: float,
        ttl_seconds: float,
    ) -> HostOwnership:
        if not replica_id:
            raise errors.InvalidArgument("a claim needs a replica id")
        with self._tx() as tx:
            row = tx.lease(HOST_LEASE, host_id)
            if (
                row is not None
                and self._ownership(host_id, row).live(now)
                and row.instance_id != instance_id
            ):
                raise errors.StoreConflict(
                    f"host id {host_id!r} is held by another agent (instance "
                    f"{row.instance_id}) through replica {row.holder} at {row.address}"
                )
            claimed = LeaseRow(
                replica_id, address, instance_id, (row.epoch if row else 0) + 1, now + ttl_seconds
            )
            tx.set_lease(HOST_LEASE, host_id, claimed)
        return self._ownership(host_id, claimed)

    @staticmethod
    def _lost(held: HostOwnership, row: LeaseRow | None) -> errors.StoreConflict | None:
        """Why ``held`` cannot be renewed (another claim or a release since), or None."""
        if row is not None and row.epoch == held.epoch and row.holder == held.replica_id:
            return None
        holder = f"replica {row.holder} (epoch {row.epoch})" if row and row.holder else ""
        return errors.StoreConflict(
            f"host {held.host_id!r} is no longer held at epoch {held.epoch}"
            + (f": {holder} holds it" if holder else ": it was released")
        )

    def renew_hosts(
        self, held: Sequence[HostOwnership], *, now: float, ttl_seconds: float
    ) -> list[HostOwnership | errors.StoreConflict]:
        if not held:
            return []
        with self._tx() as tx:
            rows = tx.leases(HOST_LEASE, sorted({h.host_id for h in held}))
            results: list[HostOwnership | errors.StoreConflict] = []
            kept: list[str] = []
            for h in held:
                lost = self._lost(h, rows.get(h.host_id))
                if lost is not None:
                    results.append(lost)
                else:
                    results.append(replace(h, expires_time=now + ttl_seconds))
                    kept.append(h.host_id)
            if kept:
                tx.extend_leases(HOST_LEASE, kept, now + ttl_seconds)
                tx.set_online(kept, now)
        return results

    def release_host(self, held: HostOwnership) -> bool:
        with self._tx() as tx:
            row = tx.lease(HOST_LEASE, held.host_id)
            if self._lost(held, row) is not None:
                return False
            assert row is not None  # as _lost found
            tx.set_lease(HOST_LEASE, held.host_id, LeaseRow("", "", "", row.epoch, 0.0))
            if tx.host_exists(held.host_id):
                tx.set_offline(held.host_id)
        return True

    def host_owner(self, host_id: str) -> HostOwnership | None:
        rows = self.backend.read(self.backend.sql.host_lease, (host_id,))
        if not rows:
            raise errors.NotFound(f"no host {host_id!r}")
        return self._lease_ownership(host_id, rows[0])

    def host_owners(self) -> dict[str, HostOwnership]:
        return {
            host_id: self._ownership(host_id, row)
            for host_id, row in leases_from(
                self.backend.read(self.backend.sql.lease_rows, (HOST_LEASE,))
            )
        }

    def acquire_job(
        self, job: str, *, holder: str, now: float, ttl_seconds: float
    ) -> JobLease | None:
        if not holder:
            raise errors.InvalidArgument("a job lease needs a holder")
        with self._tx() as tx:
            row = tx.lease(JOB_LEASE, job)
            if row is not None and row.holder and row.expires_time > now:
                if row.holder != holder:
                    return None
                epoch = row.epoch
            else:
                epoch = (row.epoch if row else 0) + 1
            taken = LeaseRow(holder, "", "", epoch, now + ttl_seconds)
            tx.set_lease(JOB_LEASE, job, taken)
        return JobLease(job, holder, epoch, taken.expires_time)

    def renew_job(self, lease: JobLease, *, now: float, ttl_seconds: float) -> JobLease:
        with self._tx() as tx:
            row = tx.lease(JOB_LEASE, lease.job)
            if row is None or row.epoch != lease.epoch or row.holder != lease.holder:
                raise errors.StoreConflict(
                    f"job {lease.job!r} is no longer held by {lease.holder} at epoch {lease.epoch}"
                )
            tx.set_lease(
                JOB_LEASE, lease.job, LeaseRow(row.holder, "", "", row.epoch, now + ttl_seconds)
            )
        return JobLease(lease.job, lease.holder, lease.epoch, now + ttl_seconds)

    def release_job(self, lease: JobLease) -> None:
        with self._tx() as tx:
            row = tx.lease(JOB_LEASE, lease.job)
            if row is not None and row.epoch == lease.epoch and row.holder == lease.holder:
                tx.set_lease(JOB_LEASE, lease.job, LeaseRow("", "", "", row.epoch, 0.0))
