"""Schedules: a task with `cron=` gets one job per tick, caught up once after downtime."""

import asyncio
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import httpx
import pytest

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.events import EventBus, JobEnqueued
from {{ cookiecutter.package_name }}.jobs.cron import Schedule
from {{ cookiecutter.package_name }}.jobs.model import DEFAULT_QUEUE, Job, JobStatus
from {{ cookiecutter.package_name }}.jobs.registry import TaskRegistry
from {{ cookiecutter.package_name }}.jobs.scheduler import Scheduler
from {{ cookiecutter.package_name }}.jobs.store import JobFilter, JobStore

from .conftest import ManualClock, SettingsFactory, StoreOpener, serve, wait_until

MINUTE = 60.0
# The manual clock's start, 2025-01-01 12:00 UTC, is a tick of every schedule below.
EVERY_MINUTE = "* * * * *"


def schedule(
    cron: str = EVERY_MINUTE,
    *,
    timezone: str = "UTC",
    payload: dict[str, Any] | None = None,
    queue: str = DEFAULT_QUEUE,
    priority: int = 0,
) -> Schedule:
    """The schedule of a task named "report" registered with these arguments."""
    registry = TaskRegistry()
    registry.task(
        "report", cron=cron, timezone=timezone, payload=payload, queue=queue, priority=priority
    )(lambda _job: None)
    return registry.schedules["report"]


async def scheduled_jobs(store: JobStore) -> list[Job]:
    """Every job, oldest first."""
    return list(reversed(await store.list_jobs(JobFilter(), 1000, 0)))


async def ticks_enqueued(store: JobStore) -> list[datetime]:
    return [job.run_at for job in await scheduled_jobs(store)]


def at(minutes: float) -> datetime:
    """The manual clock's start plus `minutes`."""
    return datetime(2025, 1, 1, 12, 0, tzinfo=UTC) + timedelta(minutes=minutes)


# --- Expressions ---


def test_five_fields_tick_on_the_minute() -> None:
    nightly = schedule("0 3 * * *")
    assert nightly.next_tick(at(0)) == datetime(2025, 1, 2, 3, 0, tzinfo=UTC)
    assert nightly.latest_tick(at(0)) == datetime(2025, 1, 1, 3, 0, tzinfo=UTC)


def test_six_fields_put_the_seconds_first() -> None:
    every_ten_seconds = schedule("*/10 * * * * *")
    start = at(0) + timedelta(seconds=1)
    assert list(every_ten_seconds.ticks_between(start, start + timedelta(seconds=25))) == [
        at(0) + timedelta(seconds=10),
        at(0) + timedelta(seconds=20),
    ]


def test_a_tick_is_its_own_latest_tick_and_not_its_next() -> None:
    hourly = schedule("@hourly")
    assert hourly.latest_tick(at(0)) == at(0)
    assert hourly.next_tick(at(0)) == at(60)


def test_ticks_are_read_in_the_schedules_time_zone() -> None:
    paris = schedule("0 3 * * *", timezone="Europe/Paris")
    # 03:00 in Paris is 02:00 UTC in winter and 01:00 UTC in summer.
    assert paris.next_tick(at(0)) == datetime(2025, 1, 2, 2, 0, tzinfo=UTC)
    assert paris.next_tick(datetime(2025, 7, 1, tzinfo=UTC)) == datetime(
        2025, 7, 1, 1, 0, tzinfo=UTC
    )


@pytest.mark.parametrize("cron", ["* * *", "61 * * * *", "* * * * * * *", "every day", ""])
def test_an_expression_that_is_not_cron_names_the_task(cron: str) -> None:
    with pytest.raises(ValueError, match=r"cron of task 'report': .* is not a cron expression"):
        schedule(cron)


def test_an_expression_without_a_next_tick_is_refused() -> None:
    with pytest.raises(ValueError, match=r"cron of task 'report': '0 0 30 2 \*' never ticks"):
        schedule("0 0 30 2 *")


def test_an_unknown_time_zone_names_the_task() -> None:
    with pytest.raises(ValueError, match="timezone of task 'report': 'Mars/Olympus'"):
        schedule(timezone="Mars/Olympus")


def test_the_job_is_the_payload_with_the_task_in_its_queue_at_its_priority() -> None:
    report = schedule(payload={"format": "pdf"}, queue="reports", priority=3)
    job = report.job_at(at(1))
    assert job.payload == {"format": "pdf", "task": "report"}
    assert (job.queue, job.priority, job.run_at) == ("reports", 3, at(1))


def test_a_bad_queue_or_priority_fails_at_registration() -> None:
    with pytest.raises(ValueError, match="queue"):
        schedule(queue="Not A Queue")
    with pytest.raises(ValueError, match="priority"):
        schedule(priority=10)


def test_job_fields_without_cron_are_refused() -> None:
    registry = TaskRegistry()
    with pytest.raises(ValueError, match="'report': payload, queue, priority and timezone need"):
        registry.task("report", queue="reports")


