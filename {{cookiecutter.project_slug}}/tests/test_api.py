"""The HTTP contract: exact status codes and bodies, and no 5xx for any input."""

import json
import random
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.jobs.model import JobStatus
from {{ cookiecutter.package_name }}.jobs.store import JobStore, NewJob
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import SettingsFactory, enqueue_all, serve, wait_until

MAX_BODY_BYTES = 65_536
JOB_KEYS = {
    "id",
    "payload",
    "status",
    "attempt",
    "max_attempts",
    "queue",
    "priority",
    "unique_key",
    "cancel_requested",
    "run_at",
    "inserted_at",
    "started_at",
    "finished_at",
    "result",
    "errors",
}
UTC_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
MISSING_PAYLOAD = "Missing 'payload' field"
SCHEDULE_FIELDS = "Required fields: payload (object), run_at (ISO8601)"


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(max_body_bytes=MAX_BODY_BYTES)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app with its engine stopped, so every job stays where a test put it."""
    async with serve(app) as client:
        await app.state.engine.stop(0)
        yield client


@pytest.fixture
def app_store(app: FastAPI) -> JobStore:
    """The app's own store, for setting up jobs in states HTTP alone cannot reach."""
    store: JobStore = app.state.store
    return store


@pytest.fixture
async def worker_client(make_settings: SettingsFactory) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app that runs its workers, on the wall clock."""
    async with serve(create_app(make_settings())) as client:
        yield client


def assert_error(response: httpx.Response, status: int, message: str | None = None) -> str:
    """The response is `status` with a body of exactly `{"error": "<message>"}`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    assert body["error"]
    if message is not None:
        assert body["error"] == message
    return str(body["error"])


async def submit(client: httpx.AsyncClient, payload: Any = None, **fields: Any) -> int:
    response = await client.post("/jobs", json={"payload": payload or {}, **fields})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert isinstance(job_id, int)
    return job_id


async def get_job(client: httpx.AsyncClient, job_id: int) -> dict[str, Any]:
    response = await client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


async def listed_ids(client: httpx.AsyncClient, query: str = "") -> list[int]:
    response = await client.get(f"/jobs{query}")
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()]


async def wait_for_job(client: httpx.AsyncClient, job_id: int, *statuses: str) -> dict[str, Any]:
    wanted = statuses or ("done", "failed")

    async def reached() -> bool:
        return (await get_job(client, job_id))["status"] in wanted

    await wait_until(reached, message=f"job {job_id} to be {' or '.join(wanted)}")
    return await get_job(client, job_id)


def nested_payload(depth: int) -> bytes:
    """A request body whose payload nests objects `depth` levels deep."""
    return b'{"payload": ' + b'{"a": ' * (depth - 1) + b"{}" + b"}" * (depth - 1) + b"}"


# --- System endpoints


async def test_root_says_the_server_is_running_in_plain_text(client: httpx.AsyncClient) -> None:
    response = await client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "Server is running"


async def test_health_is_ok_while_the_engine_runs(worker_client: httpx.AsyncClient) -> None:
    response = await worker_client.get("/health")

    assert (response.status_code, response.json()) == (200, {"status": "OK"})


{%- if cookiecutter.job_store != "memory" %}


async def test_health_is_ok_in_a_process_without_workers(make_settings: SettingsFactory) -> None:
    async with serve(create_app(make_settings(start_workers=False))) as client:
        response = await client.get("/health")

    assert (response.status_code, response.json()) == (200, {"status": "OK"})


async def test_a_worker_only_process_serves_health_for_probes_but_not_the_jobs_api(
    make_settings: SettingsFactory,
) -> None:
    async with serve(create_app(make_settings(start_http=False))) as client:
        health = await client.get("/health")
        submitted = await client.post("/jobs", json={"payload": {}})
        documented = (await client.get("/openapi.json")).json()["paths"]

    assert (health.status_code, health.json()) == (200, {"status": "OK"})
    assert_error(submitted, 404)
    assert not any(path.startswith("/jobs") for path in documented)
{%- endif %}


async def test_health_is_degraded_when_the_engine_should_run_and_does_not(
    make_settings: SettingsFactory,
) -> None:
    app = create_app(make_settings())
    async with serve(app) as client:
        await app.state.engine.stop(0)

        response = await client.get("/health")

    assert response.status_code == 503
    assert response.json() == {"status": "DEGRADED", "engine": "not running"}


