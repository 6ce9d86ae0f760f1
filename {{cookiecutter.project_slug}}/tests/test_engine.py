"""The engine against this project's store: running, retrying, limiting, waking, stopping."""

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.events import EventBus
from {{ cookiecutter.package_name }}.jobs.clock import Clock, SystemClock
from {{ cookiecutter.package_name }}.jobs.engine import Engine
from {{ cookiecutter.package_name }}.jobs.model import DEFAULT_QUEUE, Job, JobStatus
from {{ cookiecutter.package_name }}.jobs.registry import TaskRegistry
from {{ cookiecutter.package_name }}.jobs.store import (
    Enqueued,
    JobFilter,
    JobStore,
    NewJob,
    QueueCounts,
    StoreUnavailable,
)

from .conftest import ManualClock, StoreOpener, enqueue, enqueue_all, wait_until

QUEUED, RUNNING, DONE, FAILED, CANCELLED = JobStatus
EngineStarter = Callable[..., Awaitable[Engine]]


@pytest.fixture
async def start_engine(open_store: StoreOpener, clock: ManualClock) -> AsyncIterator[EngineStarter]:
    """`await start_engine(store, registry, **options)`: a started engine, stopped afterwards.

    `pool_size` is the default queue's limit, unless `queues` gives every queue's.

    Backoff defaults to 10 s (capped at 1000 s), so on the manual clock a failed job waits
    for the test to move time on.
    """
    engines: list[Engine] = []

    async def start(
        store: JobStore,
        registry: TaskRegistry,
        *,
        pool_size: int = 2,
        queues: dict[str, int] | None = None,
        backoff_base: float = 10.0,
        backoff_max: float = 1000.0,
        engine_clock: Clock | None = None,
        events: EventBus | None = None,
    ) -> Engine:
        engine = Engine(
            store,
            registry,
            engine_clock or clock,
            queues=queues or {DEFAULT_QUEUE: pool_size},
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            events=events,
        )
        await engine.start()
        engines.append(engine)
        return engine

    # Depending on open_store stops the engines before their stores close.
    yield start
    for engine in engines:
        await asyncio.wait_for(engine.stop(0), timeout=10)


async def job_now(store: JobStore, job: Job) -> Job:
    found = await store.get_job(job.id)
    assert found is not None
    return found


async def wait_for_status(
    store: JobStore, job: Job, *statuses: JobStatus, timeout: float = 10.0
) -> Job:
    """The job once it is in one of `statuses` (default: finished, done or failed)."""
    wanted = statuses or (DONE, FAILED)

    async def reached() -> bool:
        return (await job_now(store, job)).status in wanted

    await wait_until(reached, timeout, f"job {job.id} to be {' or '.join(wanted)}")
    return await job_now(store, job)


async def wait_for_errors(store: JobStore, job: Job, count: int) -> Job:
    """The job once `count` attempts have failed and it is back in the queue or failed."""

    async def recorded() -> bool:
        found = await job_now(store, job)
        return len(found.errors) == count and found.status in (QUEUED, FAILED)

    await wait_until(recorded, message=f"job {job.id} to have {count} errors")
    return await job_now(store, job)


def task_job(task: str, **payload: Any) -> NewJob:
    return NewJob(payload={"task": task, **payload})


def last_attempt(task: str) -> NewJob:
    """A job that fails for good on its first failed attempt."""
    return NewJob(payload={"task": task}, max_attempts=1)


