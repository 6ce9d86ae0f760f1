"""/metrics: every metric is there and moves with the jobs; labels stay few; processes add up."""

import asyncio
{%- if cookiecutter.job_store != "memory" %}
import subprocess
import sys
{%- endif %}
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.jobs.model import Job
from {{ cookiecutter.package_name }}.jobs.registry import TaskRegistry
from {{ cookiecutter.package_name }}.settings import Settings, SettingsError, load_settings

{% if cookiecutter.job_store == "memory" -%}
from .conftest import SettingsFactory, serve, wait_until
{% else -%}
from .conftest import SettingsFactory, free_port, poll_until, serve, stop, wait_until
{% endif %}
METRIC_NAMES = {
    "jobs_enqueued_total",
    "jobs_finished_total",
    "job_run_duration_seconds",
    "job_queue_wait_seconds",
    "job_store_jobs",
    "job_workers_busy",
    "job_workers",
    "http_requests_total",
    "http_request_duration_seconds",
}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(exposition: str) -> Samples:
    """Every sample, keyed by its name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for sample_name, labels in samples if sample_name == name]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


class Gate:
    """Holds the `wait` task's jobs until opened, to catch workers busy."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    # Retries wait a minute: a retried job stays queued while the test looks.
    return make_settings(worker_pool_size=3, retry_backoff_base=60, retry_backoff_max=60)


@pytest.fixture
def app(settings: Settings, gate: Gate) -> FastAPI:
    registry = TaskRegistry()

    @registry.task("ok")
    async def ok(_job: Job) -> str:
        return "fine"

    @registry.task("broken")
    def broken(_job: Job) -> None:
        raise ValueError("bad input")

    @registry.task("wait")
    async def wait(_job: Job) -> None:
        await gate.opened.wait()

    return create_app(settings, registry=registry)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as client:
        yield client


