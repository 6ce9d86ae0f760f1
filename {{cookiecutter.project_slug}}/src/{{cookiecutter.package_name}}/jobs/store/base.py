"""The job-store protocol: every state transition of a job is one verb-named operation.

Nothing outside a store knows how jobs are kept, so stores are swappable and one contract test
suite (tests/test_store_contract.py) holds every store to the same behaviour.

Queues in claims: `fetch_jobs` and `next_run_at` take the queues this process serves as a
mapping from queue name to how many jobs it may claim from it now (0: none, it is full). The
key `default` stands for the default queue and every queue the mapping does not name; a
queue absent from the mapping (when `default` is absent too) is not served at all.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

from ..model import Job, JobStatus, NewJob


class StoreUnavailable(Exception):
    """The store cannot be reached or cannot do its work right now."""


class StoreFull(StoreUnavailable):
    """The store's disk is full: nothing more can be written until space is freed."""


class JobConflict(Exception):
    """The job is not in a state the operation applies to; the message says why, for clients."""


class Enqueued(NamedTuple):
    """What became of one submitted job."""

    job: Job
    # False when a queued or running job had the same unique_key: `job` is that one.
    created: bool


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs a listing shows; None matches any."""

    status: JobStatus | None = None
    queue: str | None = None
    task: str | None = None


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """One queue as the store knows it: its jobs by status, and whether it is paused."""

    name: str
    counts: dict[JobStatus, int]
    paused: bool


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """A schedule as the store keeps it for every instance."""

    name: str
    paused: bool
    # When it was first seen or last resumed: no tick before this is ever caught up.
    active_since: datetime
    last_tick: datetime | None
    last_job_id: int | None


@dataclass(frozen=True, slots=True)
class MinuteOutcomes:
    """The attempts that ended in one minute, on every instance."""

    minute: datetime  # its start, UTC
    completed: int  # the handler returned
    failed: int  # the handler raised or timed out, or its worker was lost


# How far back recent_outcomes can look: the dashboard's chart shows the last hour.
OUTCOMES_KEPT = timedelta(hours=1, minutes=1)


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


# A tick stays recorded this long after a later one, so that an instance whose clock lags
# behind by less than this finds it taken instead of enqueuing it again.
TICKS_KEPT = timedelta(hours=1)


class JobStore(Protocol):
    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations); safe on an existing store."""

    async def close(self) -> None:
        """Finish pending writes and release connections."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    def subscribe(self, on_new_jobs: Callable[[], None]) -> None:
        """Call `on_new_jobs` (from the event loop) whenever jobs may have become due:
        inserted, retried, or their queue resumed."""

    def subscribe_cancellations(self, on_cancel: Callable[[int], None]) -> None:
        """Call `on_cancel(job_id)` (from the event loop) when a running job's cancel is asked
        for, as promptly as the store can tell any instance; `cancel_requested_among` is the
        backstop for what this misses."""

    async def insert_job(self, new_job: NewJob) -> Enqueued:
        """Insert one queued job, durably, unless its unique_key is taken (see Enqueued)."""

    async def insert_all_jobs(self, new_jobs: Sequence[NewJob]) -> list[Enqueued]:
        """Insert many jobs in one transaction, all or none, in order. A job whose
        unique_key a queued or running job holds, or an earlier job of the same call,
        is not inserted: its Enqueued names that job."""

    async def fetch_jobs(self, limits: Mapping[str, int]) -> list[Job]:
        """Claim due jobs, queued -> running: up to `limits[q]` from each queue q (see the
        module's docstring), none from paused queues, each queue's in claim order: run_at
        plus priority x the aging interval, then id."""

    async def complete_job(self, job: Job, result: Any) -> None:
        """Record a successful attempt: running -> done with its result (cancelled instead
        when a cancel was requested meanwhile)."""

    async def error_job(self, job: Job, error: str, retry_at: datetime | None) -> None:
        """Record a failed attempt: back to queued at `retry_at`, or failed when it is None
        (cancelled instead, either way, when a cancel was requested meanwhile)."""

    async def release_jobs(self, jobs: Sequence[Job]) -> None:
        """Return running jobs to queued without spending their attempt (graceful shutdown);
        one whose cancel was requested ends cancelled instead."""

    async def rescue_orphaned_jobs(self) -> int:
        """Requeue (or fail, when out of attempts) jobs whose worker died; return how many."""

    async def cancel_job(self, job_id: int) -> Job | None:
        """Cancel a job: queued -> cancelled at once; running -> cancel_requested, told to
        the `subscribe_cancellations` listeners of every instance. Returns the job as it is
        now, None if there is none; JobConflict if it is done, failed or cancelled."""

    async def cancel_requested_among(self, job_ids: Sequence[int]) -> list[int]:
        """Which of these jobs are running with a cancel requested."""

    async def retry_job(self, job_id: int) -> Job | None:
        """Failed or cancelled -> queued, due now, its errors kept; max_attempts raised by one
        when they are spent. None if there is no such job; JobConflict if it is in another
        status, or if a queued or running job holds its unique_key."""

    async def cancel_jobs(self, where: JobFilter, inserted_by: datetime, limit: int) -> list[Job]:
        """Cancel, as cancel_job does each, up to `limit` of the queued jobs and the running
        ones not yet asked to stop that `where` matches and that were inserted by
        `inserted_by`; return them as they are now. Called until it returns none: every
        job it returns has left what it selects."""

    async def retry_jobs(self, where: JobFilter, finished_by: datetime, limit: int) -> list[Job]:
        """Retry, as retry_job does each, up to `limit` of the failed and cancelled jobs that
        `where` matches and that finished by `finished_by`, leaving out any whose unique_key
        a queued or running job holds; return them as they are now. Called until it returns
        none: a retried job that ends again later is not selected again."""

    async def count_jobs_ahead(self, job: Job, limit: int) -> int:
        """How many due jobs of `job`'s queue come before it in claim order (see
        fetch_jobs), counting up to `limit`."""

    async def next_run_at(self, limits: Mapping[str, int]) -> datetime | None:
        """The earliest run_at among queued jobs that `fetch_jobs(limits)` could claim once
        due (queues with a limit above 0, not paused), or None when there are none."""

    async def delete_finished_jobs(
        self, status: JobStatus, finished_before: datetime, limit: int
    ) -> int:
        """Delete up to `limit` jobs in `status` (done, failed or cancelled) that finished
        before `finished_before`; return how many. The counts by status drop with them. 0
        when another instance is deleting now: one instance at a time does this work."""

    async def get_job(self, job_id: int) -> Job | None:
        """One job by id."""

    async def list_jobs(self, where: JobFilter, limit: int, offset: int) -> list[Job]:
        """Jobs newest first (inserted_at, then id, descending) matching `where`."""

    async def count_jobs(self) -> dict[JobStatus, int]:
        """How many jobs there are in each status."""

    async def recent_outcomes(self, since: datetime) -> list[MinuteOutcomes]:
        """The attempts that ended per minute, from the minute `since` falls in (at most
        OUTCOMES_KEPT ago), oldest first; minutes when none ended are left out. Each
        instance writes what it counted every second or so, so the last seconds may be
        missing, and a crash loses them."""

    async def list_queues(self) -> list[QueueCounts]:
        """Every queue that has jobs or was ever paused or resumed, by name."""

    async def pause_queue(self, name: str) -> None:
        """Stop claims from the queue on every instance, until resumed; kept across restarts.
        Its jobs are still accepted."""

    async def resume_queue(self, name: str) -> None:
        """Let claims from the queue start again, on every instance."""

    async def add_schedules(self, names: Sequence[str]) -> None:
        """Keep these schedules, active from now; one already kept stays as it is."""

    async def enqueue_tick(self, name: str, tick: datetime, new_job: NewJob) -> Job | None:
        """Insert `new_job` as schedule `name`'s job for `tick` and return it; None when
        that tick already has its job, inserted by any instance, or the schedule is paused.
        The tick and its job are recorded in one transaction."""

    async def list_schedules(self) -> list[ScheduleState]:
        """Every schedule kept, by name."""

    async def pause_schedule(self, name: str) -> None:
        """Enqueue none of the schedule's ticks, on any instance, until it is resumed; kept
        across restarts."""

    async def resume_schedule(self, name: str) -> None:
        """Enqueue the schedule's ticks again from now on; the ones it missed while paused
        are not caught up."""