class StoreWrapper:
    """Passes every operation to `inner`; test doubles override the one they change."""

    def __init__(self, inner: JobStore) -> None:
        self.inner = inner

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> None:
        await self.inner.ping()

    def subscribe(self, on_new_jobs: Callable[[], None]) -> None:
        self.inner.subscribe(on_new_jobs)

    def subscribe_cancellations(self, on_cancel: Callable[[int], None]) -> None:
        self.inner.subscribe_cancellations(on_cancel)

    async def insert_job(self, new_job: NewJob) -> Enqueued:
        return await self.inner.insert_job(new_job)

    async def insert_all_jobs(self, new_jobs: Sequence[NewJob]) -> list[Enqueued]:
        return await self.inner.insert_all_jobs(new_jobs)

    async def fetch_jobs(self, limits: Mapping[str, int]) -> list[Job]:
        return await self.inner.fetch_jobs(limits)

    async def complete_job(self, job: Job, result: Any) -> None:
        await self.inner.complete_job(job, result)

    async def error_job(self, job: Job, error: str, retry_at: datetime | None) -> None:
        await self.inner.error_job(job, error, retry_at)

    async def release_jobs(self, jobs: Sequence[Job]) -> None:
        await self.inner.release_jobs(jobs)

    async def rescue_orphaned_jobs(self) -> int:
        return await self.inner.rescue_orphaned_jobs()

    async def cancel_job(self, job_id: int) -> Job | None:
        return await self.inner.cancel_job(job_id)

    async def cancel_requested_among(self, job_ids: Sequence[int]) -> list[int]:
        return await self.inner.cancel_requested_among(job_ids)

    async def retry_job(self, job_id: int) -> Job | None:
        return await self.inner.retry_job(job_id)

    async def next_run_at(self, limits: Mapping[str, int]) -> datetime | None:
        return await self.inner.next_run_at(limits)

    async def get_job(self, job_id: int) -> Job | None:
        return await self.inner.get_job(job_id)

    async def list_jobs(self, where: JobFilter, limit: int, offset: int) -> list[Job]:
        return await self.inner.list_jobs(where, limit, offset)

    async def count_jobs(self) -> dict[JobStatus, int]:
        return await self.inner.count_jobs()

    async def list_queues(self) -> list[QueueCounts]:
        return await self.inner.list_queues()

    async def pause_queue(self, name: str) -> None:
        await self.inner.pause_queue(name)

    async def resume_queue(self, name: str) -> None:
        await self.inner.resume_queue(name)


class FlakyStore(StoreWrapper):
    """A store whose first `failures` claims fail, as when the database is briefly away."""

    def __init__(self, inner: JobStore, failures: int) -> None:
        super().__init__(inner)
        self.failures_left = failures

    async def fetch_jobs(self, limits: Mapping[str, int]) -> list[Job]:
        if self.failures_left > 0:
            self.failures_left -= 1
            raise StoreUnavailable("database is away")
        return await self.inner.fetch_jobs(limits)


class SlowClaimStore(StoreWrapper):
    """A store whose claims take effect at once but are reported only when `answer` is set.

    That is a claim whose transaction commits while its caller is being cancelled.
    """

    def __init__(self, inner: JobStore) -> None:
        super().__init__(inner)
        self.answer = asyncio.Event()
        self.claimed: list[Job] = []

    async def fetch_jobs(self, limits: Mapping[str, int]) -> list[Job]:
        claimed = await self.inner.fetch_jobs(limits)
        if claimed:
            self.claimed.extend(claimed)
            await self.answer.wait()
        return claimed


# --- Running jobs


async def test_a_job_without_a_handler_of_its_own_completes_with_the_default_result(
    store: JobStore, clock: ManualClock, start_engine: EngineStarter
) -> None:
    await start_engine(store, TaskRegistry())

    job = await enqueue(store, NewJob(payload={"task": "process_data", "value": 42}))
    done = await wait_for_status(store, job)

    assert done.status is DONE
    assert done.result == {
        "status": "completed",
        "job_id": job.id,
        "processed_at": done.result["processed_at"],
    }
    processed_at = done.result["processed_at"]
    assert processed_at.endswith("Z")
    assert datetime.fromisoformat(processed_at).utcoffset() == timedelta(0)
    assert (done.attempt, done.errors) == (1, [])
    assert done.started_at == done.finished_at == clock.now()


async def test_sync_and_async_handlers_receive_the_job_and_their_result_is_stored(
    store: JobStore, start_engine: EngineStarter
) -> None:
    registry = TaskRegistry()

    @registry.task("double_sync")
    def double_sync(job: Job) -> dict[str, Any]:
        return {"double": job.payload["value"] * 2, "job_id": job.id, "attempt": job.attempt}

    @registry.task("double_async")
    async def double_async(job: Job) -> list[int]:
        await asyncio.sleep(0)
        return [job.payload["value"] * 2]

    await start_engine(store, registry)
    sync_job, async_job = await enqueue_all(
        store, [task_job("double_sync", value=21), task_job("double_async", value=4)]
    )

    sync_done = await wait_for_status(store, sync_job)
    async_done = await wait_for_status(store, async_job)

    assert sync_done.result == {"double": 42, "job_id": sync_job.id, "attempt": 1}
    assert async_done.result == [8]
    assert sync_done.status is async_done.status is DONE


