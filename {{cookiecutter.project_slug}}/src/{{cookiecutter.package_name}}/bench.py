"""Benchmarks of this service: run `python -m <package>.bench` (README, "Performance").

Measures, on this machine and with this render's job store:
  1. POST /jobs throughput and latency against the real server, next to a bare endpoint in
     the same app that parses and validates the same body but stores nothing, the
     latency of one client sending one request at a time, and POST /jobs/bulk's jobs/s;
  2. end-to-end throughput of no-op jobs: enqueue N, run them all to completion;
  3. wake-up latency of an idle engine: from the insert of one job to its handler starting;
  4. GET /jobs?page=N, GET /stats{% if cookiecutter.use_dashboard == "yes" %} and the dashboard's pages{% endif %} with a large store (--large-store,
     default 1,000,000);
  5. retention: deleting 1,000,000 expired jobs (--prune) while no-op jobs run, and those
     jobs' throughput against a run without deleting.
Numbers vary with the machine; compare runs made on the same one.
"""

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
{%- if cookiecutter.job_store == "sqlite" %}
import tempfile
{%- endif %}
import time
import urllib.request
{%- if cookiecutter.job_store == "postgres" %}
import uuid
{%- endif %}
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

{% if cookiecutter.job_store == "postgres" -%}
import asyncpg
{% endif -%}
import uvicorn
from fastapi import APIRouter, FastAPI
from starlette.types import Message, Scope

from . import event_loop
from .__main__ import tune_garbage_collector
from .api import jobs
from .api.json_body import OrjsonRoute
from .api.schemas import JobAccepted
from .app import create_app
{%- if cookiecutter.use_dashboard == "yes" %}
from .dashboard.pages import AHEAD_COUNTED
{%- endif %}
from .jobs.clock import SystemClock
from .jobs.engine import Engine
from .jobs.model import DEFAULT_QUEUE, Job, JobStatus, NewJob
from .jobs.registry import TaskRegistry
from .jobs.retention import delete_expired_jobs
from .jobs.store import JobStore, make_store
from .settings import Settings, SettingsError, load_settings

T = TypeVar("T")
BARE_PATH = "/bench/bare"
HTTP_PATHS = (BARE_PATH, "/jobs")
# The bare endpoint and POST /jobs take turns this many times. A shared machine's speed can
# nearly halve within seconds, so each /jobs turn is compared with the bare turn just before
# it, and the median of those shares is reported.
TURNS = 10
# Exit codes of a service process that stopped as asked.
STOPPED = (0, -signal.SIGTERM)
JOB_BODY = b'{"payload": {"task": "noop", "value": 42}}'
BULK_SIZE = 1000
BULK_BODY = json.dumps({"jobs": [{"payload": {"task": "noop", "n": n}} for n in range(BULK_SIZE)]})
{%- if cookiecutter.job_store != "memory" %}
# Ingest alone (an API-only process), then the usual process that also runs the jobs.
WORKER_MODES = (False, True)
{%- else %}
# This store needs the workers in the process that serves the API.
WORKER_MODES = (True,)
{%- endif %}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="HTTP requests per endpoint")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument("--jobs", type=int, default=50_000, help="jobs for the end-to-end run")
    parser.add_argument("--wakeups", type=int, default=500, help="samples of wake-up latency")
    parser.add_argument("--large-store", type=int, default=1_000_000, help="0 skips the run")
    parser.add_argument("--prune", type=int, default=1_000_000, help="expired jobs; 0 skips")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        load_settings()  # a bad setting is one line here, not a traceback from a benchmark
    except SettingsError as exc:
        sys.exit(f"error: {exc}")
    if args.serve:
        serve_with_bare_endpoint(args.serve)
        return
    run_benchmarks(args)