async def submit(client: httpx.AsyncClient, task: str, max_attempts: int = 3) -> int:
    body = {"payload": {"task": task}, "max_attempts": max_attempts}
    response = await client.post("/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id: int = response.json()["job_id"]
    return job_id


async def wait_for_status(client: httpx.AsyncClient, job_id: int, status: str) -> None:
    async def reached() -> bool:
        return bool((await client.get(f"/jobs/{job_id}")).json()["status"] == status)

    await wait_until(reached, message=f"job {job_id} to be {status}")


async def test_every_metric_is_declared_before_any_job_runs(client: httpx.AsyncClient) -> None:
    exposition = (await client.get("/metrics")).text
    declared = {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE")}
    assert declared >= METRIC_NAMES
    samples = parse(exposition)
    assert value(samples, "job_workers") == 3
    assert value(samples, "job_workers_busy") == 0
    assert value(samples, "job_store_jobs", status="queued") == 0


async def test_job_metrics_move_as_jobs_run_fail_and_retry(client: httpx.AsyncClient) -> None:
    done = await submit(client, "ok")
    retried = await submit(client, "broken", max_attempts=2)
    failed = await submit(client, "broken", max_attempts=1)
    await wait_for_status(client, done, "done")
    await wait_for_status(client, failed, "failed")

    async def retried_once() -> bool:
        job = (await client.get(f"/jobs/{retried}")).json()
        return bool(job["status"] == "queued" and job["errors"])

    await wait_until(retried_once)
    samples = await scrape(client)

    assert value(samples, "jobs_enqueued_total", task="ok") == 1
    assert value(samples, "jobs_enqueued_total", task="broken") == 2
    assert value(samples, "jobs_finished_total", task="ok", outcome="done") == 1
    assert value(samples, "jobs_finished_total", task="broken", outcome="retried") == 1
    assert value(samples, "jobs_finished_total", task="broken", outcome="failed") == 1
    assert value(samples, "job_run_duration_seconds_count", task="ok") == 1
    assert value(samples, "job_run_duration_seconds_count", task="broken") == 2
    assert value(samples, "job_queue_wait_seconds_count", task="broken") == 2
    assert value(samples, "job_queue_wait_seconds_bucket", task="ok", le="+Inf") == 1
    assert value(samples, "job_store_jobs", status="done") == 1
    assert value(samples, "job_store_jobs", status="failed") == 1
    assert value(samples, "job_store_jobs", status="queued") == 1
    assert value(samples, "job_store_jobs", status="running") == 0
    posted = {"handler": "/jobs", "method": "POST", "status": "2xx"}
    assert value(samples, "http_requests_total", **posted) == 3
    posted_latency = {"handler": "/jobs", "method": "POST"}
    assert value(samples, "http_request_duration_seconds_count", **posted_latency) == 3


async def test_busy_workers_count_the_handlers_running_now(
    client: httpx.AsyncClient, gate: Gate
) -> None:
    held = [await submit(client, "wait") for _ in range(2)]
    for job_id in held:
        await wait_for_status(client, job_id, "running")
    samples = await scrape(client)
    assert value(samples, "job_workers_busy") == 2
    assert value(samples, "job_store_jobs", status="running") == 2

    gate.opened.set()
    for job_id in held:
        await wait_for_status(client, job_id, "done")
    assert value(await scrape(client), "job_workers_busy") == 0


async def test_labels_stay_few_under_a_thousand_task_names(client: httpx.AsyncClient) -> None:
    # More names than the samples allowed below: one label each could not pass.
    names = [f"task-{number}" for number in range(1_000)]
    for start in range(0, len(names), 500):
        await asyncio.gather(*(submit(client, name) for name in names[start : start + 500]))
    for method, path in [("FOO", "/jobs"), ("GET", "/random/1"), ("GET", "/random/2")]:
        await client.request(method, path)

    async def all_done() -> bool:
        return bool((await client.get("/stats")).json()["done"] == len(names))

    await wait_until(all_done, timeout=60, message="1,000 jobs to finish")
    samples = await scrape(client)

    assert series(samples, "jobs_enqueued_total") == [{"task": "default"}]
    finished = series(samples, "jobs_finished_total")
    assert {labels["task"] for labels in finished} == {"default"}
    assert {labels["outcome"] for labels in finished} == {
        "done",
        "retried",
        "failed",
        "cancelled",
    }
    assert value(samples, "jobs_finished_total", task="default", outcome="done") == len(names)
    requests = series(samples, "http_requests_total")
    # Paths no route has are not counted; probes and scrapes neither.
    assert {labels["handler"] for labels in requests} == {"/jobs", "/stats"}
    assert {labels["status"] for labels in requests} == {"2xx", "4xx"}
    assert len(samples) < 300


async def test_a_worker_only_process_serves_metrics_and_health_but_not_the_jobs_api(
    make_settings: SettingsFactory,
) -> None:
{%- if cookiecutter.job_store == "memory" %}
    # This store needs both roles in one process; a worker-only app is built here only to
    # check its routes.
    settings = make_settings().model_copy(update={"start_http": False})
{%- else %}
    settings = make_settings(start_http=False)
{%- endif %}
    async with serve(create_app(settings)) as client:
        assert (await client.get("/health")).status_code == 200
        assert value(await scrape(client), "job_workers") == settings.worker_pool_size
        assert (await client.post("/jobs", json={"payload": {}})).status_code == 404


def test_a_missing_multiprocess_directory_is_a_clear_settings_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
{%- if cookiecutter.job_store == "postgres" %}
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
{%- endif %}
    with pytest.raises(SettingsError, match=r"PROMETHEUS_MULTIPROC_DIR: .* is not a directory"):
        load_settings()
{%- if cookiecutter.job_store != "memory" %}


def test_processes_sharing_a_port_report_the_sum_of_their_metrics(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """uvicorn --workers 2 with PROMETHEUS_MULTIPROC_DIR: any process answers with the sum."""
    multiproc_dir = tmp_path / "metrics"
    multiproc_dir.mkdir()
    port = free_port()
    env = {
        **service_env,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
        # API-only processes: the jobs wait in the store, the counts stay put.
        "START_WORKERS": "false",
    }
    command = [sys.executable, "-m", "uvicorn", "{{ cookiecutter.package_name }}.main:app"]
    options = ["--workers", "2", "--port", str(port), "--host", "127.0.0.1"]
    with (tmp_path / "uvicorn.log").open("wb") as log:
        server = subprocess.Popen(
            [*command, *options], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        base_url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return httpx.get(f"{base_url}/health").status_code == 200
            except httpx.TransportError:
                return False

        poll_until(answers, 30, "uvicorn --workers 2 to answer")
        submitted = 60
        for _ in range(submitted):
            # A connection each, so that both processes take some of the requests.
            response = httpx.post(f"{base_url}/jobs", json={"payload": {"task": "t"}})
            assert response.status_code == 202
        # Each process keeps its own files: both served requests.
        poll_until(lambda: len(list(multiproc_dir.glob("counter_*.db"))) == 2, 10, "2 processes")
        for _ in range(6):
            samples = parse(httpx.get(f"{base_url}/metrics").text)
            assert value(samples, "jobs_enqueued_total", task="default") == submitted
            assert value(samples, "job_store_jobs", status="queued") == submitted
    finally:
        stop(server)
        print((tmp_path / "uvicorn.log").read_text(errors="replace"))
{%- endif %}