async def test_stats_counts_jobs_by_status(client: httpx.AsyncClient) -> None:
    empty = await client.get("/stats")
    assert (empty.status_code, empty.json()) == (
        200,
        {"queued": 0, "running": 0, "done": 0, "failed": 0, "cancelled": 0, "total": 0},
    )

    for _ in range(3):
        await submit(client)

    stats = (await client.get("/stats")).json()
    assert stats == {"queued": 3, "running": 0, "done": 0, "failed": 0, "cancelled": 0, "total": 3}


async def test_stats_follow_jobs_as_they_finish(worker_client: httpx.AsyncClient) -> None:
    done = [await submit(worker_client, {"n": n}) for n in range(2)]
    failed = await submit(worker_client, {"task": "fail"}, max_attempts=1)
    for job_id in [*done, failed]:
        await wait_for_job(worker_client, job_id)

    stats = (await worker_client.get("/stats")).json()
    assert stats == {"queued": 0, "running": 0, "done": 2, "failed": 1, "cancelled": 0, "total": 3}


# --- POST /jobs


async def test_submit_accepts_a_job_with_202_and_its_id(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"payload": {"task": "process_data", "value": 42}})

    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"message", "job_id"}
    assert body["message"] == "Job accepted"
    job = await get_job(client, body["job_id"])
    assert job["payload"] == {"task": "process_data", "value": 42}
    assert (job["status"], job["attempt"], job["max_attempts"]) == ("queued", 0, 3)


async def test_submitted_jobs_get_growing_integer_ids(client: httpx.AsyncClient) -> None:
    ids = [await submit(client) for _ in range(3)]

    assert ids == sorted(ids)
    assert len(set(ids)) == 3


@pytest.mark.parametrize("max_attempts", [1, 7, 100, 7.0])
async def test_submit_keeps_max_attempts(client: httpx.AsyncClient, max_attempts: int) -> None:
    job_id = await submit(client, max_attempts=max_attempts)

    # 7.0 is an integer to JSON Schema, and so to the API.
    assert (await get_job(client, job_id))["max_attempts"] == max_attempts


async def test_submit_keeps_a_unicode_payload_exactly(client: httpx.AsyncClient) -> None:
    payload = {"text": 'héllo \u2603 \U0001f600 \x00 "quoted"', "n": [1.5, -0, None, True]}

    job_id = await submit(client, payload)

    assert (await get_job(client, job_id))["payload"] == payload


async def test_submit_without_payload_is_400_missing_payload(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"max_attempts": 3})

    assert_error(response, 400, MISSING_PAYLOAD)


@pytest.mark.parametrize("payload", ["text", [1, 2], None, 42, 1.5, True])
async def test_submit_with_a_payload_that_is_not_an_object_is_400(
    client: httpx.AsyncClient, payload: Any
) -> None:
    response = await client.post("/jobs", json={"payload": payload})

    assert_error(response, 400, "payload: Input should be a valid dictionary")


@pytest.mark.parametrize("max_attempts", [0, 101, -1, "3", 3.5, True, None, [3], {"n": 3}])
async def test_submit_with_bad_max_attempts_is_400(
    client: httpx.AsyncClient, max_attempts: Any
) -> None:
    response = await client.post("/jobs", json={"payload": {}, "max_attempts": max_attempts})

    assert assert_error(response, 400).startswith("max_attempts: ")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"payload": {}',
        b"{'payload': {}}",
        b'{"payload": {},}',
        b"[]",
        b'[{"payload": {}}]',
        b'"payload"',
        b"null",
        b"42",
        b'{"payload": {"x": NaN}}',
        b'{"payload": {"x": Infinity}}',
        b'{"payload": {"x": 1e400}}',
        b'{"payload": {"x": "\\ud800"}}',
        b'{"payload": {"\\udfff": 1}}',
        b'{"payload": {"x": "\xff\xfe"}}',
        b"\xef\xbb\xbf" + b'{"payload": {}}',
    ],
    ids=repr,
)
@pytest.mark.parametrize("path", ["/jobs", "/jobs/schedule"])
async def test_bodies_that_are_not_json_objects_are_400(
    client: httpx.AsyncClient, path: str, body: bytes
) -> None:
    response = await client.post(path, content=body, headers={"content-type": "application/json"})

    assert_error(response, 400)