async def test_a_blocking_sync_handler_does_not_hold_up_async_jobs(
    store: JobStore, start_engine: EngineStarter
) -> None:
    registry = TaskRegistry()
    unblock = threading.Event()

    @registry.task("block")
    def block(_job: Job) -> str:
        unblock.wait(10)
        return "unblocked"

    try:
        await start_engine(store, registry, pool_size=2)
        blocked = await enqueue(store, task_job("block"))
        await wait_for_status(store, blocked, RUNNING)
        quick = await enqueue(store, task_job("anything"))

        assert (await wait_for_status(store, quick)).status is DONE
        assert (await job_now(store, blocked)).status is RUNNING
    finally:
        unblock.set()
    assert (await wait_for_status(store, blocked)).result == "unblocked"


# --- Failures and retries


async def test_a_failing_job_is_retried_with_exponential_backoff_then_fails(
    store: JobStore, clock: ManualClock, start_engine: EngineStarter
) -> None:
    registry = TaskRegistry()

    @registry.task("boom")
    def boom(job: Job) -> None:
        raise RuntimeError(f"boom {job.attempt}")

    engine = await start_engine(store, registry, backoff_base=10.0, backoff_max=1000.0)
    job = await enqueue(store, NewJob(payload={"task": "boom"}, max_attempts=3))

    for attempt, delay in [(1, 10.0), (2, 20.0)]:
        retried = await wait_for_errors(store, job, attempt)
        assert (retried.status, retried.attempt) == (QUEUED, attempt)
        assert retried.finished_at is None
        # Jitter takes up to 10% off the delay, never adds to it.
        earliest = clock.now() + timedelta(seconds=delay * 0.9)
        assert earliest <= retried.run_at <= clock.now() + timedelta(seconds=delay)
        clock.advance(delay)
        engine.wake()

    failed = await wait_for_errors(store, job, 3)
    assert (failed.status, failed.attempt) == (FAILED, 3)
    assert failed.errors == ["RuntimeError: boom 1", "RuntimeError: boom 2", "RuntimeError: boom 3"]
    assert failed.finished_at == clock.now()
    assert failed.result is None


async def test_a_retry_is_not_run_before_its_backoff_has_passed(
    store: JobStore, clock: ManualClock, start_engine: EngineStarter
) -> None:
    registry = TaskRegistry()

    @registry.task("boom")
    async def boom(_job: Job) -> None:
        raise RuntimeError("boom")

    engine = await start_engine(store, registry, backoff_base=10.0)
    job = await enqueue(store, task_job("boom"))
    await wait_for_errors(store, job, 1)

    clock.advance(8.9)  # less than the shortest backoff, 10 s less 10% jitter
    engine.wake()
    marker = await enqueue(store, task_job("marker"))
    await wait_for_status(store, marker)

    assert (await job_now(store, job)).attempt == 1


async def test_a_handler_that_exceeds_its_timeout_fails_the_attempt(
    store: JobStore, start_engine: EngineStarter
) -> None:
    registry = TaskRegistry()
    unblock = threading.Event()

    @registry.task("slow_async", timeout=0.05)
    async def slow_async(_job: Job) -> None:
        await asyncio.Event().wait()

    @registry.task("slow_sync", timeout=0.05)
    def slow_sync(_job: Job) -> None:
        unblock.wait(10)

    try:
        await start_engine(store, registry)
        jobs = await enqueue_all(store, [last_attempt("slow_async"), last_attempt("slow_sync")])
        for job in jobs:
            timed_out = await wait_for_status(store, job)
            assert timed_out.status is FAILED
            assert timed_out.errors == ["TimeoutError: task exceeded its timeout of 0.05s"]
    finally:
        unblock.set()


