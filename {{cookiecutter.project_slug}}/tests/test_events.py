"""Job and request events: what subscribers receive, and the log lines built from them."""

import json
import logging
import sys
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI

from {{ cookiecutter.package_name }} import app as app_module
from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.events import (
    EventBus,
    JobEnqueued,
    JobErrored,
    JobStarted,
    JobStopped,
    RequestStarted,
    RequestStopped,
)
from {{ cookiecutter.package_name }}.jobs.clock import SystemClock
from {{ cookiecutter.package_name }}.jobs.engine import Engine
from {{ cookiecutter.package_name }}.jobs.model import Job, JobStatus
from {{ cookiecutter.package_name }}.jobs.registry import TaskRegistry
from {{ cookiecutter.package_name }}.jobs.store import JobStore, NewJob
from {{ cookiecutter.package_name }}.logs import JsonFormatter, log_job_events
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import StoreOpener, enqueue_all, serve, wait_until


def recorder(events: EventBus, *event_types: type[Any]) -> list[Any]:
    """Subscribe to `event_types`; the returned list fills with what arrives."""
    received: list[Any] = []
    for event_type in event_types:
        events.subscribe(event_type, received.append)
    return received


def flaky_registry() -> TaskRegistry:
    registry = TaskRegistry()

    @registry.task("ok")
    async def ok(_job: Job) -> dict[str, int]:
        return {"answer": 42}

    @registry.task("broken")
    def broken(_job: Job) -> None:
        raise ValueError("bad input")

    return registry


async def run_jobs(store: JobStore, events: EventBus, *new_jobs: NewJob) -> list[Job]:
    """Run `new_jobs` on an engine reporting to `events` until each finished or was retried."""
    engine = Engine(
        store,
        flaky_registry(),
        SystemClock(),
        queues={"default": 2},
        backoff_base=60,
        backoff_max=60,
        events=events,
    )
    outcomes = recorder(events, JobStopped, JobErrored)
    await engine.start()
    try:
        jobs = await enqueue_all(store, list(new_jobs))
        await wait_until(lambda: len(outcomes) == len(jobs))
    finally:
        await engine.stop(0)
    return jobs


@pytest.fixture
async def real_time_store(open_store: StoreOpener) -> JobStore:
    return await open_store(SystemClock())


async def test_a_job_reports_start_then_stop_with_its_result_and_duration(
    real_time_store: JobStore,
) -> None:
    events = EventBus()
    received = recorder(events, JobStarted, JobStopped, JobErrored)
    (job,) = await run_jobs(real_time_store, events, NewJob(payload={"task": "ok"}))

    started, stopped = received
    assert isinstance(started, JobStarted) and isinstance(stopped, JobStopped)
    assert started.job.id == stopped.job.id == job.id
    assert started.task == stopped.task == "ok"
    assert 0 <= started.queue_wait < 5
    assert stopped.result == {"answer": 42}
    assert 0 <= stopped.duration < 5
    # Stopped means stored: a subscriber that looks the job up finds it done.
    stored = await real_time_store.get_job(job.id)
    assert stored is not None and stored.status is JobStatus.DONE


async def test_a_failed_attempt_reports_the_error_and_when_it_is_retried(
    real_time_store: JobStore,
) -> None:
    events = EventBus()
    errors = recorder(events, JobErrored)
    retried, out_of_attempts = await run_jobs(
        real_time_store,
        events,
        NewJob(payload={"task": "broken"}, max_attempts=3),
        NewJob(payload={"task": "broken"}, max_attempts=1),
    )
    by_id = {event.job.id: event for event in errors}
    assert by_id[retried.id].error == "ValueError: bad input"
    assert by_id[retried.id].task == "broken"
    retry_at = by_id[retried.id].retry_at
    assert retry_at is not None and retry_at > SystemClock().now() + timedelta(seconds=20)
    assert by_id[out_of_attempts.id].retry_at is None


async def test_jobs_without_a_handler_of_their_own_report_the_default_task(
    real_time_store: JobStore,
) -> None:
    events = EventBus()
    received = recorder(events, JobStopped)
    unknown, without_task = NewJob(payload={"task": "no such task"}), NewJob(payload={})
    await run_jobs(real_time_store, events, unknown, without_task)
    assert [event.task for event in received] == ["default", "default"]