@contextmanager
def empty_store() -> Iterator[None]:
    """Give the next benchmark a new, empty store, and remove it afterwards."""
{%- if cookiecutter.job_store == "sqlite" %}
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["DATABASE_URL"] = f"sqlite:///{scratch}/bench.db"
        yield
{%- elif cookiecutter.job_store == "postgres" %}
    # A schema of its own in the database the settings name.
    database_url = os.environ.setdefault("BENCH_DATABASE_URL", Settings().database_url)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(run_sql(database_url, f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in database_url else "?"
    os.environ["DATABASE_URL"] = f"{database_url}{separator}search_path={schema}"
    try:
        yield
    finally:
        asyncio.run(run_sql(database_url, f"DROP SCHEMA {schema} CASCADE"))
{%- else %}
    # Every process starts with an empty store of its own.
    yield
{%- endif %}


def run_benchmarks(args: argparse.Namespace) -> None:
    # Job events would be a log line per job; the numbers are for the engine, not the terminal.
    logging.getLogger().setLevel(logging.WARNING)
    # The engines measured in this process run as `python -m` runs them.
    tune_garbage_collector()
    settings = Settings()
    store_name = type(make_store(settings, SystemClock())).__name__
    print(f"{store_name}, pool size {settings.worker_pool_size}, {os.cpu_count()} CPUs")
    for workers in WORKER_MODES:
        with empty_store():
            bench_http(args.requests, args.connections, workers=workers)
    with empty_store():
        event_loop.run(bench_end_to_end(args.jobs))
    with empty_store():
        event_loop.run(bench_wakeup(args.wakeups))
{%- if cookiecutter.job_store == "postgres" %}
    with empty_store():
        event_loop.run(bench_worker_processes(args.jobs, processes=2))
    with empty_store():
        event_loop.run(bench_cross_instance_wakeup(args.wakeups))
{%- endif %}
    if args.large_store:
        with empty_store():
            event_loop.run(bench_large_store(args.large_store))
    if args.prune:
        with empty_store():
            event_loop.run(bench_retention(args.prune, args.jobs))


def serve_with_bare_endpoint(port: int) -> None:
    """The service as `python -m` runs it, plus the bare endpoint to compare POST /jobs with."""
{%- if cookiecutter.use_auth == "yes" %}
    # The load sends no API key: the jobs API is measured open, as the bare endpoint is.
    app = create_app(Settings(api_keys=()))
{%- else %}
    app = create_app(Settings())
{%- endif %}
    counter = iter(range(1, sys.maxsize))
    # Parsed and validated as POST /jobs is, answered as it is: only the store is left out.
    bare_router = APIRouter(route_class=OrjsonRoute, strict_content_type=False)

    @bare_router.post(BARE_PATH, status_code=202)
    async def bare(_: NewJob) -> JobAccepted:
        return JobAccepted(job_id=next(counter))

    app.include_router(bare_router)
    # Tried right after the jobs API, so that finding the route costs both about the same.
    routes = app.router.routes
    jobs_api = next(
        i for i, r in enumerate(routes) if getattr(r, "original_router", 0) is jobs.router
    )
    routes.insert(jobs_api + 1, routes.pop())
    tune_garbage_collector()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def bench_http(requests: int, connections: int, *, workers: bool) -> None:
    label = "with workers running" if workers else "START_WORKERS=false"
    print(f"\nPOST throughput, {connections} connections, {requests} requests each ({label})")
    with running_server(workers) as port:
        for path in HTTP_PATHS:
            asyncio.run(post_load(port, path, requests // 10, connections))  # warm-up
        seconds: dict[str, list[float]] = {path: [] for path in HTTP_PATHS}
        latencies: dict[str, list[float]] = {path: [] for path in HTTP_PATHS}
        for _ in range(TURNS):
            for path in HTTP_PATHS:
                took, answered = asyncio.run(post_load(port, path, requests // TURNS, connections))
                seconds[path].append(took)
                latencies[path].extend(answered)
        for path in HTTP_PATHS:
            rate = len(latencies[path]) / sum(seconds[path])
            p50, p99 = percentile(latencies[path], 50), percentile(latencies[path], 99)
            line = f"  {path:12} {rate:8.0f} req/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms"
            if path != BARE_PATH:
                # Each turn's throughput against the bare turn just before it.
                turns = zip(seconds[BARE_PATH], seconds[path], strict=True)
                shares = sorted(bare / took for bare, took in turns)
                line += (
                    f"   {statistics.median(shares):4.0%} of bare"
                    f" (turns {shares[0]:.0%} to {shares[-1]:.0%})"
                )
            print(line)
        # One client waiting for each answer before it sends the next: the latency a lone
        # request sees, commit included, once the jobs posted above have all run.
        if workers:
            wait_until_idle(port)
        took, answered = asyncio.run(post_load(port, "/jobs", max(requests // 10, 2), 1))
        p50, p99 = percentile(answered, 50), percentile(answered, 99)
        print(
            f"  one client, one request at a time: {len(answered) / took:6.0f} req/s"
            f"   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms"
        )
        bulk_requests = max(requests // 500, 4)
        body = BULK_BODY.encode()
        took, answered = asyncio.run(post_load(port, "/jobs/bulk", bulk_requests, 2, body))
        print(
            f"  /jobs/bulk, {BULK_SIZE} jobs a request, 2 connections:"
            f" {len(answered) * BULK_SIZE / took:8.0f} jobs/s"
            f"   p50 {percentile(answered, 50):6.2f} ms"
        )


@contextmanager
def running_server(workers: bool) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "START_WORKERS": str(workers).lower(), "LOG_LEVEL": "warning"}
    command = [sys.executable, "-m", __spec__.name, "--serve", str(port)]
    server = subprocess.Popen(command, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:  # not listening yet, or 503 while the store opens
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the benchmark server did not start")
            time.sleep(0.05)
        yield port
    finally:
        stop_all([server])


def wait_until_idle(port: int) -> None:
    """Wait until the server's workers have run every job it holds."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as response:
            stats = json.load(response)
        if stats["queued"] == stats["running"] == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("the benchmark server did not finish its jobs within 300 s")


async def post_load(
    port: int, path: str, requests: int, connections: int, body: bytes = JOB_BODY
) -> tuple[float, list[float]]:
    """POST `requests` times over keep-alive connections: elapsed seconds, latencies in ms."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    remaining = requests
    latencies: list[float] = []

    async def client() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            writer.write(request)
            status = await reader.readline()
            length = 0
            while (header := await reader.readline()) not in (b"\r\n", b""):
                if header.lower().startswith(b"content-length:"):
                    length = int(header.split(b":")[1])
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - started) * 1000)
            if b" 202 " not in status:
                raise RuntimeError(f"{path} answered {status!r}")
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return time.perf_counter() - started, latencies


async def bench_end_to_end(count: int) -> None:
    settings = Settings()
    store, engine = service_engine(settings, TaskRegistry())
    await store.open()
    try:
        started = time.perf_counter()
        for first in range(0, count, 1000):
            batch = min(1000, count - first)
            await store.insert_all_jobs([NewJob(payload={"task": "noop"})] * batch)
        enqueued = time.perf_counter() - started
        started = time.perf_counter()
        await engine.start()
        await wait_for_done(store, count)
        ran = time.perf_counter() - started
        await engine.stop(0)
    finally:
        await store.close()
    print(f"\nEnd to end, {count} no-op jobs, pool size {settings.worker_pool_size}")
    print(f"  enqueue (batches of 1000)  {count / enqueued:8.0f} jobs/s")
    print(f"  run to completion          {count / ran:8.0f} jobs/s")


async def bench_wakeup(samples: int) -> None:
    settings = Settings()
    registry = TaskRegistry()
    store, engine = service_engine(settings, registry)
    started_at: dict[int, float] = {}

    @registry.task("probe")
    async def probe(job: Job) -> None:
        started_at[job.id] = time.perf_counter()

    await store.open()
    await engine.start()
    latencies = []
    try:
        for _ in range(samples):
            await asyncio.sleep(0.005)  # let the engine go idle
            inserted = time.perf_counter()
            job, _ = await store.insert_job(NewJob(payload={"task": "probe"}))
            while job.id not in started_at:
                await asyncio.sleep(0.0005)
            latencies.append((started_at[job.id] - inserted) * 1000)
    finally:
        await engine.stop(0)
        await store.close()
    print(f"\nWake-up latency, insert to handler start, {samples} samples")
    print(f"  p50 {percentile(latencies, 50):.2f} ms   p99 {percentile(latencies, 99):.2f} ms")


{%- if cookiecutter.job_store == "postgres" %}


async def bench_worker_processes(count: int, processes: int) -> None:
    """End to end with the jobs run by other worker-only instances of the service."""
    store = make_store(Settings(), SystemClock())
    await store.open()
    with worker_instances(processes):
        await wait_for_listeners(processes)
        started = time.perf_counter()
        for first in range(0, count, 1000):
            batch = min(1000, count - first)
            await store.insert_all_jobs([NewJob(payload={"task": "noop"})] * batch)
        await wait_for_done(store, count)
        ran = time.perf_counter() - started
    await store.close()
    print(f"\nEnd to end, {count} no-op jobs, {processes} worker processes (enqueue included)")
    print(f"  run to completion          {count / ran:8.0f} jobs/s")


async def bench_cross_instance_wakeup(samples: int) -> None:
    """From an insert here to the start of the job in another, idle, instance."""
    clock = SystemClock()
    store = make_store(Settings(), clock)
    await store.open()
    latencies = []
    with worker_instances(1):
        await wait_for_listeners(1)
        for _ in range(samples):
            await asyncio.sleep(0.005)  # let the other instance go idle
            inserted = clock.now()
            job, _ = await store.insert_job(NewJob(payload={"task": "noop"}))
            while (started := await store.get_job(job.id)) is None or not started.started_at:
                await asyncio.sleep(0.0005)
            latencies.append((started.started_at - inserted).total_seconds() * 1000)
    await store.close()
    print(f"\nCross-instance wake-up, insert here to start there, {samples} samples")
    print(f"  p50 {percentile(latencies, 50):.2f} ms   p99 {percentile(latencies, 99):.2f} ms")


@contextmanager
def worker_instances(count: int) -> Iterator[None]:
    """`count` worker-only instances of the service (`python -m`) on this database."""
    env = {**os.environ, "START_HTTP": "false", "LOG_LEVEL": "warning"}
    package = __spec__.parent
    assert package, "run as python -m <package>.bench"
    workers = []
    for _ in range(count):
        # A worker-only instance still listens, for /health: a port each.
        env["PORT"] = str(free_port())
        workers.append(subprocess.Popen([sys.executable, "-m", package], env=env))
    try:
        yield
    finally:
        stop_all(workers)


async def wait_for_listeners(instances: int) -> None:
    """Wait until `instances` more connections than this one LISTEN for new jobs."""
    listening = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
    )
    deadline = time.monotonic() + 30
    while await fetch_value(listening) < instances + 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker instances did not start")
        await asyncio.sleep(0.05)


async def fetch_value(query: str) -> int:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        value: int = await conn.fetchval(query)
        return value
    finally:
        await conn.close()


async def run_sql(database_url: str, statement: str) -> None:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()
{%- endif %}


async def bench_large_store(count: int) -> None:
    """Time reads in-process (no network) with `count` jobs scheduled far ahead, so none runs."""
    app = create_app(Settings({% if cookiecutter.use_auth == "yes" %}api_keys=(){% endif %}))
    later = SystemClock().now() + timedelta(days=365)
    async with app.router.lifespan_context(app):
        store: JobStore = app.state.store
        for first in range(0, count, 10_000):
            # A few queues and tasks, for the filtered listings below.
            batch = [
                NewJob(
                    payload={"task": f"task-{(first + n) % 7}", "n": first + n},
                    queue=f"queue-{(first + n) % 5}",
                    run_at=later,
                )
                for n in range(min(10_000, count - first))
            ]
            await store.insert_all_jobs(batch)
{%- if cookiecutter.job_store == "postgres" %}
        # In service autovacuum analyzes a table this size within a minute of filling it;
        # without statistics the planner misjudges combined filters.
        await run_sql(os.environ["DATABASE_URL"], "ANALYZE jobs")
{%- endif %}
{%- if cookiecutter.use_dashboard == "yes" %}
        # And due jobs that no worker takes, for a page that counts the jobs ahead of one.
        await app.state.engine.stop(0)
        due = [NewJob(payload={"n": n}, queue="due") for n in range(AHEAD_COUNTED * 2)]
        *_, (last_due, _) = await store.insert_all_jobs(due)
{%- endif %}
        print(f"\nReads with {count} jobs in the store (median of 7 requests, in-process)")
        last_page = count // 50
        for url in (
            "/stats",
            "/jobs",
            f"/jobs?page={last_page // 2}",
            f"/jobs?page={last_page}",
            f"/jobs?status=queued&page={last_page // 2}",
            "/jobs?status=done",
            "/jobs?queue=queue-3",
            "/jobs?task=task-4",
            "/jobs?status=queued&queue=queue-3&task=task-4",
            "/jobs?queue=queue-3&task=nothing",
            f"/jobs/{count // 2}",
            "/queues",
{%- if cookiecutter.use_dashboard == "yes" %}
            "/dashboard/",
            "/dashboard/jobs?status=queued&queue=queue-3&task=task-4",
            f"/dashboard/jobs/{count // 2}",
            f"/dashboard/jobs/{last_due.id}",
            "/dashboard/queues",
{%- endif %}
        ):
            timings = []
            for _ in range(7):
                started = time.perf_counter()
                status = await get_in_process(app, url)
                timings.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    raise RuntimeError(f"GET {url} answered {status}")
            print(f"  GET {url:40} {statistics.median(timings):7.2f} ms")


class ShiftedClock:
    """Wall-clock time moved by `shift`: what runs while it is negative looks that old."""

    def __init__(self, shift: timedelta) -> None:
        self.shift = shift

    def now(self) -> datetime:
        return datetime.now(UTC) + self.shift


async def bench_retention(expired: int, jobs: int) -> None:
    """Run `jobs` no-op jobs next to `expired` done jobs past their retention: first as they
    are, then while retention deletes them."""
    settings = Settings()
    retention = {JobStatus.DONE: timedelta(days=7)}
    clock = ShiftedClock(-timedelta(days=8))
    store = make_store(settings, clock)
    await store.open()
    try:
        await finish_jobs_directly(store, expired)
{%- if cookiecutter.job_store == "postgres" %}
        # Those jobs took days to finish, and autovacuum would have kept up with them: do
        # what it would have done, or the runs below walk millions of dead index entries.
        await run_sql(os.environ["DATABASE_URL"], "VACUUM ANALYZE jobs")
{%- endif %}
        clock.shift = timedelta(0)
        last_job_id = await enqueue_noop_jobs(store, jobs)
        alone = await run_until_done(store, settings, clock, last_job_id)
        last_job_id = await enqueue_noop_jobs(store, jobs)
        running = asyncio.create_task(run_until_done(store, settings, clock, last_job_id))
        pruned_for, deleted = await timed(delete_expired_jobs(store, retention, clock))
        left = await store.count_jobs()
        ran_while_deleting = jobs - left.get(JobStatus.QUEUED, 0) - left.get(JobStatus.RUNNING, 0)
        beside = await running
    finally:
        await store.close()
    if deleted < expired:
        raise RuntimeError(f"retention deleted {deleted} of {expired} expired jobs")
    # Only the part of the run that the deletes overlapped says what deleting costs.
    overlap = min(pruned_for, beside)
    rate_while_deleting = (jobs if beside <= pruned_for else ran_while_deleting) / overlap
    print(f"\nRetention: {expired} expired done jobs, {jobs} no-op jobs run beside them")
    print(f"  deleting                       {deleted / pruned_for:8.0f} jobs/s")
    print(f"  no-op jobs, nothing deleted    {jobs / alone:8.0f} jobs/s")
    print(
        f"  no-op jobs, while deleting     {rate_while_deleting:8.0f} jobs/s"
        f"   (the {overlap:.1f} s both ran)"
    )


async def timed(work: Coroutine[Any, Any, T]) -> tuple[float, T]:
    """Seconds `work` took, and what it returned."""
    started = time.perf_counter()
    result = await work
    return time.perf_counter() - started, result


async def finish_jobs_directly(store: JobStore, count: int) -> None:
    """Insert `count` jobs and finish them through the store, a thousand at a time: the
    quickest way any store has to hold that many done jobs."""
    for first in range(0, count, 1000):
        await store.insert_all_jobs([NewJob(payload={"task": "noop"})] * min(1000, count - first))
        claimed = await store.fetch_jobs({DEFAULT_QUEUE: 1000})
        await asyncio.gather(*(store.complete_job(job, None) for job in claimed))


async def enqueue_noop_jobs(store: JobStore, count: int) -> int:
    """Enqueue `count` no-op jobs, a thousand at a time; the id of the last."""
    enqueued = []
    for first in range(0, count, 1000):
        batch = [NewJob(payload={"task": "noop"})] * min(1000, count - first)
        enqueued += await store.insert_all_jobs(batch)
    return enqueued[-1].job.id


async def run_until_done(
    store: JobStore, settings: Settings, clock: ShiftedClock, last_job_id: int
) -> float:
    """Run the queued jobs with a new engine until `last_job_id` is done; seconds it took."""
    engine = Engine(
        store,
        TaskRegistry(),
        clock,
        queues=settings.queue_limits,
        backoff_base=settings.retry_backoff_base,
        backoff_max=settings.retry_backoff_max,
        poll_interval=settings.poll_interval,
    )
    started = time.perf_counter()
    await engine.start()
    # The last job is claimed last; polling it alone costs the store little.
    while (job := await store.get_job(last_job_id)) is None or job.status is not JobStatus.DONE:
        await asyncio.sleep(0.01)
    took = time.perf_counter() - started
    await engine.stop(0)
    return took


async def get_in_process(app: FastAPI, url: str) -> int:
    """GET `url` from the app through ASGI, as a server would call it; the status."""
    path, _, query = url.partition("?")
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    status = 0

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def stop_all(processes: list["subprocess.Popen[bytes]"]) -> None:
    """Stop the processes a benchmark started; one that failed makes its numbers worthless."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    # uvicorn, stopped by SIGTERM, ends by raising it again.
    failed = [code for process in processes if (code := process.wait(30)) not in STOPPED]
    if failed:
        raise RuntimeError(f"a service process the benchmark ran exited with {failed[0]}")


def service_engine(settings: Settings, registry: TaskRegistry) -> tuple[JobStore, Engine]:
    """The store and the engine of the service's app: event subscribers (metrics) included."""
    app = create_app(settings, registry=registry)
    engine: Engine = app.state.engine
    return app.state.store, engine


async def wait_for_done(store: JobStore, count: int) -> None:
    while (await store.count_jobs()).get(JobStatus.DONE, 0) < count:
        await asyncio.sleep(0.01)


def percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100)[pct - 1] if len(values) > 1 else values[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


if __name__ == "__main__":
    main()