async def test_a_result_that_is_not_json_serialisable_fails_the_attempt(
    store: JobStore, start_engine: EngineStarter
) -> None:
    registry = TaskRegistry()

    @registry.task("set_result")
    def set_result(_job: Job) -> dict[str, Any]:
        return {"values": {1, 2, 3}}

    await start_engine(store, registry)
    job = await enqueue(store, last_attempt("set_result"))

    failed = await wait_for_status(store, job)
    assert failed.status is FAILED
    assert failed.result is None
    assert len(failed.errors) == 1
    assert failed.errors[0].startswith("result is not JSON-serialisable")


@pytest.mark.parametrize(
    "exception",
    [SystemExit("bye"), KeyboardInterrupt("stop"), RuntimeError("plain")],
    ids=lambda exception: type(exception).__name__,
)
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_handler_raising_any_exception_fails_its_job_and_the_engine_runs_on(
    store: JobStore, start_engine: EngineStarter, exception: BaseException, kind: str
) -> None:
    registry = TaskRegistry()

    @registry.task("raise_sync")
    def raise_sync(_job: Job) -> None:
        raise exception

    @registry.task("raise_async")
    async def raise_async(_job: Job) -> None:
        raise exception

    engine = await start_engine(store, registry)
    job = await enqueue(store, last_attempt(f"raise_{kind}"))

    failed = await wait_for_status(store, job)
    assert failed.status is FAILED
    assert failed.errors == [f"{type(exception).__name__}: {exception}"]

    later = await enqueue(store, task_job("later"))
    assert (await wait_for_status(store, later)).status is DONE
    assert engine.is_running


async def test_a_sync_handler_raising_stop_iteration_fails_its_job(
    store: JobStore, start_engine: EngineStarter
) -> None:
    # `next()` on an empty iterator is an easy way for a handler to raise StopIteration,
    # which an asyncio future refuses to carry.
    registry = TaskRegistry()

    @registry.task("first_match")
    def first_match(_job: Job) -> int:
        return next(n for n in [1, 3, 5] if n % 2 == 0)

    await start_engine(store, registry)
    job = await enqueue(store, last_attempt("first_match"))

    failed = await wait_for_status(store, job, timeout=2)
    assert failed.status is FAILED
    assert failed.errors == ["StopIteration"]


# Run in a child process: an exception that escapes the event loop would end the test run.
ESCAPE_SCRIPT = """
import asyncio
import sys

from {{ cookiecutter.package_name }}.jobs.clock import SystemClock
from {{ cookiecutter.package_name }}.jobs.engine import Engine
from {{ cookiecutter.package_name }}.jobs.registry import TaskRegistry
from {{ cookiecutter.package_name }}.jobs.store import NewJob, make_store
from {{ cookiecutter.package_name }}.settings import load_settings

exception = {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt}[sys.argv[1]]
registry = TaskRegistry()


@registry.task("escape", timeout=5)
async def escape(job):
    raise exception("from a handler")


async def main():
    clock = SystemClock()
    store = make_store(load_settings(), clock)
    await store.open()
    engine = Engine(store, registry, clock, queues={"default": 2}, backoff_base=1, backoff_max=1)
    await engine.start()
    escaping, _ = await store.insert_job(NewJob(payload={"task": "escape"}, max_attempts=1))
    later, _ = await store.insert_job(NewJob(payload={"task": "later"}))
    for _ in range(500):
        jobs = [await store.get_job(job.id) for job in (escaping, later)]
        if all(job.status in ("done", "failed") for job in jobs):
            break
        await asyncio.sleep(0.01)
    print(*(job.status for job in jobs))
    await engine.stop(0)
    await store.close()


asyncio.run(main())
"""


