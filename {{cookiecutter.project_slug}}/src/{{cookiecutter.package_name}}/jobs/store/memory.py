"""A job store that lives in this process: fastest, and everything is lost on restart."""

import heapq
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from ..clock import Clock
from ..model import Job, JobStatus, NewJob


class MemoryJobStore:
    """Jobs in a dict, due jobs in a heap ordered by (run_at, id)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._jobs: dict[int, Job] = {}
        # Entries can go stale when a job leaves the queue; claiming skips them.
        self._due: list[tuple[datetime, int]] = []
        self._counts = dict.fromkeys(JobStatus, 0)
        self._listeners: list[Callable[[], None]] = []
        self._last_inserted_at = datetime.min.replace(tzinfo=UTC)

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    def subscribe(self, on_new_jobs: Callable[[], None]) -> None:
        self._listeners.append(on_new_jobs)

    async def insert_job(self, new_job: NewJob) -> Job:
        return (await self.insert_all_jobs([new_job]))[0]

    async def insert_all_jobs(self, new_jobs: Sequence[NewJob]) -> list[Job]:
        # Never older than the last insert, even if the wall clock steps back: listing by id
        # is then listing by insertion time.
        now = max(self._clock.now(), self._last_inserted_at)
        self._last_inserted_at = now
        inserted = []
        for new_job in new_jobs:
            job_id = len(self._jobs) + 1
            job = new_job.inserted(job_id, now)
            self._jobs[job_id] = job
            self._enqueue(job)
            self._counts[JobStatus.QUEUED] += 1
            inserted.append(job)
        for notify in self._listeners:
            notify()
        return [job.model_copy() for job in inserted]

    async def fetch_jobs(self, limit: int) -> list[Job]:
        now = self._clock.now()
        claimed: list[Job] = []
        while self._due and len(claimed) < limit and self._due[0][0] <= now:
            run_at, job_id = heapq.heappop(self._due)
            job = self._jobs[job_id]
            if job.status is not JobStatus.QUEUED or job.run_at != run_at:
                continue
            self._move(job, JobStatus.RUNNING)
            job.attempt += 1
            job.started_at = now
            claimed.append(job.model_copy())
        return claimed

    async def complete_job(self, job: Job, result: Any) -> None:
        stored = self._running(job)
        self._move(stored, JobStatus.DONE)
        stored.result = result
        stored.finished_at = self._clock.now()

    async def error_job(self, job: Job, error: str, retry_at: datetime | None) -> None:
        stored = self._running(job)
        stored.errors = [*stored.errors, error]
        if retry_at is None:
            self._move(stored, JobStatus.FAILED)
            stored.finished_at = self._clock.now()
        else:
            self._move(stored, JobStatus.QUEUED)
            stored.run_at = retry_at
            self._enqueue(stored)

    async def release_jobs(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            stored = self._running(job)
            self._move(stored, JobStatus.QUEUED)
            stored.attempt -= 1
            if stored.attempt == 0:
                stored.started_at = None
            self._enqueue(stored)

    async def rescue_orphaned_jobs(self) -> int:
        # Nothing outlives this process, so no job can be orphaned.
        return 0

    async def next_run_at(self) -> datetime | None:
        while self._due:
            run_at, job_id = self._due[0]
            job = self._jobs[job_id]
            if job.status is JobStatus.QUEUED and job.run_at == run_at:
                return run_at
            heapq.heappop(self._due)
        return None

    async def get_job(self, job_id: int) -> Job | None:
        job = self._jobs.get(job_id)
        return job and job.model_copy()

    async def list_jobs(self, status: JobStatus | None, limit: int, offset: int) -> list[Job]:
        # Ids grow with insertion time here, so newest first is highest id first.
        if status is None:
            newest = len(self._jobs) - offset
            return [
                self._jobs[job_id].model_copy()
                for job_id in range(newest, newest - limit, -1)
                if job_id > 0
            ]
        page = []
        skipped = 0
        for job_id in range(len(self._jobs), 0, -1):
            job = self._jobs[job_id]
            if status is not None and job.status is not status:
                continue
            if skipped < offset:
                skipped += 1
                continue
            page.append(job.model_copy())
            if len(page) == limit:
                break
        return page

    async def count_jobs(self) -> dict[JobStatus, int]:
        return dict(self._counts)

    def _running(self, job: Job) -> Job:
        stored = self._jobs[job.id]
        if stored.status is not JobStatus.RUNNING:
            raise ValueError(f"job {job.id} is {stored.status}, not running")
        return stored

    def _enqueue(self, job: Job) -> None:
        heapq.heappush(self._due, (job.run_at, job.id))

    def _move(self, job: Job, status: JobStatus) -> None:
        self._counts[job.status] -= 1
        self._counts[status] += 1
        job.status = status
