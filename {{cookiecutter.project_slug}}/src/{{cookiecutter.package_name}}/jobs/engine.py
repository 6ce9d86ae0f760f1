"""The worker pool: claims due jobs, runs their handlers, records results, retries failures."""

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from datetime import datetime
from typing import Any, TypeVar

from ..events import EventBus, JobCancelled, JobErrored, JobStarted, JobStopped
from .backoff import next_attempt_at
from .clock import Clock
from .codec import EncodeError, dumps
from .model import DEFAULT_QUEUE, Job
from .registry import Task, TaskRegistry
from .store.base import JobStore, StoreUnavailable

T = TypeVar("T")
logger = logging.getLogger(__name__)

RESTART_DELAY_MAX = 30.0
# While the store cannot be reached the dispatcher looks again this often, however long the
# outage: workers start again within this of the store's return.
STORE_PROBE_INTERVAL = 0.5
# An outcome the store could not take is tried again after this, then after twice as long,
# up to STORE_PROBE_INTERVAL.
OUTCOME_RETRY_FIRST = 0.05
# What a job cancelled while its async handler ran records as that attempt's error.
CANCELLED_BY_REQUEST = "cancelled by request"


class Engine:
    """Runs at most `queues[q]` jobs of each queue q at once (the `default` entry also for
    every queue not named); a new job wakes it at once, no polling delay."""

    def __init__(
        self,
        store: JobStore,
        registry: TaskRegistry,
        clock: Clock,
        *,
        queues: Mapping[str, int],
        backoff_base: float,
        backoff_max: float,
        poll_interval: float = 1.0,
        events: EventBus | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._clock = clock
        # Job starts and outcomes go out as events: logs and metrics subscribe to them.
        self._events = events or EventBus()
        self._limits = dict(queues)
        self._backoff = (backoff_base, backoff_max)
        # Even with nothing to wake it, the dispatcher looks at the store this often, so that
        # jobs written where no wake-up reaches this process are found.
        self._poll_interval = poll_interval
        # Every claimed job until its outcome is recorded, for shutdown to wait on or release.
        self._running: dict[int, tuple[Job, asyncio.Task[None]]] = {}
        # Handlers executing right now, by the queue whose limit they count against.
        self._busy = dict.fromkeys(self._limits, 0)
        # Running jobs whose cancel was asked for and whose handler was told.
        self._cancelling: set[int] = set()
        # Running jobs whose handler has not returned yet.
        self._in_handler: set[int] = set()
        self._cancel_watcher: asyncio.Task[None] | None = None
        # Set whenever the dispatcher may have something to do: a new job, a free slot.
        self._attention = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._dispatching = False

    @property
    def is_running(self) -> bool:
        """True while the dispatcher is alive and claiming jobs."""
        return self._dispatching and self._supervisor is not None and not self._supervisor.done()

    @property
    def is_supervised(self) -> bool:
        """True while the dispatcher's supervisor runs: a dispatcher that is not running is
        then being restarted, or waits for the store."""
        return self._supervisor is not None and not self._supervisor.done()

    @property
    def queues(self) -> dict[str, int]:
        """Each queue this process serves and how many of its jobs it runs at once."""
        return dict(self._limits)

    @property
    def pool_size(self) -> int:
        """Jobs this process runs at once, every queue together."""
        return sum(self._limits.values())

    @property
    def busy_workers(self) -> int:
        return sum(self._busy.values())

    def wake(self) -> None:
        """Tell the dispatcher that new jobs may be due."""
        self._attention.set()

    async def start(self) -> None:
        """Requeue what a dead predecessor left running, then start claiming jobs."""
        if rescued := await self._store.rescue_orphaned_jobs():
            logger.warning("Requeued %d jobs left running by a stopped worker", rescued)
        self._store.subscribe(self.wake)
        self._store.subscribe_cancellations(self._cancel_running)
        self._dispatching = True
        self._supervisor = asyncio.create_task(self._supervise(), name="job-dispatcher")
        self._cancel_watcher = asyncio.create_task(self._watch_cancellations())
        served = ", ".join(f"{name}={limit}" for name, limit in self._limits.items())
        logger.info("Worker started (pool size %d; queues %s)", self.pool_size, served)

    async def stop(self, grace: float) -> None:
        """Stop claiming, give running jobs `grace` seconds, then requeue the unfinished ones."""
        # The dispatcher stops at its next wait rather than being cancelled: cancelled in the
        # middle of a claim, it would leave the claimed jobs running with no one to run them.
        self._stopping.set()
        self._attention.set()
        if self._supervisor is not None:
            await self._supervisor
        self._dispatching = False
        if self._cancel_watcher is not None:
            self._cancel_watcher.cancel()
            with suppress(asyncio.CancelledError):
                await self._cancel_watcher
        running = dict(self._running)
        if not running:
            return
        logger.info("Waiting up to %.0fs for %d running jobs", grace, len(running))
        tasks = [task for _, task in running.values()]
        _, unfinished = await asyncio.wait(tasks, timeout=grace) if grace > 0 else ((), tasks)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        released = [job for job, task in running.values() if task in unfinished]
        if released:
            await self._store.release_jobs(released)
            logger.info("Released %d unfinished jobs back to the queue", len(released))

    async def _supervise(self) -> None:
        # A dispatcher that lost the store looks again every STORE_PROBE_INTERVAL, saying so
        # once per outage; one that crashed otherwise is restarted with growing pauses.
        # /health reports either meanwhile.
        delay = 0.1
        while not self._stopping.is_set():
            try:
                await self._dispatch()
                continue  # it returns only once stopping
            except StoreUnavailable as exc:
                if self._dispatching:
                    logger.warning("Job store unavailable (%s); workers wait for it", exc)
                self._dispatching = False
                pause = STORE_PROBE_INTERVAL
            except Exception:
                if self._dispatching:  # it had been working: start the pauses over
                    delay = 0.1
                self._dispatching = False
                logger.exception("Job dispatcher crashed; restarting in %.1fs", delay)
                pause, delay = delay, min(delay * 2, RESTART_DELAY_MAX)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)

    async def _dispatch(self) -> None:
        while not self._stopping.is_set():
            self._attention.clear()
            free = {queue: limit - self._busy[queue] for queue, limit in self._limits.items()}
            timeout: float | None = None
            if any(free.values()):
                claimed = await self._store.fetch_jobs(free)
                self._dispatching = True
                for job in claimed:
                    self._start(job)
                # Every queue that took all it had room for may have more waiting: the next
                # free slot sets _attention. Otherwise, wait no longer than until the next due.
                if len(claimed) < sum(free.values()):
                    left = {q: limit - self._busy[q] for q, limit in self._limits.items()}
                    timeout = await self._seconds_until_next_due(left)
            if timeout is None or timeout > 0:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._attention.wait(), timeout)

    async def _seconds_until_next_due(self, free: Mapping[str, int]) -> float:
        next_run_at = await self._store.next_run_at(free)
        if next_run_at is None:
            return self._poll_interval
        wait = (next_run_at - self._clock.now()).total_seconds()
        return min(max(wait, 0.0), self._poll_interval)

    def _slot(self, job: Job) -> str:
        """The queue whose limit the job counts against."""
        return job.queue if job.queue in self._limits else DEFAULT_QUEUE

    def _start(self, job: Job) -> None:
        slot = self._slot(job)
        task = asyncio.create_task(self._run(job, slot), name=f"job-{job.id}")
        self._running[job.id] = (job, task)
        self._busy[slot] += 1

    def _cancel_running(self, job_id: int) -> None:
        """Tell a running job's handler to stop: an async one is cancelled, a sync one sees
        `job.cancel_requested`. Its outcome is then stored as cancelled."""
        running = self._running.get(job_id)
        if running is None or job_id in self._cancelling:
            return
        job, task = running
        job.cancel_requested = True
        self._cancelling.add(job_id)
        # Only while the handler runs: cancelled later, the task would lose its outcome.
        if job_id in self._in_handler and self._registry.resolve(job).is_async:
            task.cancel(CANCELLED_BY_REQUEST)

    async def _watch_cancellations(self) -> None:
        """Ask the store about running jobs' cancels now and then: a cancel asked through
        another process, or a notice that was lost, still reaches the handler."""
        while True:
            await asyncio.sleep(self._poll_interval)
            unasked = [job_id for job_id in self._running if job_id not in self._cancelling]
            if not unasked:
                continue
            try:
                for job_id in await self._store.cancel_requested_among(unasked):
                    self._cancel_running(job_id)
            except Exception:
                logger.exception("Could not check running jobs for cancel requests")

    async def _run(self, job: Job, slot: str) -> None:
        """Run the job's handler and store its outcome; `slot` is the queue it counts against."""
        task = self._registry.resolve(job)
        self._events.emit(JobStarted(job, task.name, _queue_wait(job)))
        result: Any = None
        error: str | None = None
        started = time.perf_counter()
        try:
            self._in_handler.add(job.id)
            try:
                result = await self._execute(task, job)
                dumps(result)
            except asyncio.CancelledError:
                if job.id not in self._cancelling or self._stopping.is_set():
                    raise
                # Cancelled on request, not by shutdown: carry on and record it.
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                error = CANCELLED_BY_REQUEST
            except EncodeError as exc:
                error = f"result is not JSON-serialisable: {exc}"
            except BaseException as exc:  # a handler must never take its worker down with it
                error = _describe(exc)
            finally:
                self._in_handler.discard(job.id)
                duration = time.perf_counter() - started
                # The slot frees as soon as the handler returns, so that the next claim can
                # share a commit with this job's outcome.
                self._busy[slot] -= 1
                self._attention.set()
            # A job whose cancel was asked for ends cancelled (the store sees to that) with
            # its result or its error, whichever the handler left.
            if error is None:
                await self._store_outcome(job, lambda: self._store.complete_job(job, result))
                if job.cancel_requested:
                    self._events.emit(JobCancelled(job, task.name, duration))
                else:
                    self._events.emit(JobStopped(job, task.name, duration, result))
            elif job.cancel_requested:
                failed = error
                await self._store_outcome(job, lambda: self._store.error_job(job, failed, None))
                self._events.emit(JobCancelled(job, task.name, duration))
            else:
                retry_at = self._retry_at(job)
                failed = error
                await self._store_outcome(job, lambda: self._store.error_job(job, failed, retry_at))
                self._events.emit(JobErrored(job, task.name, duration, failed, retry_at))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Could not record the outcome of job %d", job.id)
        finally:
            del self._running[job.id]
            self._cancelling.discard(job.id)

    async def _execute(self, task: Task, job: Job) -> Any:
        outcome: Awaitable[Any] = task.handler(job) if task.is_async else _run_in_thread(task, job)
        if task.timeout is None:
            return await outcome
        # asyncio.timeout, unlike wait_for, keeps the handler in this task, where _run catches
        # whatever it raises: a SystemExit escaping a task of its own would stop the loop.
        deadline = asyncio.timeout(task.timeout)
        try:
            async with deadline:
                return await outcome
        except TimeoutError:
            if deadline.expired():
                raise TimeoutError(f"task exceeded its timeout of {task.timeout:g}s") from None
            raise

    def _retry_at(self, job: Job) -> datetime | None:
        """When a failed attempt is retried, None if the job has failed for good."""
        base, cap = self._backoff
        return next_attempt_at(self._clock.now(), job.attempt, base, cap, job.max_attempts)

    async def _store_outcome(self, job: Job, write: Callable[[], Awaitable[T]]) -> T:
        """Store a job's outcome, trying again while the store cannot take it.

        A job that ended during an outage (a database restart, a full disk) is recorded as
        it ended once the store is back, rather than left running until its lease expires
        and run a second time. Only shutdown ends the tries: past its grace period it
        cancels them with the job's task, and the job is released or, if the store is still
        away, left to its lease.
        """
        delay = OUTCOME_RETRY_FIRST
        while True:
            try:
                return await write()
            except StoreUnavailable as exc:
                if delay == OUTCOME_RETRY_FIRST:
                    logger.warning(
                        "Could not store the outcome of job %d (%s); trying again", job.id, exc
                    )
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORE_PROBE_INTERVAL)


class _StopIterationInHandler(Exception):
    """Carries a handler's StopIteration, which an asyncio future refuses to hold (PEP 479)."""

    def __init__(self, original: StopIteration) -> None:
        super().__init__(original)
        self.original = original


def _queue_wait(job: Job) -> float:
    """Seconds the job waited between becoming due and starting."""
    if job.started_at is None:
        return 0.0
    return max((job.started_at - job.run_at).total_seconds(), 0.0)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _StopIterationInHandler):
        exc = exc.original
    # NUL characters are shown escaped: not every store can edit JSON text that holds them.
    text = str(exc).replace("\x00", "\\x00")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _run_in_thread(task: Task, job: Job) -> "asyncio.Future[Any]":
    """Run a sync handler in a daemon thread, so one that never returns cannot block exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # cancelled at shutdown or after a timeout
            return
        if error is None:
            future.set_result(result)
        elif isinstance(error, StopIteration):
            future.set_exception(_StopIterationInHandler(error))
        else:
            future.set_exception(error)

    def target() -> None:
        try:
            result, error = task.handler(job), None
        except BaseException as exc:
            result, error = None, exc
        with suppress(RuntimeError):  # the loop is already closed: nobody is waiting
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=f"job-{job.id}", daemon=True).start()
    return future
