"""Singleton jobs (vmatlas.server.domain.jobs) on every backend, with the clock moved by
hand: of several servers on one store exactly one runs each job, another takes it over
once the holder's lease runs out (or at once when the holder gives it up), a holder
that lost its lease stops, and the jobs themselves prune, mark hosts offline and make
partitions ahead."""

from __future__ import annotations

from collections.abc import Callable

from vmatlas.server.domain.jobs import (
    OFFLINE,
    PARTITIONS,
    RETENTION,
    Job,
    SingletonJobs,
    server_jobs,
)
from vmatlas.server.store import Store
from vmatlas.server.store.postgres import PostgresStore

from .conftest import make_host, make_item, make_process

DAY = 86400.0
LEASE = 30.0


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def two_servers(
    open_url: Callable[..., Store], clock: Clock, runs: list[tuple[str, float]], period: float
) -> tuple[SingletonJobs, SingletonJobs]:
    """Servers "one" and "two", each on a store of its own on one database, with one
    job that records who ran it when."""

    def server(name: str) -> SingletonJobs:
        job = Job(RETENTION, period, lambda now: runs.append((name, now)))
        return SingletonJobs(open_url(), name, [job], lease_seconds=LEASE, clock=clock)

    return server("one"), server("two")


def test_of_two_servers_one_runs_the_job_until_its_lease_runs_out(
    open_url: Callable[..., Store],
) -> None:
    clock = Clock()
    runs: list[tuple[str, float]] = []
    one, two = two_servers(open_url, clock, runs, 10.0)
    for _ in range(9):  # 80 s of ticks, every 10 s, both servers alive
        one.tick()
        two.tick()
        clock.now += 10.0
    assert {holder for holder, _ in runs} == {"one"}
    assert len(runs) == 9  # once per period
    assert RETENTION in one.held and RETENTION not in two.held
    # "one" dies: nobody renews; "two" takes over only once the lease has run out.
    died = clock.now
    expires = one.held[RETENTION].expires_time
    while clock.now < expires:
        two.tick()
        assert runs[-1][0] == "one"
        clock.now += 1.0
    two.tick()
    assert runs[-1] == ("two", clock.now)
    assert two.held[RETENTION].epoch == one.held[RETENTION].epoch + 1
    assert clock.now - died <= LEASE
    # "one" was only paused: its renewal finds the job moved, and it stops running it.
    before = len(runs)
    for _ in range(5):
        one.tick()
        two.tick()
        clock.now += 10.0
    assert RETENTION not in one.held
    assert {holder for holder, _ in runs[before:]} == {"two"}


def test_a_server_that_stops_hands_its_jobs_over_at_once(open_url: Callable[..., Store]) -> None:
    clock = Clock()
    runs: list[tuple[str, float]] = []
    one, two = two_servers(open_url, clock, runs, 60.0)
    one.tick()
    two.tick()
    one.release()
    clock.now += 1.0
    two.tick()
    assert runs == [("one", clock.now - 1.0), ("two", clock.now)]


def test_tick_says_when_the_next_renewal_or_run_is_due(store: Store) -> None:
    clock = Clock()
    jobs = SingletonJobs(
        store, "one", [Job(OFFLINE, 4.0, lambda now: None)], lease_seconds=LEASE, clock=clock
    )
    assert jobs.tick() == 4.0  # the next run, before the renewal (10 s)
    other = SingletonJobs(
        store, "two", [Job(OFFLINE, 4.0, lambda now: None)], lease_seconds=LEASE, clock=clock
    )
    assert other.tick() == LEASE / 3  # not held: try again in a third of a lease


def test_the_server_jobs_prune_mark_offline_and_make_partitions(store: Store) -> None:
    clock = Clock(10 * DAY + 3600.0)
    process = make_process(1)
    store.put_host(make_host("gone"), clock.now - 100.0)
    store.put_host(make_host("here"), clock.now - 100.0)
    for day in (7, 8, 9, 10):
        store.put_summaries("here", [make_item(process, day * DAY + 7200.0)], complete=False)
    store.put_host(make_host("here"), clock.now - 1.0)
    jobs = SingletonJobs(
        store,
        "one",
        server_jobs(store, retain_seconds=2 * DAY, offline_after_seconds=30.0),
        lease_seconds=LEASE,
        clock=clock,
    )
    jobs.tick()
    assert jobs.runs == {RETENTION: 1, OFFLINE: 1, PARTITIONS: 1}
    # Retention: everything captured before day 8 and an hour (on PostgreSQL whole
    # days before it: day 7's partition).
    times = [s.capture_time for s in store.history("here", 1, 0, 1e12).summaries]
    assert times == [day * DAY + 7200.0 for day in (8, 9, 10)]
    assert {h.host_id: h.online for h in store.hosts()} == {"gone": False, "here": True}
    if isinstance(store, PostgresStore):
        days = store.backend.partition_days()
        assert days[0] == 8 and {10, 11, 12, 13} <= set(days)
