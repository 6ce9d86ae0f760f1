"""Operating the queue over HTTP: queues, priorities, unique jobs, bulk, cancel, retry, pause."""

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.jobs.model import Job
from {{ cookiecutter.package_name }}.jobs.registry import TaskRegistry

from .conftest import SettingsFactory, serve, wait_until


@pytest.fixture
async def client(make_settings: SettingsFactory) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app whose engine is stopped: every job stays where a test put it."""
    app = create_app(make_settings())
    async with serve(app) as client:
        await app.state.engine.stop(0)
        yield client


class Gate:
    """Handlers that wait until the test opens them, and note the order they started in."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.started: list[int] = []
        self.registry = TaskRegistry()

        @self.registry.task("fail")
        def fail(_job: Job) -> None:
            raise RuntimeError("always fails")

        @self.registry.task("wait")
        async def wait(job: Job) -> str:
            self.started.append(job.id)
            while not self.opened.is_set():
                await asyncio.sleep(0.005)
            return "opened"

        @self.registry.task("wait_sync")
        def wait_sync(job: Job) -> str:
            self.started.append(job.id)
            while not (self.opened.is_set() or job.cancel_requested):
                threading.Event().wait(0.005)
            return "saw the cancel" if job.cancel_requested else "opened"

        @self.registry.task("forever")
        async def forever(job: Job) -> None:
            self.started.append(job.id)
            await asyncio.Event().wait()


@pytest.fixture
def gate() -> Gate:
    return Gate()