@pytest.mark.parametrize("depth", [65, 100, 2000, 5000])
async def test_a_deeply_nested_payload_is_400(client: httpx.AsyncClient, depth: int) -> None:
    response = await client.post("/jobs", content=nested_payload(depth))

    assert_error(response, 400)


async def test_a_payload_nested_64_levels_is_stored_and_shown(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", content=nested_payload(64))

    assert response.status_code == 202, response.text
    job = await get_job(client, response.json()["job_id"])
    depth, node = 1, job["payload"]
    while node:
        depth, node = depth + 1, node["a"]
    assert depth == 64


def padded_body(size: int) -> bytes:
    """A valid job body of exactly `size` bytes."""
    frame = b'{"payload": {"pad": ""}}'
    return frame.replace(b'""', b'"' + b"x" * (size - len(frame)) + b'"')


@pytest.mark.parametrize("path", ["/jobs", "/jobs/schedule"])
async def test_a_body_over_max_body_bytes_is_413(client: httpx.AsyncClient, path: str) -> None:
    response = await client.post(path, content=padded_body(MAX_BODY_BYTES + 1))

    assert_error(response, 413)


async def test_a_streamed_body_without_content_length_over_the_limit_is_413(
    client: httpx.AsyncClient,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" " * 1024

    response = await client.post("/jobs", content=chunks())

    assert "content-length" not in response.request.headers
    assert_error(response, 413)


async def test_a_body_of_exactly_max_body_bytes_is_accepted(client: httpx.AsyncClient) -> None:
    body = padded_body(MAX_BODY_BYTES)
    assert len(body) == MAX_BODY_BYTES

    response = await client.post("/jobs", content=body)

    assert response.status_code == 202, response.text


# --- POST /jobs/schedule


@pytest.mark.parametrize(
    ("run_at", "normalised"),
    [
        ("2030-01-02T03:04:05Z", "2030-01-02T03:04:05.000000Z"),
        ("2030-01-02T03:04:05.5Z", "2030-01-02T03:04:05.500000Z"),
        ("2030-01-02T03:04:05.123456+00:00", "2030-01-02T03:04:05.123456Z"),
        ("2030-01-02T03:04:05+02:00", "2030-01-02T01:04:05.000000Z"),
        ("2030-01-01T23:30:00-05:00", "2030-01-02T04:30:00.000000Z"),
        ("2030-01-02T03:04:05", "2030-01-02T03:04:05.000000Z"),
    ],
)
async def test_schedule_accepts_a_job_with_run_at_normalised_to_utc(
    client: httpx.AsyncClient, run_at: str, normalised: str
) -> None:
    response = await client.post(
        "/jobs/schedule", json={"payload": {"task": "report"}, "run_at": run_at}
    )

    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"message", "job_id", "run_at"}
    assert body["message"] == "Job scheduled"
    assert body["run_at"] == normalised
    job = await get_job(client, body["job_id"])
    assert (job["run_at"], job["status"], job["payload"]) == (
        normalised,
        "queued",
        {"task": "report"},
    )


async def test_a_run_at_before_the_year_1000_keeps_its_four_year_digits(
    client: httpx.AsyncClient,
) -> None:
    document = {"payload": {}, "run_at": "0999-01-02T03:04:05+00:00"}
    response = await client.post("/jobs/schedule", json=document)

    assert response.status_code == 202, response.text
    assert response.json()["run_at"] == "0999-01-02T03:04:05.000000Z"
    job = await get_job(client, response.json()["job_id"])
    assert job["run_at"] == "0999-01-02T03:04:05.000000Z"


async def test_schedule_keeps_max_attempts(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/jobs/schedule", json={"payload": {}, "run_at": "2030-01-01T00:00:00Z", "max_attempts": 9}
    )

    assert (await get_job(client, response.json()["job_id"]))["max_attempts"] == 9


async def test_a_job_scheduled_in_the_past_runs_now_and_a_future_one_waits(
    worker_client: httpx.AsyncClient,
) -> None:
    future = await worker_client.post(
        "/jobs/schedule", json={"payload": {}, "run_at": "2999-01-01T00:00:00Z"}
    )
    past = await worker_client.post(
        "/jobs/schedule", json={"payload": {}, "run_at": "2000-01-01T00:00:00Z"}
    )
    assert (future.status_code, past.status_code) == (202, 202)

    ran = await wait_for_job(worker_client, past.json()["job_id"])
    waiting = await get_job(worker_client, future.json()["job_id"])

    assert ran["status"] == "done"
    assert (waiting["status"], waiting["attempt"]) == ("queued", 0)


@pytest.mark.parametrize(
    "document",
    [
        {"payload": {}},
        {"run_at": "2030-01-02T03:04:05Z"},
        {},
        {"payload": {}, "run_at": None},
        {"payload": {}, "run_at": 1893553445},
        {"payload": {}, "run_at": ""},
        {"payload": {}, "run_at": "tomorrow"},
        {"payload": {}, "run_at": "2030-02-30T00:00:00Z"},
        {"payload": {}, "run_at": "9999-12-31T23:59:59-01:00"},
        {"payload": "text", "run_at": "2030-01-02T03:04:05Z"},
        {"payload": [1], "run_at": "2030-01-02T03:04:05Z"},
        {"payload": None, "run_at": "2030-01-02T03:04:05Z"},
    ],
)
async def test_schedule_without_a_valid_payload_and_run_at_is_400_naming_both(
    client: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    response = await client.post("/jobs/schedule", json=document)

    assert_error(response, 400, SCHEDULE_FIELDS)


@pytest.mark.parametrize("max_attempts", [0, 101, "3", True])
async def test_schedule_with_bad_max_attempts_is_400(
    client: httpx.AsyncClient, max_attempts: Any
) -> None:
    document = {"payload": {}, "run_at": "2030-01-01T00:00:00Z", "max_attempts": max_attempts}

    response = await client.post("/jobs/schedule", json=document)

    assert assert_error(response, 400).startswith("max_attempts: ")


# --- GET /jobs


async def test_list_is_newest_first(client: httpx.AsyncClient) -> None:
    ids = [await submit(client, {"n": n}) for n in range(3)]

    assert await listed_ids(client) == ids[::-1]


async def test_list_filters_by_status(client: httpx.AsyncClient, app_store: JobStore) -> None:
    ids = [await submit(client, {"n": n}) for n in range(4)]
    claimed = await app_store.fetch_jobs({"default": 2})
    await app_store.complete_job(claimed[0], None)

    assert await listed_ids(client, "?status=queued") == [ids[3], ids[2]]
    assert await listed_ids(client, "?status=running") == [ids[1]]
    assert await listed_ids(client, "?status=done") == [ids[0]]
    assert await listed_ids(client, "?status=failed") == []


async def test_list_pages_with_page_and_per_page(client: httpx.AsyncClient) -> None:
    newest_first = [await submit(client, {"n": n}) for n in range(5)][::-1]

    pages = [await listed_ids(client, f"?page={page}&per_page=2") for page in (1, 2, 3, 4)]

    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:], []]
    assert await listed_ids(client, "?status=queued&page=2&per_page=3") == newest_first[3:]