# --- The store: one job per tick ---


async def test_a_tick_gets_one_job_however_often_it_is_enqueued(store: JobStore) -> None:
    report = schedule()
    first = await store.enqueue_tick("report", at(1), report.job_at(at(1)))
    again = await store.enqueue_tick("report", at(1), report.job_at(at(1)))
    later = await store.enqueue_tick("report", at(2), report.job_at(at(2)))

    assert first is not None and later is not None and again is None
    stored = await store.get_job(first.id)
    assert stored is not None
    assert (stored.status, stored.run_at, stored.payload) == (
        JobStatus.QUEUED,
        at(1),
        {"task": "report"},
    )
    assert await ticks_enqueued(store) == [at(1), at(2)]


async def test_instances_racing_for_a_tick_insert_one_job(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
{%- if cookiecutter.job_store == "memory" %}
    # A memory store is its process's own: the race is between tasks of one process.
    stores = [store] * 10
{%- else %}
    # Two stores on one database, as two instances have.
    stores = [store, await open_store(clock)] * 5
{%- endif %}
    report = schedule()

    outcomes = await asyncio.gather(
        *(each.enqueue_tick("report", at(1), report.job_at(at(1))) for each in stores)
    )

    assert len([job for job in outcomes if job is not None]) == 1
    assert await ticks_enqueued(store) == [at(1)]


async def test_a_schedule_lists_its_latest_tick_and_job(store: JobStore) -> None:
    report = schedule()
    await store.add_schedules(["report"])
    (state,) = await store.list_schedules()
    assert (state.paused, state.last_tick, state.last_job_id) == (False, None, None)

    jobs = [await store.enqueue_tick("report", at(n), report.job_at(at(n))) for n in (2, 1)]

    (state,) = await store.list_schedules()
    assert jobs[0] is not None
    assert (state.last_tick, state.last_job_id) == (at(2), jobs[0].id)


async def test_a_paused_schedule_gets_no_job_until_resumed(
    store: JobStore, clock: ManualClock
) -> None:
    report = schedule()
    await store.add_schedules(["report"])
    await store.pause_schedule("report")

    assert await store.enqueue_tick("report", at(1), report.job_at(at(1))) is None
    (state,) = await store.list_schedules()
    assert state.paused

    clock.advance(5 * MINUTE)
    await store.resume_schedule("report")
    assert await store.enqueue_tick("report", at(6), report.job_at(at(6))) is not None
    (state,) = await store.list_schedules()
    assert (state.paused, state.active_since) == (False, at(5))


async def test_adding_a_kept_schedule_changes_nothing(store: JobStore, clock: ManualClock) -> None:
    await store.add_schedules(["report"])
    await store.pause_schedule("report")
    clock.advance(MINUTE)

    await store.add_schedules(["report", "cleanup"])

    states = {state.name: state for state in await store.list_schedules()}
    assert (states["report"].paused, states["report"].active_since) == (True, at(0))
    assert (states["cleanup"].paused, states["cleanup"].active_since) == (False, at(1))


# --- The scheduler ---


def scheduler(
    store: JobStore,
    clock: ManualClock,
    *,
    catch_up: timedelta = timedelta(0),
    events: EventBus | None = None,
) -> Scheduler:
    """A scheduler of the every-minute "report" schedule."""
    return Scheduler(store, [schedule()], clock, events or EventBus(), catch_up=catch_up)


async def test_a_new_schedule_waits_for_its_next_tick(store: JobStore, clock: ManualClock) -> None:
    clock.advance(0.5 * MINUTE)
    running = scheduler(store, clock)

    await running.catch_up()

    assert await ticks_enqueued(store) == []
    assert running.next_tick_at() == at(1)


async def test_each_tick_that_came_gets_its_job(store: JobStore, clock: ManualClock) -> None:
    running = scheduler(store, clock)
    await running.catch_up()

    clock.advance(MINUTE)
    await running.enqueue_due_ticks()
    clock.advance(2.5 * MINUTE)
    await running.enqueue_due_ticks()

    assert await ticks_enqueued(store) == [at(1), at(2), at(3)]
    assert running.next_tick_at() == at(4)


async def test_each_job_enqueued_is_told_to_the_subscribers(
    store: JobStore, clock: ManualClock
) -> None:
    events = EventBus()
    told: list[JobEnqueued] = []
    events.subscribe(JobEnqueued, told.append)
    running = scheduler(store, clock, events=events)
    await running.catch_up()

    clock.advance(MINUTE)
    await running.enqueue_due_ticks()

    assert [(event.job.run_at, event.task) for event in told] == [(at(1), "report")]


async def test_a_restart_does_not_enqueue_a_tick_again(store: JobStore, clock: ManualClock) -> None:
    await scheduler(store, clock).catch_up()
    clock.advance(MINUTE)
    first = scheduler(store, clock)
    await first.catch_up()
    await first.enqueue_due_ticks()

    restarted = scheduler(store, clock)
    await restarted.catch_up()
    await restarted.enqueue_due_ticks()

    assert await ticks_enqueued(store) == [at(1)]


async def test_after_downtime_only_the_latest_missed_tick_is_enqueued(
    store: JobStore, clock: ManualClock
) -> None:
    await scheduler(store, clock).catch_up()
    clock.advance(10.5 * MINUTE)

    await scheduler(store, clock).catch_up()

    assert await ticks_enqueued(store) == [at(10)]


async def test_the_catch_up_window_enqueues_the_missed_ticks_within_it(
    store: JobStore, clock: ManualClock
) -> None:
    await scheduler(store, clock).catch_up()
    clock.advance(10.5 * MINUTE)

    await scheduler(store, clock, catch_up=timedelta(minutes=3)).catch_up()

    assert await ticks_enqueued(store) == [at(8), at(9), at(10)]


async def test_ticks_missed_while_paused_are_not_caught_up(
    store: JobStore, clock: ManualClock
) -> None:
    running = scheduler(store, clock)
    await running.catch_up()
    await store.pause_schedule("report")
    clock.advance(3 * MINUTE)
    await running.enqueue_due_ticks()
    clock.advance(0.5 * MINUTE)
    await store.resume_schedule("report")

    await scheduler(store, clock).catch_up()
    clock.advance(MINUTE)
    await running.enqueue_due_ticks()

    assert await ticks_enqueued(store) == [at(4)]


# --- The service ---


def every_second_registry() -> TaskRegistry:
    registry = TaskRegistry()

    @registry.task("heartbeat", cron="* * * * * *", payload={"source": "cron"})
    async def heartbeat(job: Job) -> dict[str, str]:
        return {"tick": job.run_at.isoformat()}

    return registry


async def test_the_service_runs_a_job_every_second_and_lists_the_schedule(
    make_settings: SettingsFactory,
) -> None:
    app = create_app(make_settings(), registry=every_second_registry())
    async with serve(app) as client:

        async def three_done() -> bool:
            done: int = (await client.get("/stats")).json()["done"]
            return done >= 3

        await wait_until(three_done, timeout=10, message="three ticks' jobs done")
        (listed,) = (await client.get("/schedules")).json()
        jobs = (await client.get("/jobs", params={"status": "done"})).json()

    run_ats = sorted(job["run_at"] for job in jobs)
    assert len(set(run_ats)) == len(run_ats)
    moments = [datetime.fromisoformat(run_at) for run_at in run_ats]
    assert all(moment.microsecond == 0 for moment in moments)
    assert all(b - a == timedelta(seconds=1) for a, b in pairwise(moments))
    assert {job["payload"]["source"] for job in jobs} == {"cron"}
    assert listed["name"] == "heartbeat"
    assert listed["cron"] == "* * * * * *"
    assert (listed["paused"], listed["timezone"], listed["queue"]) == (False, "UTC", "default")
    assert listed["last_job_id"] is not None
    assert listed["next_run_at"] > listed["last_run_at"]


async def test_a_paused_schedule_enqueues_nothing(make_settings: SettingsFactory) -> None:
    async with serve(create_app(make_settings(), registry=every_second_registry())) as client:
        response = await client.post("/schedules/heartbeat/pause")
        assert response.status_code == 200
        assert (response.json()["paused"], response.json()["next_run_at"]) == (True, None)
        # A tick may have been enqueued before the pause; none after it.
        enqueued: int = (await client.get("/stats")).json()["total"]
        await asyncio.sleep(2.2)
        assert (await client.get("/stats")).json()["total"] == enqueued

        response = await client.post("/schedules/heartbeat/resume")
        assert (response.json()["paused"], response.json()["next_run_at"] is None) == (False, False)

        async def enqueued_again() -> bool:
            total: int = (await client.get("/stats")).json()["total"]
            return total > enqueued

        await wait_until(enqueued_again, timeout=5, message="a tick's job after the resume")
{%- if cookiecutter.job_store != "memory" %}


async def test_a_pause_is_kept_across_a_restart(make_settings: SettingsFactory) -> None:
    settings = make_settings(start_workers=False)
    registry = every_second_registry()
    async with serve(create_app(settings, registry=registry)) as client:
        await client.post("/schedules/heartbeat/pause")

    async with serve(create_app(settings, registry=registry)) as client:
        (listed,) = (await client.get("/schedules")).json()
        assert (listed["paused"], listed["next_run_at"]) == (True, None)
{%- endif %}


async def test_an_unknown_schedule_is_404(client: httpx.AsyncClient) -> None:
    for action in ("pause", "resume"):
        response = await client.post(f"/schedules/nightly/{action}")
        assert response.status_code == 404
        assert response.json() == {"error": "No schedule named 'nightly'"}


async def test_a_service_without_schedules_lists_none(client: httpx.AsyncClient) -> None:
    response = await client.get("/schedules")
    assert (response.status_code, response.json()) == (200, [])
