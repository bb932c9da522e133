"""The store contract: every rule of the Store protocol, asserted once and run against
every backend (see conftest.BACKENDS), after Teleport's backend test suite."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import replace

import pytest

from tests.store.conftest import make_host, make_item, make_process
from vmatlas import errors, wire
from vmatlas.agents.linux import LinuxReader
from vmatlas.audit import AUDIT_ROW_FIELDS
from vmatlas.grpcutil import status_of
from vmatlas.model import ProcessOrder, Summary
from vmatlas.server.store import (
    HostOwnership,
    ProcessFilter,
    PushOrigin,
    SnapshotRecord,
    Store,
    open_store,
)
from vmatlas.server.store.rules import RuleStore

DAY = 86400.0
U64_MAX = (1 << 64) - 1


def snapshot_record(reader: LinuxReader, capture_time: float, map_count: int = 0) -> SnapshotRecord:
    snapshot = reader.snapshot(os.getpid())
    header, regions = wire.snapshot_parts(snapshot)
    stored = replace(wire.snapshot_header_from_bytes(header), capture_time=capture_time)
    if map_count:
        stored = replace(stored, summary=replace(stored.summary, map_count=map_count))
    return SnapshotRecord(stored, regions)


def region_tables(store: Store) -> list[bytes]:
    assert isinstance(store, RuleStore)
    return store.backend.region_table_digests()


# -- hosts -------------------------------------------------------------------------------


def test_hosts_are_recorded_updated_and_sorted_by_code_point(store: Store) -> None:
    for host_id in ("b-host", "B-host", "a-host", "ä-host"):
        store.put_host(make_host(host_id), 1000.0)
    store.put_host(make_host("a-host", hostname="renamed"), 2000.0)
    assert [h.host_id for h in store.hosts()] == ["B-host", "a-host", "b-host", "ä-host"]
    status = store.host("a-host")
    assert status.host == make_host("a-host", hostname="renamed")
    assert (status.online, status.first_seen_time, status.last_seen_time) == (True, 1000.0, 2000.0)
    assert (status.process_count, status.dropped_push_count, status.access_denied_count) == (
        0,
        0,
        0,
    )

    store.mark_offline("a-host")
    assert not store.host("a-host").online
    store.put_host(make_host("a-host", hostname="renamed"), 3000.0)  # its agent is back
    status = store.host("a-host")
    assert (status.online, status.first_seen_time, status.last_seen_time) == (True, 1000.0, 3000.0)
    with pytest.raises(errors.NotFound):
        store.host("nobody")


def test_unsigned_64_bit_addresses_and_text_survive(store: Store) -> None:
    host = make_host("wide", user_address_max=U64_MAX, hostname="hôte-ü")
    store.put_host(host, 1000.0)
    process = make_process(7, "naïve ☃", user_address_max=U64_MAX, user_address_min=1 << 63)
    store.put_summaries("wide", [make_item(process, 1000.123456789)])
    assert store.host("wide").host == host
    [listed] = store.processes(ProcessFilter(host_id="wide"))
    assert listed.item == make_item(process, 1000.123456789)  # times exact to the bit


# -- summaries and the current set -----------------------------------------------------------


def test_summaries_for_an_unknown_host_are_not_found(store: Store) -> None:
    with pytest.raises(errors.NotFound):
        store.put_summaries("nobody", [make_item(make_process(1), 1.0)])


def test_a_complete_push_is_the_current_set(store: Store) -> None:
    store.put_host(make_host(), 1000.0)
    a, b, c = make_process(1), make_process(2), make_process(3)
    store.put_summaries(
        "host-a", [make_item(a, 1000.0), make_item(b, 1000.0)], access_denied_count=4
    )
    status = store.host("host-a")
    assert (status.process_count, status.access_denied_count) == (2, 4)
    # An incomplete push adds to the current set and leaves the denied count be.
    store.put_summaries("host-a", [make_item(c, 1010.0)], complete=False, access_denied_count=9)
    assert store.host("host-a").process_count == 3
    assert store.host("host-a").access_denied_count == 4
    # A complete push without a and c: they exited.
    store.put_summaries("host-a", [make_item(b, 1020.0, map_count=7)], access_denied_count=0)
    [only] = store.processes(ProcessFilter(host_id="host-a"))
    assert (only.item.process.pid, only.item.capture_time, only.item.summary.map_count) == (
        2,
        1020.0,
        7,
    )
    assert store.host("host-a").access_denied_count == 0
    # A pid reused by a new process (another start time) is another process.
    reused = make_process(2, start_time=500.0)
    store.put_summaries("host-a", [make_item(b, 1030.0), make_item(reused, 1030.0)])
    assert sorted(p.item.process.start_time for p in store.latest_summaries_all_hosts()) == [
        100.0,
        500.0,
    ]


def test_a_process_listed_twice_in_one_push_counts_once(store: Store) -> None:
    store.put_host(make_host(), 1000.0)
    a = make_process(1)
    store.put_summaries("host-a", [make_item(a, 1000.0, map_count=5), make_item(a, 1000.0, 6)])
    [listed] = store.processes(ProcessFilter())
    assert listed.item.summary.map_count == 6
    assert store.host("host-a").process_count == 1
    assert [s.summary.map_count for s in store.history("host-a", 1, 0, 1e12).summaries] == [6]


def test_an_older_summary_never_replaces_the_latest(store: Store) -> None:
    store.put_host(make_host(), 1000.0)
    a = make_process(1)
    store.put_summaries("host-a", [make_item(a, 2000.0, map_count=20)])
    store.put_summaries("host-a", [make_item(a, 1500.0, map_count=15)], complete=False)
    [listed] = store.processes(ProcessFilter())
    assert (listed.item.capture_time, listed.item.summary.map_count) == (2000.0, 20)
    # The same capture time again replaces it (a push stored twice without sequence).
    store.put_summaries("host-a", [make_item(a, 2000.0, map_count=21)], complete=False)
    assert store.processes(ProcessFilter())[0].item.summary.map_count == 21
    history = store.history("host-a", 1, 0.0, 1e12)
    assert [(s.capture_time, s.summary.map_count) for s in history.summaries] == [
        (1500.0, 15),
        (2000.0, 21),
    ]


def test_a_replayed_push_is_a_no_op_and_drops_add_up(store: Store) -> None:
    store.put_host(make_host(), 1000.0)
    a = make_process(1)

    def push(t: float, origin: PushOrigin) -> bool:
        return store.put_summaries("host-a", [make_item(a, t, map_count=int(t))], origin=origin)

    assert push(1000.0, PushOrigin("a", 1))
    assert push(1001.0, PushOrigin("a", 2))
    # The same pushes again (their acknowledgements were lost): nothing changes.
    assert not push(1000.0, PushOrigin("a", 1))
    assert not push(1001.0, PushOrigin("a", 2))
    # Pushes 3-5 dropped by the agent; 6 reports it, and 7 the same running total.
    assert push(1006.0, PushOrigin("a", 6, dropped_push_count=3))
    assert push(1007.0, PushOrigin("a", 7, dropped_push_count=3))
    assert store.host("host-a").dropped_push_count == 3
    # A restarted agent numbers from 1 again and its drops add to the host's total.
    assert push(1010.0, PushOrigin("b", 1, dropped_push_count=2))
    assert not push(1010.0, PushOrigin("b", 1, dropped_push_count=2))
    # A replay may still report more drops: they count, the summaries do not.
    assert not push(999.0, PushOrigin("b", 1, dropped_push_count=4))
    assert store.hosts()[0].dropped_push_count == 7
    history = store.history("host-a", 1, 0.0, float("inf"))
    assert [s.capture_time for s in history.summaries] == [1000.0, 1001.0, 1006.0, 1007.0, 1010.0]
    assert [s.summary.map_count for s in history.summaries] == [1000, 1001, 1006, 1007, 1010]


def test_processes_filter_order_and_limit(store: Store) -> None:
    store.put_host(make_host("h1"), 1000.0)
    store.put_host(make_host("h2"), 1000.0)
    store.put_summaries(
        "h1",
        [
            make_item(make_process(10, "nginx"), 1000.0, map_count=50, headroom=0.9),
            make_item(make_process(11, "postgres"), 1000.0, map_count=500, headroom=0.2),
        ],
    )
    store.put_summaries(
        "h2",
        [
            make_item(make_process(5, "Nginx"), 1000.0, map_count=300, headroom=0.1),
            make_item(make_process(6, "java"), 1000.0, map_count=50, headroom=0.9),
        ],
    )

    def keys(where: ProcessFilter) -> list[tuple[str, int]]:
        return [(p.host_id, p.item.process.pid) for p in store.processes(where)]

    assert keys(ProcessFilter()) == [("h1", 11), ("h2", 5), ("h1", 10), ("h2", 6)]
    assert keys(ProcessFilter(order=ProcessOrder.HEADROOM)) == [
        ("h2", 5),
        ("h1", 11),
        ("h1", 10),
        ("h2", 6),
    ]
    assert keys(ProcessFilter(order=ProcessOrder.PID)) == [
        ("h1", 10),
        ("h1", 11),
        ("h2", 5),
        ("h2", 6),
    ]
    assert keys(ProcessFilter(name_contains="nginx")) == [("h1", 10)]  # case matters
    assert keys(ProcessFilter(host_id="h2", order="pid")) == [("h2", 5), ("h2", 6)]
    assert keys(ProcessFilter(limit=2)) == [("h1", 11), ("h2", 5)]
    # Each host's first in the order, then the whole list in that order.
    assert keys(ProcessFilter(order=ProcessOrder.HEADROOM, per_host_limit=1)) == [
        ("h2", 5),
        ("h1", 11),
    ]
    assert keys(ProcessFilter(per_host_limit=2, limit=3)) == [("h1", 11), ("h2", 5), ("h1", 10)]
    # The filter applies before the ranking: h1's first "n" process is nginx.
    assert keys(ProcessFilter(name_contains="n", per_host_limit=1)) == [("h2", 5), ("h1", 10)]
    assert keys(ProcessFilter(host_id="h1", order="pid", per_host_limit=1)) == [("h1", 10)]
    assert [(p.host_id, p.item.process.pid) for p in store.latest_summaries_all_hosts()] == [
        ("h1", 10),
        ("h1", 11),
        ("h2", 5),
        ("h2", 6),
    ]
    with pytest.raises(errors.InvalidArgument):
        store.processes(ProcessFilter(order="size"))  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument):
        store.processes(ProcessFilter(per_host_limit=-1))
    with pytest.raises(errors.NotFound):
        store.processes(ProcessFilter(host_id="h3"))


def test_a_push_is_visible_to_another_store_when_it_returns(
    store: Store, open_url: Callable[..., Store]
) -> None:
    # What a second server on the same store (or the same one after a restart) sees.
    other = open_url()
    store.put_host(make_host(), 1000.0)
    store.put_summaries("host-a", [make_item(make_process(1), 1000.0)])
    assert [p.item.process.pid for p in other.processes(ProcessFilter())] == [1]
    store.close()
    again = open_url()
    assert again.host("host-a").process_count == 1
    assert again.check() == []


def test_pushes_from_many_threads_are_all_stored(store: Store) -> None:
    hosts = [f"h{i}" for i in range(6)]
    for host_id in hosts:
        store.put_host(make_host(host_id), 1000.0)
    failures: list[BaseException] = []

    def agent(host_id: str) -> None:
        try:
            for n in range(1, 11):
                items = [make_item(make_process(p), 1000.0 + n) for p in range(1, 21)]
                store.put_summaries(host_id, items, origin=PushOrigin(host_id, n))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=agent, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(store.latest_summaries_all_hosts()) == 6 * 20
    for host_id in hosts:
        assert len(store.history(host_id, 7, 0.0, 1e12).summaries) == 10


def test_a_push_replayed_through_two_stores_at_once_is_stored_once(
    store: Store, open_url: Callable[..., Store]
) -> None:
    # An agent that failed over replays its pushes to a second server while the first
    # still stores them: each is stored once, and exactly one call says it stored it.
    other = open_url()
    store.put_host(make_host(), 1000.0)
    process = make_process(1)
    results: list[list[bool]] = [[], []]
    barrier = threading.Barrier(2)

    def replay(target: Store, into: list[bool]) -> None:
        barrier.wait()
        for n in range(1, 21):
            item = make_item(process, 1000.0 + n)
            into.append(target.put_summaries("host-a", [item], origin=PushOrigin("a", n)))

    threads = [
        threading.Thread(target=replay, args=(s, r))
        for s, r in zip((store, other), results, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a + b for a, b in zip(*results, strict=True)] == [1] * 20
    history = store.history("host-a", 1, 0.0, 1e12)
    assert [s.capture_time for s in history.summaries] == [1000.0 + n for n in range(1, 21)]


# -- snapshots, region tables, history ---------------------------------------------------------


def test_snapshots_round_trip_and_share_region_tables(store: Store, reader: LinuxReader) -> None:
    store.put_host(make_host(), 1000.0)
    first = snapshot_record(reader, 1000.0)
    second = snapshot_record(reader, 2000.0)
    second = SnapshotRecord(second.header, first.regions)  # the same region table
    first_id = store.put_snapshot("host-a", first)
    second_id = store.put_snapshot("host-a", second)
    assert first_id != second_id
    assert store.get_snapshot(first_id) == ("host-a", first)
    assert store.get_snapshot(second_id) == ("host-a", second)
    # Each comes with the digest its region table is kept under.
    digest = hashlib.sha256(first.regions).digest()
    assert store.get_snapshot(second_id)[1].regions_sha256 == digest
    assert store.latest_snapshot("host-a", first.header.process.pid)[1].regions_sha256 == digest
    pid = first.header.process.pid
    assert store.latest_snapshot("host-a", pid) == (second_id, second)
    assert len(region_tables(store)) == 1  # stored once, by content
    with pytest.raises(errors.NotFound):
        store.put_snapshot("nobody", first)
    for bad in ("nope", "0", "-1", str(1 << 70), "999999"):
        with pytest.raises(errors.NotFound):
            store.get_snapshot(bad)
    with pytest.raises(errors.NotFound) as caught:
        store.latest_snapshot("host-a", pid + 1)
    assert caught.value.pid == pid + 1


def test_history_is_the_range_oldest_first(store: Store, reader: LinuxReader) -> None:
    store.put_host(make_host(), 1000.0)
    record = snapshot_record(reader, 1500.0)
    pid = record.header.process.pid
    process = record.header.process
    for t in (1000.0, 1400.0, 2000.0, 1600.0):
        store.put_summaries("host-a", [make_item(process, t)], complete=False)
    snapshot_id = store.put_snapshot("host-a", record)
    history = store.history("host-a", pid, 1400.0, 1600.0)
    assert [s.capture_time for s in history.summaries] == [1400.0, 1600.0]
    assert [(s.snapshot_id, s.capture_time, s.process) for s in history.snapshots] == [
        (snapshot_id, 1500.0, process)
    ]
    assert history.snapshots[0].summary == record.header.summary
    assert store.history("host-a", pid + 1, 0.0, 1e12).summaries == []
    with pytest.raises(errors.NotFound):
        store.history("nobody", pid, 0.0, 1e12)


def test_map_count_series_reads_every_process_in_one_go(store: Store, reader: LinuxReader) -> None:
    store.put_host(make_host(), 1000.0)
    record = snapshot_record(reader, 1005.0, map_count=105)
    base = record.header.process
    # The same pid, reused by a second process that started later.
    reused = replace(base, start_time=base.start_time + 500.0)
    store.put_summaries("host-a", [make_item(base, 1000.0, 100)])
    store.put_summaries("host-a", [make_item(base, 1010.0, 110)])
    store.put_summaries("host-a", [make_item(reused, 1020.0, 7)])
    store.put_snapshot("host-a", record)
    series = store.map_count_series(1001.0, 2000.0)
    assert series == {
        ("host-a", base.pid, base.start_time): [(1005.0, 105), (1010.0, 110)],
        ("host-a", base.pid, reused.start_time): [(1020.0, 7)],
    }


def test_trend_series_holds_just_the_current_series_that_leave_their_latest_value(
    store: Store, reader: LinuxReader
) -> None:
    store.put_host(make_host(), 1000.0)
    record = snapshot_record(reader, 1015.0, map_count=300)
    mine = record.header.process  # snapshotted at 1015 with 300 maps
    flat = make_process(1, "flat")
    growing = make_process(2, "growing")
    small = make_process(3, "small")  # under the least map count
    gone = make_process(4, "gone")  # leaves the current set
    early = make_process(5, "early")  # changed only before the range
    later = make_process(6, "later")  # flat summaries, another count in a later snapshot
    counts = {
        1000.0: {flat: 300, growing: 200, small: 10, gone: 200, early: 100, later: 300, mine: 300},
        1010.0: {flat: 300, growing: 250, small: 20, gone: 300, early: 300, later: 300, mine: 300},
        1020.0: {flat: 300, growing: 300, small: 30, early: 300, later: 300, mine: 300},
    }
    for t, by_process in counts.items():
        store.put_summaries("host-a", [make_item(p, t, n) for p, n in by_process.items()])
    store.put_snapshot("host-a", record)  # the same count as the latest: still flat
    snapshot = snapshot_record(reader, 1030.0, map_count=400)
    moved = replace(snapshot.header, process=later)
    store.put_snapshot("host-a", replace(snapshot, header=moved))
    full = store.map_count_series(1005.0, 2000.0)
    assert store.trend_series(1005.0, 2000.0, 50) == {
        key: full[key] for key in (("host-a", 2, 100.0), ("host-a", 6, 100.0))
    }
    assert store.trend_series(1005.0, 2000.0, 50)[("host-a", 6, 100.0)] == [
        (1010.0, 300),
        (1020.0, 300),
        (1030.0, 400),
    ]
    assert ("host-a", 3, 100.0) in store.trend_series(1005.0, 2000.0, 10)
    assert ("host-a", 5, 100.0) in store.trend_series(999.0, 2000.0, 50)
    assert store.trend_series(3000.0, 4000.0, 0) == {}


def test_audit_processes_are_the_latest_summaries_by_host_as_columns(store: Store) -> None:
    store.put_host(make_host("h1"), 1000.0)
    store.put_host(make_host("h2"), 1000.0)
    odd = make_process(
        9, "odd", pointer_bits=32, address_space_empty=True, container_id="c0ffee", pod_uid="p1"
    )
    store.put_summaries("h2", [make_item(make_process(7), 1000.0, 70), make_item(odd, 1001.0, 9)])
    store.put_summaries("h1", [make_item(make_process(8, executable=""), 1000.0, 80)])
    light = store.audit_processes()
    assert list(light) == ["h1", "h2"]
    full = store.latest_summaries_all_hosts()
    pid = AUDIT_ROW_FIELDS.index("pid")
    assert [(h, row[pid]) for h, rows in light.items() for row in rows] == [
        (p.host_id, p.item.process.pid) for p in full
    ]
    for row, expected in zip([r for rows in light.values() for r in rows], full, strict=True):
        fields = dict(zip(AUDIT_ROW_FIELDS, row, strict=True))
        item = expected.item
        for name in AUDIT_ROW_FIELDS:
            if name == "host_id":
                assert fields[name] == expected.host_id
            elif name == "capture_time":
                assert fields[name] == item.capture_time
            elif name in Summary.__dataclass_fields__:
                assert fields[name] == getattr(item.summary, name), name
            else:
                # SQLite gives a boolean as 0 or 1.
                assert fields[name] == getattr(item.process, name), name


# -- retention and integrity ---------------------------------------------------------------------


def test_prune_keeps_its_bounds(store: Store, reader: LinuxReader) -> None:
    store.put_host(make_host(), 1000.0)
    step = store.prune_granularity_seconds
    assert step in (0.0, DAY)
    record = snapshot_record(reader, 0.0)
    process, pid = record.header.process, record.header.process.pid
    times = [1 * DAY + 100, 2 * DAY + 100, 3 * DAY - 1, 3 * DAY, 3 * DAY + 1, 4 * DAY + 50]
    for t in times:
        store.put_summaries("host-a", [make_item(process, t)], complete=False)
    other = make_process(pid + 1)
    store.put_summaries("host-a", [make_item(other, 2 * DAY)], complete=False)
    ids = {
        t: store.put_snapshot(
            "host-a", replace(record, header=replace(record.header, capture_time=t))
        )
        for t in (2 * DAY, 3 * DAY, 4 * DAY + 20)
    }

    # On a step boundary every backend removes exactly what is older.
    removed = store.prune(3 * DAY)
    assert removed == 4 + 1  # summaries before 3 days (three of pid, one of other), a snapshot
    history = store.history("host-a", pid, 0.0, float("inf"))
    assert [s.capture_time for s in history.summaries] == [3 * DAY, 3 * DAY + 1, 4 * DAY + 50]
    assert [s.snapshot_id for s in history.snapshots] == [ids[3 * DAY], ids[4 * DAY + 20]]
    with pytest.raises(errors.NotFound):
        store.get_snapshot(ids[2 * DAY])
    assert store.get_snapshot(ids[3 * DAY])[1].regions == record.regions
    # The process whose latest summary went is no longer current; hosts stay.
    assert [p.item.process.pid for p in store.processes(ProcessFilter())] == [pid]
    assert [h.host_id for h in store.hosts()] == ["host-a"]
    assert store.check() == []

    # Off a boundary: nothing at or after the cutoff goes, all before cutoff - step does.
    cutoff = 4 * DAY + 10
    store.prune(cutoff)
    left = [s.capture_time for s in store.history("host-a", pid, 0.0, 1e12).summaries]
    assert all(t >= cutoff - step for t in left)
    assert 4 * DAY + 50 in left
    assert [s.snapshot_id for s in store.history("host-a", pid, 0.0, 1e12).snapshots] == [
        ids[4 * DAY + 20]
    ]
    assert len(region_tables(store)) == 1
    store.prune(10 * DAY)
    assert region_tables(store) == []
    assert store.history("host-a", pid, 0.0, 1e12).summaries == []
    assert store.processes(ProcessFilter()) == []
    assert store.check() == []


def test_snapshots_stored_while_pruning_keep_their_region_tables(
    store: Store, reader: LinuxReader
) -> None:
    store.put_host(make_host(), 1000.0)
    # Captured long ago: every prune deletes it, and its table with it, at once.
    record = snapshot_record(reader, 1000.0)
    done = threading.Event()
    failures: list[BaseException] = []

    def prune() -> None:
        while not done.is_set():
            try:
                store.prune(1e12)
            except BaseException as exc:
                failures.append(exc)
                return

    pruner = threading.Thread(target=prune)
    pruner.start()
    try:
        for _ in range(150):
            store.put_snapshot("host-a", record)
    finally:
        done.set()
        pruner.join()
    assert failures == []
    assert store.check() == []


def test_a_closed_store_says_so_and_callers_can_tell(store: Store) -> None:
    store.put_host(make_host(), 1000.0)
    assert [h.host_id for h in store.hosts()] == ["host-a"]  # a reader in the pool
    store.close()
    with pytest.raises(errors.StoreClosed, match="closed"):
        store.put_host(make_host(), 1001.0)
    with pytest.raises(errors.StoreClosed, match="closed"):
        store.hosts()
    with pytest.raises(errors.StoreClosed):
        store.acquire_job("retention", holder="r1", now=0.0, ttl_seconds=1.0)


def test_store_errors_map_to_their_own_status() -> None:
    closed = errors.StoreClosed("closed")
    unavailable = errors.StoreUnavailable("busy")
    conflict = errors.StoreConflict("taken")
    assert isinstance(closed, errors.FailedPrecondition)
    assert isinstance(unavailable, errors.Unavailable)
    assert isinstance(conflict, errors.Aborted)
    codes = {status_of(e).name for e in (closed, unavailable, conflict)}
    assert codes == {"FAILED_PRECONDITION", "UNAVAILABLE", "ABORTED"}


def test_open_store_refuses_what_it_cannot_open(tmp_path: object) -> None:
    for url in ("mysql://x/y", "sqlite://", "/var/lib/vmatlas"):
        with pytest.raises(errors.InvalidArgument):
            open_store(url)
    with pytest.raises(errors.NotFound):
        open_store(f"sqlite:///{tmp_path}/none.sqlite3", read_only=True)
    with pytest.raises(errors.StoreUnavailable):
        open_store("postgresql://postgres@127.0.0.1:1/nothing")


# -- ownership and singleton jobs -----------------------------------------------------------------


def test_host_ownership_claims_bump_the_epoch_and_fence_the_old_holder(store: Store) -> None:
    first = store.claim_host(
        "h1",
        replica_id="r1",
        address="10.0.0.1:50550",
        instance_id="agent-1",
        now=100.0,
        ttl_seconds=10.0,
    )
    assert (first.replica_id, first.address, first.epoch, first.expires_time) == (
        "r1",
        "10.0.0.1:50550",
        1,
        110.0,
    )
    [renewed] = store.renew_hosts([first], now=105.0, ttl_seconds=10.0)
    assert isinstance(renewed, HostOwnership) and renewed.expires_time == 115.0
    # Another agent with the same host id is refused while the lease is live, and told who.
    with pytest.raises(errors.StoreConflict, match="r1"):
        store.claim_host(
            "h1", replica_id="r2", address="b:1", instance_id="agent-2", now=106.0, ttl_seconds=10.0
        )
    # The same agent reconnecting through r2 takes the host over: r1 is fenced.
    second = store.claim_host(
        "h1",
        replica_id="r2",
        address="10.0.0.2:50550",
        instance_id="agent-1",
        now=107.0,
        ttl_seconds=10.0,
    )
    assert second.epoch == 2
    [lost] = store.renew_hosts([first], now=108.0, ttl_seconds=10.0)
    assert isinstance(lost, errors.StoreConflict) and "epoch 1" in str(lost)
    assert store.release_host(first) is False  # a stale release changes nothing
    assert store.host_owners()["h1"] == second
    # Once expired, another agent may claim the host id.
    third = store.claim_host(
        "h1", replica_id="r3", address="c:1", instance_id="agent-2", now=200.0, ttl_seconds=10.0
    )
    assert third.epoch == 3
    assert store.release_host(third) is True
    released = store.host_owners()["h1"]
    assert (released.replica_id, released.epoch, released.live(201.0)) == ("", 3, False)
    [lost] = store.renew_hosts([third], now=202.0, ttl_seconds=10.0)
    assert isinstance(lost, errors.StoreConflict)
    assert (
        store.claim_host(
            "h1", replica_id="r1", address="a:1", instance_id="agent-9", now=203.0, ttl_seconds=1.0
        ).epoch
        == 4
    )
    assert list(store.host_owners()) == ["h1"]


def test_one_hosts_ownership_record_is_read_alone(store: Store) -> None:
    store.put_host(make_host("h1"), 100.0)
    store.put_host(make_host("h2"), 100.0)
    with pytest.raises(errors.NotFound, match="h3"):
        store.host_owner("h3")
    assert store.host_owner("h1") is None  # known, never claimed
    first = store.claim_host(
        "h1", replica_id="r1", address="a:1", instance_id="agent-1", now=100.0, ttl_seconds=10.0
    )
    store.claim_host(
        "h2", replica_id="r2", address="b:1", instance_id="agent-2", now=100.0, ttl_seconds=10.0
    )
    assert store.host_owner("h1") == first == store.host_owners()["h1"]
    assert store.release_host(first)
    released = store.host_owner("h1")
    assert released is not None and (released.replica_id, released.epoch) == ("", 1)
    assert released == store.host_owners()["h1"]
    assert store.host_owner("h2") == store.host_owners()["h2"]


def test_a_host_is_read_with_the_replica_whose_lease_is_live(store: Store) -> None:
    for host_id in ("h1", "h2", "h3", "h4"):
        store.put_host(make_host(host_id), 100.0)

    def claim(host_id: str, replica_id: str, ttl_seconds: float) -> HostOwnership:
        return store.claim_host(
            host_id,
            replica_id=replica_id,
            address=f"{replica_id}:1",
            instance_id=f"agent-{host_id}",
            now=100.0,
            ttl_seconds=ttl_seconds,
        )

    claim("h1", "r1", 100.0)
    claim("h2", "r2", 5.0)  # expires at 105
    assert store.release_host(claim("h3", "r1", 100.0))  # released: no holder
    # h4 was never claimed.
    assert [(h.host_id, h.replica_id) for h in store.hosts(now=101.0)] == [
        ("h1", "r1"),
        ("h2", "r2"),
        ("h3", ""),
        ("h4", ""),
    ]
    assert [(h.host_id, h.replica_id) for h in store.hosts(now=106.0)] == [
        ("h1", "r1"),
        ("h2", ""),
        ("h3", ""),
        ("h4", ""),
    ]
    assert store.host("h2", now=104.0).replica_id == "r2"
    assert store.host("h2", now=105.0).replica_id == ""  # the lease ends at its expiry
    assert store.host("h1").replica_id == ""  # by the clock: long expired
    # The join adds no row and changes no other column.
    [h1] = [h for h in store.hosts(now=101.0) if h.host_id == "h1"]
    assert h1 == replace(store.host("h4", now=101.0), host=h1.host, replica_id="r1")


def test_releasing_a_host_marks_it_offline_unless_a_newer_claim_holds_it(store: Store) -> None:
    store.put_host(make_host("h1"), 100.0)
    first = store.claim_host(
        "h1", replica_id="r1", address="a:1", instance_id="agent-1", now=100.0, ttl_seconds=10.0
    )
    second = store.claim_host(
        "h1", replica_id="r2", address="b:1", instance_id="agent-1", now=101.0, ttl_seconds=10.0
    )
    assert store.release_host(first) is False
    assert store.host("h1").online
    assert store.release_host(second) is True
    assert not store.host("h1").online
    # A host the store has no row for yet is released all the same.
    third = store.claim_host(
        "h2", replica_id="r1", address="a:1", instance_id="agent-2", now=102.0, ttl_seconds=10.0
    )
    assert store.release_host(third) is True


def test_renewing_many_hosts_is_one_write_that_also_marks_them_seen(store: Store) -> None:
    for host_id in ("h1", "h2", "h3"):
        store.put_host(make_host(host_id), 100.0)
    store.mark_offline("h3")

    def claim(host_id: str, replica_id: str, now: float) -> HostOwnership:
        return store.claim_host(
            host_id,
            replica_id=replica_id,
            address="a:1",
            instance_id=f"agent-{host_id}",
            now=now,
            ttl_seconds=10.0,
        )

    held = [claim("h1", "r1", 100.0), claim("h2", "r1", 100.0), claim("h3", "r1", 100.0)]
    claim("h2", "r2", 101.0)  # the same agent through another replica: r1 lost h2
    assert store.release_host(held[2])  # h3 released (and offline)
    assert store.renew_hosts([], now=102.0, ttl_seconds=10.0) == []
    first, second, third = store.renew_hosts(held, now=105.0, ttl_seconds=10.0)
    assert first == replace(held[0], expires_time=115.0)
    assert store.host_owners()["h1"] == first
    assert isinstance(second, errors.StoreConflict) and "r2" in str(second)
    assert isinstance(third, errors.StoreConflict) and "released" in str(third)
    assert store.host_owners()["h2"].replica_id == "r2"
    assert store.host_owners()["h2"].expires_time == 111.0
    # Renewed hosts are online and seen now; the others keep what they had.
    assert [(h.host_id, h.online, h.last_seen_time) for h in store.hosts()] == [
        ("h1", True, 105.0),
        ("h2", True, 100.0),
        ("h3", False, 100.0),
    ]
    # An expired record that nobody claimed since is renewed.
    assert store.renew_hosts([first], now=200.0, ttl_seconds=10.0) == [
        replace(first, expires_time=210.0)
    ]


def test_a_job_has_one_holder_and_is_taken_over_after_expiry(store: Store) -> None:
    lease = store.acquire_job("retention", holder="r1", now=100.0, ttl_seconds=30.0)
    assert lease is not None and (lease.holder, lease.epoch) == ("r1", 1)
    assert store.acquire_job("retention", holder="r2", now=110.0, ttl_seconds=30.0) is None
    assert store.acquire_job("offline", holder="r2", now=110.0, ttl_seconds=30.0) is not None
    # The holder extends it (same epoch) ...
    again = store.acquire_job("retention", holder="r1", now=120.0, ttl_seconds=30.0)
    assert again is not None and (again.epoch, again.expires_time) == (1, 150.0)
    lease = store.renew_job(again, now=125.0, ttl_seconds=30.0)
    assert lease.expires_time == 155.0
    # ... until it dies: after expiry r2 takes over and r1's renewal fails.
    taken = store.acquire_job("retention", holder="r2", now=156.0, ttl_seconds=30.0)
    assert taken is not None and (taken.holder, taken.epoch) == ("r2", 2)
    with pytest.raises(errors.StoreConflict):
        store.renew_job(lease, now=157.0, ttl_seconds=30.0)
    store.release_job(lease)  # stale: nothing changes
    assert store.acquire_job("retention", holder="r1", now=158.0, ttl_seconds=30.0) is None
    store.release_job(taken)
    after = store.acquire_job("retention", holder="r1", now=159.0, ttl_seconds=30.0)
    assert after is not None and (after.holder, after.epoch) == ("r1", 3)


def test_of_many_at_once_exactly_one_takes_a_job(
    store: Store, open_url: Callable[..., Store]
) -> None:
    # Separate stores: as separate servers would, each with its own connections.
    stores = [open_url() for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    won: list[str] = []

    def contend(i: int) -> None:
        barrier.wait()
        if stores[i].acquire_job("partitions", holder=f"r{i}", now=1.0, ttl_seconds=60.0):
            won.append(f"r{i}")

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1


def test_hosts_whose_server_went_away_are_marked_offline(store: Store) -> None:
    for host_id in ("h1", "h2", "h3", "h4"):
        store.put_host(make_host(host_id), 100.0)
    store.put_host(make_host("h2"), 150.0)  # heard from since
    store.claim_host(  # held by a live replica, though not heard from
        "h3", replica_id="r1", address="a:1", instance_id="agent-3", now=200.0, ttl_seconds=100.0
    )
    store.mark_offline("h4")
    assert store.mark_stale_offline(140.0, 200.0) == ["h1"]
    assert {h.host_id: h.online for h in store.hosts()} == {
        "h1": False,
        "h2": True,
        "h3": True,
        "h4": False,
    }
    # Its replica's record expired: h3 goes too, with h2, now silent as long.
    assert store.mark_stale_offline(160.0, 400.0) == ["h2", "h3"]
    assert not any(h.online for h in store.hosts())
    assert store.mark_stale_offline(1e9, 1e9) == []
    # Back online when it returns, history and all.
    store.put_host(make_host("h1"), 500.0)
    assert store.host("h1").online