async def test_a_subscriber_that_raises_is_logged_and_breaks_nothing(
    real_time_store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    events = EventBus()

    def broken_subscriber(_event: JobStarted) -> None:
        raise RuntimeError("subscriber bug")

    events.subscribe(JobStarted, broken_subscriber)
    later = recorder(events, JobStarted)
    (job,) = await run_jobs(real_time_store, events, NewJob(payload={"task": "ok"}))

    assert [event.job.id for event in later] == [job.id]
    stored = await real_time_store.get_job(job.id)
    assert stored is not None and stored.status is JobStatus.DONE
    assert "Subscriber" in caplog.text and "subscriber bug" in caplog.text


async def test_job_events_become_one_log_line_each(
    real_time_store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    events = EventBus()
    log_job_events(events)
    caplog.set_level(logging.INFO)
    ok, retried, failed = await run_jobs(
        real_time_store,
        events,
        NewJob(payload={"task": "ok"}),
        NewJob(payload={"task": "broken"}, max_attempts=2),
        NewJob(payload={"task": "broken"}, max_attempts=1),
    )

    messages = [record.getMessage() for record in caplog.records]
    assert f"Executing job {ok.id}" in messages
    assert f"Job {ok.id} completed successfully" in messages
    assert any(
        message.startswith(f"Job {retried.id} failed: ValueError: bad input (attempt 1 of 2, ")
        and "retry at " in message
        for message in messages
    )
    gave_up = f"Job {failed.id} failed: ValueError: bad input (attempt 1 of 1, giving up)"
    assert gave_up in messages


def test_json_log_lines_carry_the_job_fields() -> None:
    record = logging.makeLogRecord(
        {
            "name": "engine",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "Job %d completed successfully",
            "args": (7,),
            "job_id": 7,
            "task": "ok",
            "attempt": 1,
        }
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "Job 7 completed successfully"
    assert line["level"] == "info"
    assert (line["job_id"], line["task"], line["attempt"]) == (7, "ok", 1)
    assert line["time"].endswith("+00:00")


def test_json_log_lines_include_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info()
        )
    line = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in line["exception"]


# --- Through the API


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings, registry=flaky_registry())


async def test_the_api_reports_enqueued_jobs_with_the_task_that_will_run_them(app: FastAPI) -> None:
    received = recorder(app.state.events, JobEnqueued)
    async with serve(app) as client:
        first = (await client.post("/jobs", json={"payload": {"task": "ok"}})).json()
        second = (
            await client.post(
                "/jobs/schedule",
                json={"payload": {"task": "made-up"}, "run_at": "2999-01-01T00:00:00Z"},
            )
        ).json()
        await client.post("/jobs", json={"no": "payload"})  # refused: nothing enqueued

    assert [(event.job.id, event.task) for event in received] == [
        (first["job_id"], "ok"),
        (second["job_id"], "default"),
    ]


async def test_requests_report_start_and_stop_with_the_route_template(app: FastAPI) -> None:
    received = recorder(app.state.events, RequestStarted, RequestStopped)
    async with serve(app) as client:
        await client.get("/jobs/12345")
        await client.get("/no/such/path")

    starts = [event for event in received if isinstance(event, RequestStarted)]
    stops = [event for event in received if isinstance(event, RequestStopped)]
    assert [event.request.url.path for event in starts] == ["/jobs/12345", "/no/such/path"]
    assert [(event.route, event.status) for event in stops] == [
        ("/jobs/{job_id}", 404),
        (None, 404),
    ]
    assert all(event.request.method == "GET" and event.duration >= 0 for event in stops)


def test_every_app_hands_its_bus_to_the_projects_subscribers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed: list[EventBus] = []
    monkeypatch.setattr(app_module, "subscribe", handed.append)

    app = app_module.create_app(settings)

    assert handed == [app.state.events]


async def test_the_app_logs_job_events_from_its_engine(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serve(app) as client:
        job_id = (await client.post("/jobs", json={"payload": {"task": "ok"}})).json()["job_id"]
        await wait_until(lambda: f"Job {job_id} completed successfully" in caplog.text)
