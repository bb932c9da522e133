"""Singleton jobs: work that one replica of several on a store must do, and only one.

Retention, offline marking and partition upkeep each run under a lease row of the
store (:meth:`~vmatlas.server.store.Store.acquire_job`): a replica runs a job only
while it holds the job's lease, renews the lease well before it expires, and gives it
up when it stops. When the holder dies its lease runs out and another replica takes
the job over with a higher epoch; a holder whose renewal finds the lease changed hands
(:class:`~vmatlas.errors.StoreConflict`) stops running the job. A job that outlasts its
lease may overlap its successor's first run once: every job here is idempotent (and
on PostgreSQL the partition changes take turns under an advisory lock), so that costs
work, never data.

:class:`SingletonJobs` is plain code driven by :meth:`SingletonJobs.tick`, with the
clock injected, so tests move time by hand; the server calls ``tick`` from a thread of
its own (:class:`JobScheduler`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vmatlas import errors
from vmatlas.server.store import JobLease, Store

log = logging.getLogger(__name__)

RETENTION = "retention"
OFFLINE = "offline"
PARTITIONS = "partitions"

# A lease is renewed once this much of it has gone.
RENEW_FRACTION = 1 / 3
# Partitions are made this far ahead of the pushes that need them.
PARTITIONS_AHEAD_SECONDS = 2 * 86400.0
PARTITIONS_PERIOD_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class Job:
    """A singleton job: ``run(now)`` every ``period_seconds`` on the lease holder."""

    name: str
    period_seconds: float
    run: Callable[[float], object]


def server_jobs(store: Store, *, retain_seconds: float, offline_after_seconds: float) -> list[Job]:
    """The fleet server's jobs: retention (unless everything is kept), offline marking
    of hosts whose replica went away, and partition upkeep."""
    jobs = []
    if retain_seconds:

        def retention(now: float) -> None:
            removed = store.prune(now - retain_seconds)
            if removed:
                log.info("pruned %d history rows older than the retention", removed)

        jobs.append(Job(RETENTION, min(3600.0, max(1.0, retain_seconds / 10)), retention))

    def offline(now: float) -> None:
        for host_id in store.mark_stale_offline(now - offline_after_seconds, now):
            log.info("host %s offline: its server went away", host_id)

    jobs.append(Job(OFFLINE, offline_after_seconds / 2, offline))
    jobs.append(
        Job(
            PARTITIONS,
            PARTITIONS_PERIOD_SECONDS,
            lambda now: store.prepare_ahead(now, PARTITIONS_AHEAD_SECONDS),
        )
    )
    return jobs


class SingletonJobs:
    """Runs ``jobs`` on behalf of ``holder`` (this replica's unique name) under
    leases of ``lease_seconds`` in ``store``. Not thread-safe: one thread ticks."""

    def __init__(
        self,
        store: Store,
        holder: str,
        jobs: Sequence[Job],
        *,
        lease_seconds: float,
        clock: Callable[[], float] = time.time,
    ):
        if lease_seconds <= 0:
            raise errors.InvalidArgument("a job lease must last some time")
        self.store = store
        self.holder = holder
        self.jobs = list(jobs)
        self.lease_seconds = lease_seconds
        self.clock = clock
        # The leases this replica holds, and when each job it holds runs next.
        self.held: dict[str, JobLease] = {}
        self._next_run: dict[str, float] = {}
        # Runs made, by job (for telemetry and tests).
        self.runs: dict[str, int] = {job.name: 0 for job in self.jobs}

    def tick(self) -> float:
        """Take, keep or lose each job's lease, and run the jobs held and due. Returns
        how long to wait before the next tick."""
        for job in self.jobs:
            if self._hold(job):
                now = self.clock()
                if now >= self._next_run[job.name]:
                    self._run(job, now)
        return self._wait()

    def _hold(self, job: Job) -> bool:
        """Whether this replica holds ``job``'s lease, renewing or taking it when due."""
        now = self.clock()
        lease = self.held.get(job.name)
        if lease is not None and now < self._renew_time(lease):
            return True
        try:
            if lease is None:
                taken = self.store.acquire_job(
                    job.name, holder=self.holder, now=now, ttl_seconds=self.lease_seconds
                )
                if taken is None:
                    return False
                log.info("running job %s here (lease epoch %d)", job.name, taken.epoch)
                self.held[job.name] = taken
                self._next_run[job.name] = now
            else:
                self.held[job.name] = self.store.renew_job(
                    lease, now=now, ttl_seconds=self.lease_seconds
                )
            return True
        except errors.StoreConflict as exc:
            log.warning("job %s moved to another server: %s", job.name, exc)
            self._drop(job.name)
            return False
        except errors.Error as exc:
            # The database is away: keep the job while the lease still runs, since
            # nobody else can take it before then.
            log.warning("job %s: could not renew its lease: %s", job.name, exc)
            if lease is not None and now < lease.expires_time:
                return True
            self._drop(job.name)
            return False

    def _run(self, job: Job, now: float) -> None:
        self._next_run[job.name] = now + job.period_seconds
        try:
            job.run(now)
            self.runs[job.name] += 1
        except Exception:  # the scheduler must outlive any one failure
            log.exception("job %s failed", job.name)

    def _drop(self, name: str) -> None:
        self.held.pop(name, None)
        self._next_run.pop(name, None)

    def _renew_time(self, lease: JobLease) -> float:
        return lease.expires_time - self.lease_seconds * (1 - RENEW_FRACTION)

    def _wait(self) -> float:
        """Until the next renewal or run of a job held, or a fresh try for a job
        another replica holds (a third of a lease: its holder may be dead)."""
        now = self.clock()
        due = [now + self.lease_seconds * RENEW_FRACTION]
        for name, lease in self.held.items():
            due += [self._renew_time(lease), self._next_run[name]]
        return max(0.0, min(due) - now)

    def release(self) -> None:
        """Give up every lease held (the server is stopping): another replica takes
        the jobs over at once instead of after the expiry."""
        for name, lease in list(self.held.items()):
            try:
                self.store.release_job(lease)
            except errors.Error as exc:
                log.warning("job %s: could not give up its lease: %s", name, exc)
            self._drop(name)


class JobScheduler:
    """Ticks ``jobs`` on a thread of its own until :meth:`stop`, which gives the
    leases up."""

    def __init__(self, jobs: SingletonJobs):
        self.jobs = jobs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vmatlas-jobs", daemon=True)

    def start(self) -> JobScheduler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.jobs.tick()
            except Exception:
                log.exception("singleton jobs failed")
                wait = self.jobs.lease_seconds * RENEW_FRACTION
            self._stop.wait(wait)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.jobs.release()