@pytest.mark.parametrize("exception", ["SystemExit", "KeyboardInterrupt"])
def test_a_handler_with_a_timeout_raising_a_base_exception_does_not_stop_the_process(
    service_env: dict[str, str], exception: str
) -> None:
    try:
        finished = subprocess.run(
            [sys.executable, "-c", ESCAPE_SCRIPT, exception],
            env=service_env,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the process hung after the handler raised {exception}: {exc.stderr!r}")

    assert (finished.returncode, finished.stdout.split()) == (0, ["failed", "done"]), (
        finished.stderr
    )


# --- Capacity and wake-ups


async def test_the_engine_never_runs_more_jobs_at_once_than_its_pool_size(
    store: JobStore, start_engine: EngineStarter
) -> None:
    registry = TaskRegistry()
    gate = asyncio.Event()
    started = 0
    running = 0
    most_at_once = 0

    @registry.task("wait_for_gate")
    async def wait_for_gate(_job: Job) -> None:
        nonlocal started, running, most_at_once
        started += 1
        running += 1
        most_at_once = max(most_at_once, running)
        try:
            await gate.wait()
            await asyncio.sleep(0)
        finally:
            running -= 1

    await enqueue_all(store, [task_job("wait_for_gate") for _ in range(10)])
    engine = await start_engine(store, registry, pool_size=3)

    await wait_until(lambda: started == 3, message="three jobs to start")
    assert engine.busy_workers == 3
    counts = await store.count_jobs()
    assert (counts[QUEUED], counts[RUNNING]) == (7, 3)

    gate.set()

    async def all_done() -> bool:
        return (await store.count_jobs()).get(DONE) == 10

    await wait_until(all_done, message="all ten jobs to finish")
    assert started == 10
    assert most_at_once == 3


async def test_a_new_job_wakes_an_idle_engine_at_once(
    open_store: StoreOpener, start_engine: EngineStarter
) -> None:
    wall_clock = SystemClock()
    store = await open_store(wall_clock)
    registry = TaskRegistry()
    started: list[float] = []

    @registry.task("note_start")
    async def note_start(_job: Job) -> None:
        started.append(time.monotonic())

    await start_engine(store, registry, engine_clock=wall_clock)
    # Let the engine find the queue empty and settle into its idle wait. Its fallback poll
    # comes a second later, so only a wake-up can start the job within half a second.
    await asyncio.sleep(0.2)

    submitted = time.monotonic()
    await enqueue(store, task_job("note_start"))
    await wait_until(lambda: bool(started), timeout=2, message="the job to start")

    assert started[0] - submitted < 0.5


async def test_a_scheduled_job_does_not_run_before_its_run_at(
    store: JobStore, clock: ManualClock, start_engine: EngineStarter
) -> None:
    engine = await start_engine(store, TaskRegistry())
    run_at = clock.now() + timedelta(seconds=60)
    scheduled = await enqueue(store, NewJob(payload={"n": 1}, run_at=run_at))

    for seconds in (0, 59.999):
        clock.advance(seconds)
        engine.wake()
        # A job inserted later that did run proves the engine has looked at the queue.
        marker = await enqueue(store, NewJob(payload={"marker": seconds}))
        await wait_for_status(store, marker)
        waiting = await job_now(store, scheduled)
        assert (waiting.status, waiting.attempt) == (QUEUED, 0)

    clock.advance(0.001)
    engine.wake()

    done = await wait_for_status(store, scheduled)
    assert done.status is DONE
    assert done.started_at == run_at


async def test_a_scheduled_job_starts_within_100_ms_of_its_run_at(
    open_store: StoreOpener, start_engine: EngineStarter
) -> None:
    wall_clock = SystemClock()
    store = await open_store(wall_clock)
    await start_engine(store, TaskRegistry(), engine_clock=wall_clock)

    run_at = wall_clock.now() + timedelta(seconds=0.3)
    job = await enqueue(store, NewJob(payload={}, run_at=run_at))

    done = await wait_for_status(store, job, timeout=5)
    assert done.started_at is not None
    assert timedelta(0) <= done.started_at - run_at < timedelta(milliseconds=100)


# --- Stopping and store trouble


async def test_stop_lets_a_short_job_finish_and_releases_a_long_one_unspent(
    store: JobStore, start_engine: EngineStarter
) -> None:
    registry = TaskRegistry()
    short_may_finish = asyncio.Event()
    long_cancelled = asyncio.Event()

    @registry.task("short")
    async def short(_job: Job) -> str:
        await short_may_finish.wait()
        return "finished"

    @registry.task("long")
    async def long(_job: Job) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            long_cancelled.set()
            raise

    engine = await start_engine(store, registry, pool_size=2)
    short_job, long_job = await enqueue_all(store, [task_job("short"), task_job("long")])
    await wait_for_status(store, short_job, RUNNING)
    await wait_for_status(store, long_job, RUNNING)

    stopping = asyncio.create_task(engine.stop(0.5))
    await wait_until(lambda: not engine.is_running, message="the engine to stop claiming")
    after_stop = await enqueue(store, task_job("short"))
    short_may_finish.set()
    await asyncio.wait_for(stopping, timeout=5)

    finished = await job_now(store, short_job)
    assert (finished.status, finished.result) == (DONE, "finished")
    released = await job_now(store, long_job)
    assert (released.status, released.attempt, released.started_at) == (QUEUED, 0, None)
    assert released.errors == []
    assert long_cancelled.is_set()
    untouched = await job_now(store, after_stop)
    assert (untouched.status, untouched.attempt) == (QUEUED, 0)
    assert engine.busy_workers == 0


async def test_stop_releases_a_job_whose_claim_completes_while_stopping(
    store: JobStore, start_engine: EngineStarter
) -> None:
    registry = TaskRegistry()

    @registry.task("hold")
    async def hold(_job: Job) -> None:
        await asyncio.Event().wait()

    slow = SlowClaimStore(store)
    engine = await start_engine(slow, registry)
    job = await enqueue(store, task_job("hold"))
    await wait_until(lambda: bool(slow.claimed), message="the claim to be made")

    stopping = asyncio.create_task(engine.stop(0.2))
    await asyncio.sleep(0)  # stop() runs up to its first wait
    slow.answer.set()
    await asyncio.wait_for(stopping, timeout=5)

    released = await job_now(store, job)
    assert (released.status, released.attempt) == (QUEUED, 0)


async def test_the_engine_reports_not_running_while_the_store_fails_and_recovers(
    store: JobStore, start_engine: EngineStarter
) -> None:
    flaky = FlakyStore(store, failures=2)
    job = await enqueue(store, task_job("anything"))

    engine = await start_engine(flaky, TaskRegistry())
    await wait_until(lambda: not engine.is_running, message="the engine to notice the failure")
    assert flaky.failures_left < 2

    await wait_until(lambda: engine.is_running, timeout=5, message="the engine to recover")
    assert (await wait_for_status(store, job)).status is DONE
    later = await enqueue(store, task_job("anything"))
    assert (await wait_for_status(store, later)).status is DONE


# --- Cancelling running jobs


class DeafStore(StoreWrapper):
    """A store whose cancel notices never reach the engine, as from another process's API."""

    def subscribe_cancellations(self, on_cancel: Callable[[int], None]) -> None:
        pass


async def test_a_cancel_the_engine_was_not_told_of_still_stops_the_job_and_frees_its_slot(
    store: JobStore, start_engine: EngineStarter
) -> None:
    registry = TaskRegistry()

    @registry.task("forever")
    async def forever(_job: Job) -> None:
        await asyncio.Event().wait()

    await start_engine(DeafStore(store), registry, pool_size=1)
    stuck = await enqueue(store, task_job("forever"))
    await wait_for_status(store, stuck, RUNNING)
    waiting = await enqueue(store, task_job("anything"))

    await store.cancel_job(stuck.id)

    cancelled = await wait_for_status(store, stuck, CANCELLED)
    assert cancelled.errors == ["cancelled by request"]
    assert (await wait_for_status(store, waiting)).status is DONE


async def test_a_job_whose_cancel_was_asked_ends_cancelled_when_shutdown_cuts_it_short(
    store: JobStore, start_engine: EngineStarter
) -> None:
    registry = TaskRegistry()
    release = threading.Event()

    @registry.task("stubborn")
    def stubborn(_job: Job) -> None:
        release.wait(10)  # never looks at job.cancel_requested

    engine = await start_engine(store, registry)
    job = await enqueue(store, task_job("stubborn"))
    await wait_for_status(store, job, RUNNING)
    await store.cancel_job(job.id)

    await engine.stop(0.1)
    release.set()

    found = await job_now(store, job)
    assert (found.status, found.attempt) == (CANCELLED, 0)
