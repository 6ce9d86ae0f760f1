"""A job store that lives in this process: fastest, and everything is lost on restart."""

import dataclasses
import heapq
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ..clock import Clock
from ..model import DEFAULT_QUEUE, FINISHED, UNIQUE_WHILE, Job, JobStatus, NewJob
from .base import (
    OUTCOMES_KEPT,
    TICKS_KEPT,
    Enqueued,
    JobConflict,
    JobFilter,
    MinuteOutcomes,
    QueueCounts,
    ScheduleState,
)
from .outcomes import COMPLETED, FAILED, OutcomeTally

# A status set this large a share of all jobs is walked newest first rather than sorted.
DENSE_SHARE = 8

# A queue's due jobs by (claim_at, id, run_at): the first is the next to claim.
ReadyHeap = list[tuple[datetime, int, datetime]]


class MemoryJobStore:
    """Jobs in a dict; each queue's queued jobs in heaps (see __init__)."""

    def __init__(self, clock: Clock, *, priority_aging_seconds: float = 300.0) -> None:
        self._clock = clock
        self._aging = timedelta(seconds=priority_aging_seconds)
        self._jobs: dict[int, Job] = {}
        # Per queue, queued jobs in two heaps: not yet due by (run_at, id), and due by
        # (claim_at, id, run_at). Entries go stale when a job leaves the queue or is
        # requeued; claims skip them.
        self._scheduled: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
        self._ready: dict[str, ReadyHeap] = defaultdict(list)
        # Ids (as dict keys, for their order) per status in the order jobs entered it: a
        # finished status's oldest first, for retention. Per queue and per task ascending,
        # for listings by either.
        self._by_status: dict[JobStatus, dict[int, None]] = {status: {} for status in JobStatus}
        self._by_queue: dict[str, dict[int, None]] = defaultdict(dict)
        self._by_task: dict[str, dict[int, None]] = defaultdict(dict)
        self._queue_counts: dict[str, dict[JobStatus, int]] = defaultdict(
            lambda: dict.fromkeys(JobStatus, 0)
        )
        self._unique: dict[str, int] = {}
        self._paused: dict[str, bool] = {}
        self._schedules: dict[str, ScheduleState] = {}
        # Per schedule, the job of each tick recorded, oldest first.
        self._ticks: dict[str, dict[datetime, int]] = defaultdict(dict)
        self._listeners: list[Callable[[], None]] = []
        self._cancel_listeners: list[Callable[[int], None]] = []
        self._outcomes = OutcomeTally()
        self._last_inserted_at = datetime.min.replace(tzinfo=UTC)
        # Ids are never given twice, even once their jobs are deleted.
        self._last_id = 0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    def subscribe(self, on_new_jobs: Callable[[], None]) -> None:
        self._listeners.append(on_new_jobs)

    def subscribe_cancellations(self, on_cancel: Callable[[int], None]) -> None:
        self._cancel_listeners.append(on_cancel)

    async def insert_job(self, new_job: NewJob) -> Enqueued:
        return (await self.insert_all_jobs([new_job]))[0]

    async def insert_all_jobs(self, new_jobs: Sequence[NewJob]) -> list[Enqueued]:
        # Never older than the last insert, even if the wall clock steps back: listing by id
        # is then listing by insertion time.
        now = max(self._clock.now(), self._last_inserted_at)
        self._last_inserted_at = now
        enqueued = []
        for new_job in new_jobs:
            holder = self._unique.get(new_job.unique_key) if new_job.unique_key else None
            if holder is not None:
                enqueued.append(Enqueued(self._jobs[holder].model_copy(), created=False))
                continue
            self._last_id += 1
            job_id = self._last_id
            job = new_job.inserted(job_id, now)
            self._jobs[job_id] = job
            self._by_status[JobStatus.QUEUED][job_id] = None
            self._queue_counts[job.queue][JobStatus.QUEUED] += 1
            self._by_queue[job.queue][job_id] = None
            if job.task_name is not None:
                self._by_task[job.task_name][job_id] = None
            if job.unique_key is not None:
                self._unique[job.unique_key] = job_id
            self._enqueue(job, now)
            enqueued.append(Enqueued(job.model_copy(), created=True))
        self._wake()
        return enqueued

    async def fetch_jobs(self, limits: Mapping[str, int]) -> list[Job]:
        now = self._clock.now()
        claimed: list[Job] = []
        for queues, limit in self._claimable(limits):
            heaps = [self._ready_heap(queue, now) for queue in queues]
            for _ in range(limit):
                heap = self._first_due(heaps)
                if heap is None:
                    break
                job = self._jobs[heapq.heappop(heap)[1]]
                self._move(job, JobStatus.RUNNING)
                job.attempt += 1
                job.started_at = now
                claimed.append(job.model_copy())
        return claimed

    async def complete_job(self, job: Job, result: Any) -> None:
        stored = self._running(job)
        stored.result = result
        now = self._clock.now()
        self._finish(
            stored, JobStatus.CANCELLED if stored.cancel_requested else JobStatus.DONE, now
        )
        self._outcomes.add(now, COMPLETED)

    async def error_job(self, job: Job, error: str, retry_at: datetime | None) -> None:
        stored = self._running(job)
        stored.errors = [*stored.errors, error]
        now = self._clock.now()
        self._outcomes.add(now, FAILED)
        if stored.cancel_requested:
            self._finish(stored, JobStatus.CANCELLED, now)
        elif retry_at is None:
            self._finish(stored, JobStatus.FAILED, now)
        else:
            self._move(stored, JobStatus.QUEUED)
            stored.run_at = retry_at
            self._enqueue(stored, now)

    async def release_jobs(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            stored = self._running(job)
            stored.attempt -= 1
            if stored.attempt == 0:
                stored.started_at = None
            if stored.cancel_requested:
                self._finish(stored, JobStatus.CANCELLED, self._clock.now())
            else:
                self._move(stored, JobStatus.QUEUED)
                self._enqueue(stored)

    async def rescue_orphaned_jobs(self) -> int:
        # Nothing outlives this process, so no job can be orphaned.
        return 0

    async def cancel_job(self, job_id: int) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.status in FINISHED:
            raise JobConflict(f"Job {job_id} is {job.status}")
        self._cancel(job)
        return job.model_copy()

    def _cancel(self, job: Job) -> None:
        """Cancel a queued job, or ask a running one to stop."""
        if job.status is JobStatus.QUEUED:
            self._finish(job, JobStatus.CANCELLED, self._clock.now())
        elif not job.cancel_requested:
            job.cancel_requested = True
            for on_cancel in self._cancel_listeners:
                on_cancel(job.id)

    async def cancel_jobs(self, where: JobFilter, inserted_by: datetime, limit: int) -> list[Job]:
        def cancellable(job: Job) -> bool:
            return job.inserted_at <= inserted_by and not job.cancel_requested

        chosen = self._select(where, [JobStatus.QUEUED, JobStatus.RUNNING], limit, cancellable)
        for job in chosen:
            self._cancel(job)
        return [job.model_copy() for job in chosen]

    async def cancel_requested_among(self, job_ids: Sequence[int]) -> list[int]:
        return [
            job_id
            for job_id in job_ids
            if (job := self._jobs.get(job_id)) is not None
            and job.status is JobStatus.RUNNING
            and job.cancel_requested
        ]

    async def retry_job(self, job_id: int) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise JobConflict(f"Job {job_id} is {job.status}")
        if job.unique_key is not None and (holder := self._unique.get(job.unique_key)):
            raise JobConflict(
                f"Job {job_id} has unique_key {job.unique_key!r}, which job {holder} holds"
            )
        self._retry(job)
        self._wake()
        return job.model_copy()

    def _retry(self, job: Job) -> None:
        self._move(job, JobStatus.QUEUED)
        job.run_at = self._clock.now()
        job.finished_at = None
        job.cancel_requested = False
        job.max_attempts = max(job.max_attempts, job.attempt + 1)
        self._enqueue(job)

    async def retry_jobs(self, where: JobFilter, finished_by: datetime, limit: int) -> list[Job]:
        def retryable(job: Job) -> bool:
            key_held = job.unique_key is not None and job.unique_key in self._unique
            finished_at = job.finished_at
            return not key_held and finished_at is not None and finished_at <= finished_by

        chosen = []
        for job in self._select(where, [JobStatus.FAILED, JobStatus.CANCELLED], limit, retryable):
            # An earlier job of this round may have taken the same unique_key.
            if retryable(job):
                self._retry(job)
                chosen.append(job.model_copy())
        if chosen:
            self._wake()
        return chosen

    def _select(
        self,
        where: JobFilter,
        statuses: list[JobStatus],
        limit: int,
        chosen: Callable[[Job], bool],
    ) -> list[Job]:
        """Up to `limit` jobs in `statuses` that `where` matches and `chosen` accepts, the
        longest in their status first: the jobs a bulk action changed have left it, so the
        next round starts where this one stopped."""
        selected: list[Job] = []
        for status in statuses:
            if where.status not in (None, status):
                continue
            for job_id in self._by_status[status]:
                job = self._jobs[job_id]
                if self._matches(job, where) and chosen(job):
                    selected.append(job)
                    if len(selected) == limit:
                        return selected
        return selected

    async def count_jobs_ahead(self, job: Job, limit: int) -> int:
        # The ready heap is not sorted, but every entry ahead of the job's has its parent
        # ahead too: a walk from the top that stops at entries behind it sees only those.
        heap = self._ready_heap(job.queue, self._clock.now())
        place = (self._claim_at(job), job.id)
        ahead, unvisited = 0, [0]
        while unvisited and ahead < limit:
            index = unvisited.pop()
            if index >= len(heap) or heap[index][:2] >= place:
                continue
            _, job_id, run_at = heap[index]
            ahead += self._is_current(job_id, run_at)
            unvisited += (2 * index + 1, 2 * index + 2)
        return ahead

    async def next_run_at(self, limits: Mapping[str, int]) -> datetime | None:
        now = self._clock.now()
        run_ats: list[datetime] = []
        for queues, _ in self._claimable(limits):
            for queue in queues:
                # Due jobs wait in claim order, not run_at order: look at them all (after a
                # claim round they are few, or the queue is full and not asked about).
                ready = self._ready_heap(queue, now)
                run_ats += (e[2] for e in ready if self._is_current(e[1], e[2]))
                scheduled = self._scheduled[queue]
                while scheduled and not self._is_current(scheduled[0][1], scheduled[0][0]):
                    heapq.heappop(scheduled)
                if scheduled:
                    run_ats.append(scheduled[0][0])
        return min(run_ats, default=None)

    async def delete_finished_jobs(
        self, status: JobStatus, finished_before: datetime, limit: int
    ) -> int:
        doomed: list[int] = []
        # Oldest first: the first job that finished too recently ends the walk, as every job
        # after it finished later (unless the wall clock stepped back, which only delays).
        for job_id in self._by_status[status]:
            finished_at = self._jobs[job_id].finished_at
            if len(doomed) == limit or finished_at is None or finished_at >= finished_before:
                break
            doomed.append(job_id)
        for job_id in doomed:
            job = self._jobs.pop(job_id)
            del self._by_status[status][job_id]
            self._queue_counts[job.queue][status] -= 1
            del self._by_queue[job.queue][job_id]
            if job.task_name is not None:
                del self._by_task[job.task_name][job_id]
        return len(doomed)

    async def get_job(self, job_id: int) -> Job | None:
        job = self._jobs.get(job_id)
        return job and job.model_copy()

    async def list_jobs(self, where: JobFilter, limit: int, offset: int) -> list[Job]:
        page = []
        matching = (
            job
            for job_id in self._newest_first(where)
            if self._matches(job := self._jobs[job_id], where)
        )
        for index, job in enumerate(matching):
            if index >= offset:
                page.append(job.model_copy())
                if len(page) == limit:
                    break
        return page

    async def recent_outcomes(self, since: datetime) -> list[MinuteOutcomes]:
        kept_from = self._clock.now() - OUTCOMES_KEPT
        self._outcomes.forget_before(kept_from)
        return self._outcomes.since(max(since, kept_from))

    async def count_jobs(self) -> dict[JobStatus, int]:
        return {status: len(ids) for status, ids in self._by_status.items()}

    async def list_queues(self) -> list[QueueCounts]:
        # A queue whose jobs have all been deleted is no longer listed, unless paused or resumed.
        with_jobs = {name for name, counts in self._queue_counts.items() if any(counts.values())}
        return [
            QueueCounts(name, dict(self._queue_counts[name]), self._paused.get(name, False))
            for name in sorted(with_jobs | self._paused.keys())
        ]

    async def pause_queue(self, name: str) -> None:
        self._paused[name] = True

    async def resume_queue(self, name: str) -> None:
        self._paused[name] = False
        self._wake()

    async def add_schedules(self, names: Sequence[str]) -> None:
        for name in names:
            self._schedule(name)

    async def enqueue_tick(self, name: str, tick: datetime, new_job: NewJob) -> Job | None:
        schedule, ticks = self._schedule(name), self._ticks[name]
        if schedule.paused or tick in ticks:
            return None
        ((job, _),) = await self.insert_all_jobs([new_job])
        ticks[tick] = job.id
        while next(iter(ticks)) < tick - TICKS_KEPT:
            del ticks[next(iter(ticks))]
        if schedule.last_tick is None or tick > schedule.last_tick:
            self._schedules[name] = dataclasses.replace(
                schedule, last_tick=tick, last_job_id=job.id
            )
        return job

    async def list_schedules(self) -> list[ScheduleState]:
        return [self._schedules[name] for name in sorted(self._schedules)]

    async def pause_schedule(self, name: str) -> None:
        self._schedules[name] = dataclasses.replace(self._schedule(name), paused=True)

    async def resume_schedule(self, name: str) -> None:
        self._schedules[name] = dataclasses.replace(
            self._schedule(name), paused=False, active_since=self._clock.now()
        )

    def _schedule(self, name: str) -> ScheduleState:
        """The schedule `name`, kept from now if it was not."""
        if name not in self._schedules:
            self._schedules[name] = ScheduleState(name, False, self._clock.now(), None, None)
        return self._schedules[name]

    def _claimable(self, limits: Mapping[str, int]) -> Iterator[tuple[list[str], int]]:
        """For each served queue with room: the queues it draws from, and how many."""
        known = {*self._ready, *self._scheduled}
        for name, limit in limits.items():
            if limit <= 0:
                continue
            if name == DEFAULT_QUEUE:
                queues = [q for q in known if q == DEFAULT_QUEUE or q not in limits]
            else:
                queues = [name] if name in known else []
            yield [q for q in queues if not self._paused.get(q, False)], limit

    def _first_due(self, heaps: list[ReadyHeap]) -> ReadyHeap | None:
        """The ready heap whose first job is the next to claim, stale entries dropped; None
        when all are empty."""
        best = None
        for heap in heaps:
            while heap and not self._is_current(heap[0][1], heap[0][2]):
                heapq.heappop(heap)
            if heap and (best is None or heap[0] < best[0]):
                best = heap
        return best

    def _ready_heap(self, queue: str, now: datetime) -> ReadyHeap:
        """The queue's ready heap, once its jobs that have become due are moved into it from
        its scheduled heap."""
        scheduled, ready = self._scheduled[queue], self._ready[queue]
        while scheduled and scheduled[0][0] <= now:
            run_at, job_id = heapq.heappop(scheduled)
            if self._is_current(job_id, run_at):
                heapq.heappush(ready, (self._claim_at(self._jobs[job_id]), job_id, run_at))
        return ready

    def _is_current(self, job_id: int, run_at: datetime) -> bool:
        """Whether a heap entry still stands for a queued job (jobs move on, entries stay)."""
        job = self._jobs.get(job_id)
        return job is not None and job.status is JobStatus.QUEUED and job.run_at == run_at

    def _newest_first(self, where: JobFilter) -> Iterable[int]:
        """Ids to look through for `where`, newest first: the shortest list that has them."""
        total = len(self._jobs)
        lists: list[dict[int, Any]] = [self._jobs]
        if where.queue is not None:
            lists.append(self._by_queue.get(where.queue, {}))
        if where.task is not None:
            lists.append(self._by_task.get(where.task, {}))
        shortest = min(lists, key=len)
        if where.status is not None:
            in_status = self._by_status[where.status]
            if len(in_status) < len(shortest) and len(in_status) * DENSE_SHARE < total:
                return sorted(in_status, reverse=True)
        return reversed(shortest.keys())

    @staticmethod
    def _matches(job: Job, where: JobFilter) -> bool:
        return (
            (where.status is None or job.status is where.status)
            and (where.queue is None or job.queue == where.queue)
            and (where.task is None or job.task_name == where.task)
        )

    def _running(self, job: Job) -> Job:
        stored = self._jobs[job.id]
        if stored.status is not JobStatus.RUNNING:
            raise ValueError(f"job {job.id} is {stored.status}, not running")
        return stored

    def _claim_at(self, job: Job) -> datetime:
        return job.run_at + job.priority * self._aging

    def _enqueue(self, job: Job, now: datetime | None = None) -> None:
        if job.run_at <= (now or self._clock.now()):
            heapq.heappush(self._ready[job.queue], (self._claim_at(job), job.id, job.run_at))
        else:
            heapq.heappush(self._scheduled[job.queue], (job.run_at, job.id))

    def _finish(self, job: Job, status: JobStatus, at: datetime) -> None:
        self._move(job, status)
        job.finished_at = at

    def _move(self, job: Job, status: JobStatus) -> None:
        del self._by_status[job.status][job.id]
        self._by_status[status][job.id] = None
        counts = self._queue_counts[job.queue]
        counts[job.status] -= 1
        counts[status] += 1
        job.status = status
        if job.unique_key is not None:
            if status in UNIQUE_WHILE:
                self._unique[job.unique_key] = job.id
            elif self._unique.get(job.unique_key) == job.id:
                del self._unique[job.unique_key]

    def _wake(self) -> None:
        for notify in self._listeners:
            notify()