async def test_list_shows_50_per_page_by_default_and_at_most_200(
    client: httpx.AsyncClient, app_store: JobStore
) -> None:
    await enqueue_all(app_store, [NewJob(payload={"n": n}) for n in range(205)])

    assert len(await listed_ids(client)) == 50
    assert len(await listed_ids(client, "?per_page=200")) == 200
    assert len(await listed_ids(client, "?per_page=201")) == 200
    assert len(await listed_ids(client, "?per_page=100000")) == 200
    assert len(await listed_ids(client, "?per_page=500&page=2")) == 5


@pytest.mark.parametrize("page", ["99999999", "1" + "0" * 20, "9" * 30, "9" * 300])
async def test_list_of_a_page_far_beyond_the_end_is_empty(
    client: httpx.AsyncClient, page: str
) -> None:
    await submit(client)

    assert await listed_ids(client, f"?page={page}&per_page=200") == []


@pytest.mark.parametrize(
    "query",
    [
        "?status=finished",
        "?status=",
        "?status=QUEUED",
        "?page=0",
        "?page=-1",
        "?page=abc",
        "?page=1.5",
        "?page=",
        "?page=1e3",
        "?page=" + "9" * 5000,
        "?per_page=0",
        "?per_page=-1",
        "?per_page=ten",
    ],
)
async def test_list_with_a_bad_query_is_400(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/jobs{query}")

    assert_error(response, 400)


# --- GET /jobs/{id}


async def test_a_queued_job_shows_exactly_the_documented_fields(
    client: httpx.AsyncClient,
) -> None:
    job_id = await submit(client, {"task": "process_data", "value": 42}, max_attempts=5)

    job = await get_job(client, job_id)

    assert set(job) == JOB_KEYS
    assert job["id"] == job_id
    assert job["payload"] == {"task": "process_data", "value": 42}
    assert (job["status"], job["attempt"], job["max_attempts"]) == ("queued", 0, 5)
    assert UTC_TIMESTAMP.fullmatch(job["run_at"])
    assert UTC_TIMESTAMP.fullmatch(job["inserted_at"])
    assert job["run_at"] == job["inserted_at"]
    assert (job["started_at"], job["finished_at"], job["result"]) == (None, None, None)
    assert job["errors"] == []


async def test_a_done_job_shows_its_result_and_utc_timestamps(
    worker_client: httpx.AsyncClient,
) -> None:
    job_id = await submit(worker_client, {"task": "process_data", "value": 42})

    job = await wait_for_job(worker_client, job_id)

    assert set(job) == JOB_KEYS
    assert (job["status"], job["attempt"], job["errors"]) == ("done", 1, [])
    for key in ("run_at", "inserted_at", "started_at", "finished_at"):
        assert UTC_TIMESTAMP.fullmatch(job[key]), key
    assert job["inserted_at"] <= job["started_at"] <= job["finished_at"]
    assert job["result"] == {
        "status": "completed",
        "job_id": job_id,
        "processed_at": job["result"]["processed_at"],
    }
    assert UTC_TIMESTAMP.fullmatch(job["result"]["processed_at"])


async def test_a_failed_job_shows_one_error_per_attempt(
    worker_client: httpx.AsyncClient,
) -> None:
    job_id = await submit(worker_client, {"task": "fail"}, max_attempts=2)

    job = await wait_for_job(worker_client, job_id, "failed")

    assert (job["attempt"], job["result"]) == (2, None)
    assert job["errors"] == ["RuntimeError: task 'fail' always fails"] * 2
    assert UTC_TIMESTAMP.fullmatch(job["finished_at"])


@pytest.mark.parametrize(
    "job_id",
    ["999999", str(2**31), str(2**63 - 1), "0", "-1", str(2**63), str(2**64), "9" * 300],
)
async def test_an_unknown_job_is_404_job_not_found(client: httpx.AsyncClient, job_id: str) -> None:
    await submit(client)

    response = await client.get(f"/jobs/{job_id}")

    assert_error(response, 404, "Job not found")


@pytest.mark.parametrize("job_id", ["abc", "1.5", "1e3", "0x1", "9" * 5000, "%20"])
async def test_a_job_id_that_is_not_an_integer_is_400(
    client: httpx.AsyncClient, job_id: str
) -> None:
    response = await client.get(f"/jobs/{job_id}")

    assert_error(response, 400)


# --- Routes of your own


class Order(BaseModel):
    customer: str
    quantity: int = Field(ge=1)


async def test_a_route_of_your_own_reports_invalid_fields_as_400_naming_them(
    settings: Settings,
) -> None:
    app = create_app(settings)

    @app.post("/orders", status_code=201)
    async def place_order(order: Order) -> Order:
        return order

    async with serve(app) as client:
        placed = await client.post("/orders", json={"customer": "acme", "quantity": 2})
        refused = await client.post("/orders", json={"quantity": 0})
        document = (await client.get("/openapi.json")).json()

    assert (placed.status_code, placed.json()) == (201, {"customer": "acme", "quantity": 2})
    assert_error(
        refused,
        400,
        "customer: Field required; quantity: Input should be greater than or equal to 1",
    )
    responses = document["paths"]["/orders"]["post"]["responses"]
    assert set(responses) == {"201", "400"}
    assert responses["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }


# --- Routing


@pytest.mark.parametrize("path", ["/nope", "/jobs/1/extra", "/Jobs", "/stats/x"])
async def test_an_unknown_route_is_404_with_a_json_error(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)

    assert_error(response, 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/jobs/1", "GET, HEAD"),
        ("PUT", "/jobs", "GET, HEAD, POST"),
        ("OPTIONS", "/jobs", "GET, HEAD, POST"),
        ("GET", "/jobs/schedule", "POST"),
        ("POST", "/", "GET, HEAD"),
        ("PATCH", "/health", "GET, HEAD"),
        ("POST", "/stats", "GET, HEAD"),
    ],
)
async def test_a_wrong_method_is_405_naming_every_allowed_method(
    client: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    response = await client.request(method, path)

    assert_error(response, 405)
    assert response.headers["allow"] == allowed


# --- Anything at all


FUZZ_KEYS = ["payload", "run_at", "max_attempts", "task", "", "Payload", "payload\u0000"]
FUZZ_STRINGS = [
    "",
    "2030-01-02T03:04:05Z",
    "2030-01-02T03:04:05+14:00",
    "0001-01-01T00:00:00",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59-23:59",
    "2030-02-30",
    "\ud800",
    "\x00",
    "\u202e",
    "\U0001f600",
    "sleep",
    "fail",
    "x" * 300,
]


def fuzz_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON-ish value; Python's json writes NaN, Infinity and lone surrogates too."""
    kind = rng.randrange(10 if depth < 4 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 3, 100, 101, 2**63, 2**64, -(2**70), 10**30])
    if kind == 3:
        return rng.choice([0.5, -0.0, 3.0, 1e308, float("nan"), float("inf")])
    if kind in (4, 5, 6):
        if rng.random() < 0.5:
            return rng.choice(FUZZ_STRINGS)
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(8)))
    if kind in (7, 8):
        return {rng.choice(FUZZ_KEYS): fuzz_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [fuzz_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def fuzz_bodies(seed: int, count: int) -> Iterator[bytes]:
    """Bodies from almost right to nonsense: documents with the right keys and wrong values,
    random JSON, damaged JSON, deep nesting and random bytes."""
    rng = random.Random(seed)
    for _ in range(count):
        kind = rng.randrange(6)
        if kind <= 1:
            document: Any = {key: fuzz_value(rng) for key in FUZZ_KEYS[:3] if rng.random() < 0.8}
            if rng.random() < 0.5:
                document["payload"] = {"task": rng.choice(FUZZ_STRINGS), "v": fuzz_value(rng)}
            yield json.dumps(document).encode()
        elif kind == 2:
            yield json.dumps(fuzz_value(rng)).encode()
        elif kind == 3:
            text = bytearray(
                json.dumps({"payload": fuzz_value(rng), "run_at": "2030-01-01"}).encode()
            )
            for _ in range(rng.randrange(1, 4)):
                position = rng.randrange(len(text) + 1)
                text[position : position + rng.randrange(3)] = bytes([rng.randrange(256)])
            yield bytes(text)
        elif kind == 4:
            depth = rng.choice([63, 64, 65, 1000, 1025, 5000])
            opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
            yield b'{"payload": {"a": ' + opener * depth + closer * depth + b"}}"
        else:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(64)))


async def test_no_body_whatever_it_holds_yields_a_server_error(
    client: httpx.AsyncClient,
) -> None:
    accepted = []
    for path in ("/jobs", "/jobs/schedule"):
        for body in fuzz_bodies(seed=20250101, count=300):
            response = await client.post(path, content=body)
            assert response.status_code < 500, (path, body, response.text)
            if response.status_code == 202:
                accepted.append(response.json()["job_id"])
            else:
                assert_error(response, response.status_code)

    assert accepted, "the fuzzer should produce some valid bodies too"
    for job_id in accepted:
        assert (await get_job(client, job_id))["id"] == job_id
    listed = []
    for page in range(1, len(accepted) // 200 + 2):
        listed += await listed_ids(client, f"?per_page=200&page={page}")
    assert sorted(listed) == sorted(accepted)
    stats = (await client.get("/stats")).json()
    assert stats["total"] == stats[str(JobStatus.QUEUED)] == len(accepted)