@asynccontextmanager
async def serve_workers(
    make_settings: SettingsFactory, gate: Gate, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app that runs its workers with `gate`'s tasks, on the wall clock."""
    app: FastAPI = create_app(make_settings(**settings), registry=gate.registry)
    async with serve(app) as client:
        try:
            yield client
        finally:
            gate.opened.set()  # before the app stops, which waits for running handlers


@pytest.fixture
async def workers(make_settings: SettingsFactory, gate: Gate) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app running its workers (two in the default queue), on the wall clock."""
    async with serve_workers(make_settings, gate) as client:
        yield client


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    return str(body["error"])


async def post(client: httpx.AsyncClient, path: str = "/jobs", **body: Any) -> dict[str, Any]:
    response = await client.post(path, json={"payload": {}, **body})
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def job_of(client: httpx.AsyncClient, job_id: int) -> dict[str, Any]:
    response = await client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


async def wait_for(client: httpx.AsyncClient, job_id: int, status: str) -> dict[str, Any]:
    async def reached() -> bool:
        return bool((await job_of(client, job_id))["status"] == status)

    await wait_until(reached, message=f"job {job_id} to be {status}")
    return await job_of(client, job_id)


# --- Queue, priority, unique_key on submission


async def test_a_job_shows_the_queue_priority_and_unique_key_it_was_given(
    client: httpx.AsyncClient,
) -> None:
    answer = await post(client, queue="emails", priority=3, unique_key="order-9")
    plain = await post(client)

    job = await job_of(client, answer["job_id"])
    assert (job["queue"], job["priority"], job["unique_key"]) == ("emails", 3, "order-9")
    assert job["cancel_requested"] is False
    default = await job_of(client, plain["job_id"])
    assert (default["queue"], default["priority"], default["unique_key"]) == ("default", 0, None)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"queue": "Emails"}, "queue"),
        ({"queue": ""}, "queue"),
        ({"queue": "q" * 65}, "queue"),
        ({"queue": "a b"}, "queue"),
        ({"queue": 7}, "queue"),
        ({"priority": 10}, "priority"),
        ({"priority": -1}, "priority"),
        ({"priority": "1"}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"unique_key": ""}, "unique_key"),
        ({"unique_key": "k" * 201}, "unique_key"),
        ({"unique_key": 12}, "unique_key"),
    ],
)
async def test_a_bad_queue_priority_or_unique_key_is_400_naming_it(
    client: httpx.AsyncClient, fields: dict[str, Any], field: str
) -> None:
    response = await client.post("/jobs", json={"payload": {}, **fields})

    assert error_of(response, 400).startswith(f"{field}: ")
    assert (await client.get("/stats")).json()["total"] == 0


async def test_a_unique_key_that_a_waiting_job_holds_answers_200_with_that_job(
    client: httpx.AsyncClient,
) -> None:
    first = await post(client, unique_key="invoice-42")

    again = await client.post("/jobs", json={"payload": {"n": 2}, "unique_key": "invoice-42"})
    by_header = await client.post(
        "/jobs", json={"payload": {"n": 3}}, headers={"Idempotency-Key": "invoice-42"}
    )
    scheduled = await client.post(
        "/jobs/schedule",
        json={"payload": {}, "run_at": "2030-01-01T00:00:00Z", "unique_key": "invoice-42"},
    )

    existing = {"message": "Job already exists", "job_id": first["job_id"]}
    for response in (again, by_header, scheduled):
        assert (response.status_code, response.json()) == (200, existing)
    assert (await client.get("/stats")).json()["total"] == 1


async def test_the_idempotency_key_header_alone_makes_a_job_unique(
    client: httpx.AsyncClient,
) -> None:
    first = await client.post("/jobs", json={"payload": {}}, headers={"Idempotency-Key": "k1"})
    second = await client.post("/jobs", json={"payload": {}}, headers={"Idempotency-Key": "k1"})

    assert first.status_code == 202
    assert second.json() == {"message": "Job already exists", "job_id": first.json()["job_id"]}
    assert (await job_of(client, first.json()["job_id"]))["unique_key"] == "k1"


async def test_the_bodys_unique_key_wins_over_an_idempotency_key(
    client: httpx.AsyncClient,
) -> None:
    first = await client.post(
        "/jobs", json={"payload": {}, "unique_key": "a"}, headers={"Idempotency-Key": "b"}
    )
    second = await client.post(
        "/jobs", json={"payload": {}, "unique_key": "a"}, headers={"Idempotency-Key": "c"}
    )

    assert (await job_of(client, first.json()["job_id"]))["unique_key"] == "a"
    assert second.json() == {"message": "Job already exists", "job_id": first.json()["job_id"]}


async def test_a_unique_key_is_taken_again_once_its_job_is_done(
    workers: httpx.AsyncClient,
) -> None:
    first = await post(workers, unique_key="nightly")
    await wait_for(workers, first["job_id"], "done")

    second = await post(workers, unique_key="nightly")

    assert second["job_id"] != first["job_id"]


# --- Bulk


async def test_bulk_stores_every_job_in_order(client: httpx.AsyncClient) -> None:
    jobs = [{"payload": {"n": n}, "queue": "bulk", "priority": n % 10} for n in range(25)]

    response = await client.post("/jobs/bulk", json={"jobs": jobs})

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["message"] == "Jobs accepted"
    ids = body["job_ids"]
    assert ids == sorted(ids) and len(set(ids)) == 25
    for n, job_id in enumerate(ids):
        job = await job_of(client, job_id)
        assert (job["payload"], job["queue"], job["priority"]) == ({"n": n}, "bulk", n % 10)


async def test_bulk_with_taken_unique_keys_gives_the_holders_ids(
    client: httpx.AsyncClient,
) -> None:
    held = await post(client, unique_key="a")

    response = await client.post(
        "/jobs/bulk",
        json={
            "jobs": [
                {"payload": {}, "unique_key": "a"},
                {"payload": {}, "unique_key": "b"},
                {"payload": {}, "unique_key": "b"},
            ]
        },
    )

    first, second, third = response.json()["job_ids"]
    assert (first, second == third, second != held["job_id"]) == (held["job_id"], True, True)
    assert (await client.get("/stats")).json()["total"] == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"jobs": []}, "jobs: List should have at least 1 item after validation, not 0"),
        ({"jobs": [{"payload": {}}] * 1001}, "jobs: List should have at most 1000 items"),
        ({"jobs": [{"payload": {}}, {"n": 1}]}, "jobs[1]: Missing 'payload' field"),
        ({"jobs": [{"payload": {}}, {"payload": {}, "priority": 12}]}, "jobs[1].priority: "),
        ({"jobs": [{"payload": []}]}, "jobs[0].payload: "),
        ({"jobs": {"payload": {}}}, "jobs: "),
        ({}, "jobs: Field required"),
    ],
)
async def test_an_invalid_bulk_request_stores_nothing_and_names_the_item(
    client: httpx.AsyncClient, body: dict[str, Any], message: str
) -> None:
    response = await client.post("/jobs/bulk", json=body)

    assert error_of(response, 400).startswith(message)
    assert (await client.get("/stats")).json()["total"] == 0


# --- Cancel and retry


async def test_cancelling_a_queued_job_ends_it_and_a_second_cancel_is_409(
    client: httpx.AsyncClient,
) -> None:
    job_id = (await post(client))["job_id"]

    response = await client.post(f"/jobs/{job_id}/cancel")

    assert response.status_code == 200, response.text
    job = response.json()
    assert (job["id"], job["status"]) == (job_id, "cancelled")
    assert job["finished_at"] is not None
    assert error_of(await client.post(f"/jobs/{job_id}/cancel"), 409) == (
        f"Job {job_id} is cancelled"
    )
    stats = (await client.get("/stats")).json()
    assert (stats["cancelled"], stats["queued"], stats["total"]) == (1, 0, 1)
    listed = (await client.get("/jobs?status=cancelled")).json()
    assert [job["id"] for job in listed] == [job_id]


@pytest.mark.parametrize("action", ["cancel", "retry"])
async def test_cancel_and_retry_of_no_job_are_404_and_of_a_bad_id_400(
    client: httpx.AsyncClient, action: str
) -> None:
    assert error_of(await client.post(f"/jobs/99999/{action}"), 404) == "Job not found"
    assert error_of(await client.post(f"/jobs/0/{action}"), 404) == "Job not found"
    assert error_of(await client.post(f"/jobs/abc/{action}"), 400).startswith("job_id: ")
    assert error_of(await client.get(f"/jobs/1/{action}"), 405)


async def test_cancelling_a_running_async_job_cancels_its_handler(
    workers: httpx.AsyncClient, gate: Gate
) -> None:
    job_id = (await post(workers, payload={"task": "forever"}))["job_id"]
    await wait_for(workers, job_id, "running")

    response = await workers.post(f"/jobs/{job_id}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["cancel_requested"] is True
    job = await wait_for(workers, job_id, "cancelled")
    assert (job["attempt"], job["errors"]) == (1, ["cancelled by request"])
    assert job["finished_at"] is not None


async def test_a_sync_handler_sees_the_cancel_and_its_job_ends_cancelled_with_its_result(
    workers: httpx.AsyncClient, gate: Gate
) -> None:
    job_id = (await post(workers, payload={"task": "wait_sync"}))["job_id"]
    await wait_for(workers, job_id, "running")

    await workers.post(f"/jobs/{job_id}/cancel")

    job = await wait_for(workers, job_id, "cancelled")
    assert (job["result"], job["errors"]) == ("saw the cancel", [])


async def test_cancelling_a_done_or_failed_job_is_409(workers: httpx.AsyncClient) -> None:
    done = (await post(workers))["job_id"]
    failed = (await post(workers, payload={"task": "fail"}, max_attempts=1))["job_id"]
    await wait_for(workers, done, "done")
    await wait_for(workers, failed, "failed")

    assert error_of(await workers.post(f"/jobs/{done}/cancel"), 409) == f"Job {done} is done"
    assert error_of(await workers.post(f"/jobs/{failed}/cancel"), 409) == (
        f"Job {failed} is failed"
    )


async def test_retrying_a_failed_job_runs_it_again_with_one_more_attempt(
    workers: httpx.AsyncClient,
) -> None:
    job_id = (await post(workers, payload={"task": "fail"}, max_attempts=1))["job_id"]
    failed = await wait_for(workers, job_id, "failed")

    response = await workers.post(f"/jobs/{job_id}/retry")

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["max_attempts"]) == ("queued", 2)
    again = await wait_for(workers, job_id, "failed")
    assert (again["attempt"], len(again["errors"])) == (2, 2)
    assert again["errors"][0] == failed["errors"][0]


async def test_retrying_a_queued_or_done_job_is_409(workers: httpx.AsyncClient) -> None:
    done = (await post(workers))["job_id"]
    await wait_for(workers, done, "done")

    assert error_of(await workers.post(f"/jobs/{done}/retry"), 409) == f"Job {done} is done"


# --- Bulk cancel and retry of what a filter selects


async def test_a_bulk_cancel_ends_the_selected_queued_jobs_and_asks_the_running_ones(
    workers: httpx.AsyncClient, gate: Gate
) -> None:
    running = (await post(workers, payload={"task": "forever"}))["job_id"]
    await wait_for(workers, running, "running")
    # The default queue's two workers are busy: these wait.
    await post(workers, payload={"task": "forever"})
    queued = [(await post(workers, payload={"task": "forever"}))["job_id"] for _ in range(3)]
    other = (await post(workers, payload={"task": "wait"}))["job_id"]
    await wait_until(lambda: len(gate.started) == 2, message="two running")

    response = await workers.post("/jobs/cancel", json={"task": "forever"})

    assert response.status_code == 200, response.text
    assert response.json() == {"message": "Jobs cancelled", "cancelled": 3, "stopping": 2}
    for job_id in queued:
        assert (await job_of(workers, job_id))["status"] == "cancelled"
    await wait_for(workers, running, "cancelled")
    assert (await job_of(workers, other))["status"] != "cancelled"


async def test_a_bulk_retry_queues_the_selected_failed_jobs_again(
    workers: httpx.AsyncClient,
) -> None:
    failed = [
        (await post(workers, payload={"task": "fail"}, max_attempts=1, queue=queue))["job_id"]
        for queue in ("default", "default", "emails")
    ]
    for job_id in failed:
        await wait_for(workers, job_id, "failed")

    response = await workers.post("/jobs/retry", json={"status": "failed", "queue": "default"})

    assert response.status_code == 200, response.text
    assert response.json() == {"message": "Jobs retried", "retried": 2}
    for job_id in failed[:2]:
        again = await wait_for(workers, job_id, "failed")
        assert (again["attempt"], again["max_attempts"]) == (2, 2)
    assert (await job_of(workers, failed[2]))["attempt"] == 1


@pytest.mark.parametrize(
    ("selection", "named"),
    [
        ({"stauts": "failed"}, "stauts"),
        ({"status": "lost"}, "status"),
        ({"queue": "Bad Name"}, "queue"),
        ({"task": ""}, "task"),
    ],
)
@pytest.mark.parametrize("action", ["cancel", "retry"])
async def test_a_bad_bulk_selection_is_400_naming_it_and_changes_nothing(
    client: httpx.AsyncClient, action: str, selection: dict[str, str], named: str
) -> None:
    job_id = (await post(client))["job_id"]

    assert error_of(await client.post(f"/jobs/{action}", json=selection), 400).startswith(named)
    assert (await job_of(client, job_id))["status"] == "queued"
    assert error_of(await client.get(f"/jobs/{action}"), 405)


async def test_throughput_counts_the_attempts_that_ended_in_each_of_the_last_60_minutes(
    workers: httpx.AsyncClient,
) -> None:
    done = (await post(workers))["job_id"]
    failed = (await post(workers, payload={"task": "fail"}, max_attempts=1))["job_id"]
    await wait_for(workers, done, "done")
    await wait_for(workers, failed, "failed")

    async def counted() -> bool:
        minutes = (await workers.get("/stats/throughput")).json()["minutes"]
        totals = [sum(minute[outcome] for minute in minutes) for outcome in ("completed", "failed")]
        return totals == [1, 1]

    await wait_until(counted, message="both outcomes to be counted")
    minutes = (await workers.get("/stats/throughput")).json()["minutes"]
    assert len(minutes) == 60
    assert minutes == sorted(minutes, key=lambda minute: minute["minute"])
    assert all(minute["minute"].endswith(":00.000000Z") for minute in minutes)


# --- Listing by queue and task


async def test_list_filters_by_queue_and_task(client: httpx.AsyncClient) -> None:
    a = (await post(client, payload={"task": "send"}, queue="emails"))["job_id"]
    b = (await post(client, payload={"task": "render"}, queue="emails"))["job_id"]
    c = (await post(client, payload={"task": "send"}))["job_id"]

    async def listed(query: str) -> list[int]:
        response = await client.get(f"/jobs?{query}")
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()]

    assert await listed("queue=emails") == [b, a]
    assert await listed("task=send") == [c, a]
    assert await listed("queue=emails&task=send&status=queued") == [a]
    assert await listed("queue=reports") == []
    assert error_of(await client.get("/jobs?queue=Not%20A%20Queue"), 400).startswith("queue: ")
    assert error_of(await client.get("/jobs?task="), 400).startswith("task: ")


# --- Queues


async def test_queues_lists_counts_concurrency_and_pause_state(
    make_settings: SettingsFactory, gate: Gate
) -> None:
    async with serve_workers(make_settings, gate, queues="default=2,emails=1") as client:
        await client.post("/queues/emails/pause")
        await post(client, queue="emails")
        await post(client, queue="reports", payload={"task": "wait"})

        response = await client.get("/queues")

        assert response.status_code == 200, response.text
        queues = {queue["name"]: queue for queue in response.json()}
        assert sorted(queues) == ["default", "emails", "reports"]
        assert (queues["emails"]["paused"], queues["emails"]["concurrency"]) == (True, 1)
        assert queues["emails"]["jobs"]["queued"] == 1
        assert (queues["default"]["concurrency"], queues["default"]["jobs"]["total"]) == (2, 0)
        # A queue QUEUES does not name shares default's workers.
        assert queues["reports"]["concurrency"] == 2


async def test_a_paused_queue_accepts_jobs_but_runs_none_until_resumed(
    workers: httpx.AsyncClient,
) -> None:
    paused = await workers.post("/queues/emails/pause")
    assert (paused.status_code, paused.json()["paused"]) == (200, True)
    held = (await post(workers, queue="emails"))["job_id"]
    free = (await post(workers))["job_id"]
    await wait_for(workers, free, "done")
    await asyncio.sleep(0.2)
    assert (await job_of(workers, held))["status"] == "queued"

    resumed = await workers.post("/queues/emails/resume")

    assert (resumed.status_code, resumed.json()["paused"]) == (200, False)
    await wait_for(workers, held, "done")


async def test_pausing_a_badly_named_queue_is_400(client: httpx.AsyncClient) -> None:
    assert error_of(await client.post("/queues/Bad%20Name/pause"), 400).startswith("name: ")
    assert error_of(await client.get("/queues/emails/pause"), 405)


# --- The engine: per-queue concurrency and priority


async def test_each_queue_runs_at_most_its_own_limit_at_once(
    make_settings: SettingsFactory, gate: Gate
) -> None:
    async with serve_workers(make_settings, gate, queues="default=2,emails=1") as client:
        emails = [
            (await post(client, queue="emails", payload={"task": "wait"}))["job_id"]
            for _ in range(3)
        ]
        others = [(await post(client, payload={"task": "wait"}))["job_id"] for _ in range(3)]

        await wait_until(lambda: len(gate.started) == 3, message="three jobs to start")
        await asyncio.sleep(0.2)

        assert sorted(gate.started) == sorted([emails[0], *others[:2]])
        gate.opened.set()
        for job_id in [*emails, *others]:
            await wait_for(client, job_id, "done")


async def test_urgent_jobs_run_before_older_less_urgent_ones(
    make_settings: SettingsFactory, gate: Gate
) -> None:
    async with serve_workers(make_settings, gate, worker_pool_size=1) as client:
        blocker = (await post(client, payload={"task": "wait"}))["job_id"]
        await wait_for(client, blocker, "running")
        later = [
            (await post(client, payload={"task": "wait"}, priority=priority))["job_id"]
            for priority in (5, 9, 0, 5)
        ]

        gate.opened.set()
        for job_id in later:
            await wait_for(client, job_id, "done")

        assert gate.started == [blocker, later[2], later[0], later[3], later[1]]
