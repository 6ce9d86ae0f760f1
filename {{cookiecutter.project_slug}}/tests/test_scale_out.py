"""Several instances on one database: API-only and worker-only processes, real and separate.

Every instance runs the real service (`__main__.main`) with one extra task, `record`, which
writes each execution into a table, so the tests can count how often every job ran.
"""

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from {{ cookiecutter.package_name }}.jobs.clock import SystemClock
from {{ cookiecutter.package_name }}.jobs.engine import Engine
from {{ cookiecutter.package_name }}.jobs.model import DEFAULT_QUEUE, Job
from {{ cookiecutter.package_name }}.jobs.registry import TaskRegistry
from {{ cookiecutter.package_name }}.jobs.store import NewJob, make_store

from .conftest import SettingsFactory, free_port, poll_until, run_sql, stop, wait_until

INSTANCE = """
import asyncio
import os

import asyncpg

from {{ cookiecutter.package_name }}.__main__ import main
from {{ cookiecutter.package_name }}.jobs.tasks import registry

pools = []
opening = asyncio.Lock()


@registry.task("record")
async def record(job):
    async with opening:
        if not pools:
            url = os.environ["DATABASE_URL"]
            pools.append(await asyncpg.create_pool(url, min_size=1, max_size=4))
    await asyncio.sleep(job.payload.get("seconds", 0))
    await pools[0].execute(
        "INSERT INTO executions (job_id, pid) VALUES ($1, $2)", job.id, os.getpid()
    )
    return {"pid": os.getpid()}


if os.environ.get("RECORD_CRON"):
    registry.task("heartbeat", cron=os.environ["RECORD_CRON"])(record)

main()
"""


class Instance:
    """One service process: `api` serves HTTP only, `worker` runs jobs only."""

    def __init__(self, role: str, env: dict[str, str], log_path: Path) -> None:
        self.role = role
        self.port = free_port()
        self.log_path = log_path
        roles = {"api": ("true", "false"), "worker": ("false", "true")}
        start_http, start_workers = roles[role]
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", INSTANCE],
                env={
                    **env,
                    "PORT": str(self.port),
                    "START_HTTP": start_http,
                    "START_WORKERS": start_workers,
                },
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_until_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"the {self.role} instance exited: {self.log_path.read_text()}")
            if self.role == "worker":
                return "Worker started" in self.log_path.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/health").status_code == 200
            except httpx.TransportError:
                return False

        poll_until(ready, 30, f"the {self.role} instance to start")


# start_instances(roles, extra environment)
StartInstances = Callable[..., list[Instance]]


@pytest.fixture
def start_instances(
    service_env: dict[str, str], store_settings: dict[str, Any], tmp_path: Path
) -> Iterator[StartInstances]:
    """`start_instances(roles)`: started and ready, all on this test's schema; every one
    started is stopped at the end, its log printed."""
    run_sql(
        store_settings["database_url"],
        "CREATE TABLE executions (job_id bigint NOT NULL, pid int NOT NULL)",
    )
    env = {**service_env, "WORKER_POOL_SIZE": "4", "JOB_LEASE_SECONDS": "2"}
    started: list[Instance] = []

    def start(roles: list[str], extra_env: dict[str, str] | None = None) -> list[Instance]:
        instances = [
            Instance(
                role, {**env, **(extra_env or {})}, tmp_path / f"{role}-{len(started) + number}.log"
            )
            for number, role in enumerate(roles)
        ]
        started.extend(instances)
        for instance in instances:
            instance.wait_until_ready()
        return instances

    try:
        yield start
    finally:
        for instance in started:
            stop(instance.process)
        for instance in started:
            print(f"--- {instance.log_path.name}\n{instance.log_path.read_text()[-3000:]}")


@pytest.fixture
def cluster(start_instances: StartInstances) -> list[Instance]:
    """One API-only instance, then three worker-only instances."""
    return start_instances(["api", "worker", "worker", "worker"])


# Requests in flight at once. A thread and a client each: httpx's AsyncClient, sharing one
# pool among many requests at once, sent a tenth as many a second, or fewer.
CONNECTIONS = 16


def post_all(paths_and_bodies: list[tuple[Instance, str, dict[str, Any]]]) -> list[httpx.Response]:
    """POST each body to its instance's path, CONNECTIONS at a time; the responses in order."""

    def post_share(share: list[int]) -> list[tuple[int, httpx.Response]]:
        with httpx.Client(timeout=30) as client:
            answered = []
            for number in share:
                instance, path, body = paths_and_bodies[number]
                url = f"http://127.0.0.1:{instance.port}{path}"
                answered.append((number, client.post(url, json=body)))
            return answered

    # Neighbours go to different threads: the requests for one unique key race each other.
    count = len(paths_and_bodies)
    shares = [list(range(start, count, CONNECTIONS)) for start in range(CONNECTIONS)]
    with ThreadPoolExecutor(CONNECTIONS) as pool:
        answered = [pair for share in pool.map(post_share, shares) for pair in share]
    return [response for _, response in sorted(answered, key=lambda pair: pair[0])]


def submit(api: Instance, payloads: list[dict[str, Any]]) -> list[int]:
    """POST every payload to the API instance as a job; return the job ids."""
    responses = post_all([(api, "/jobs", {"payload": payload}) for payload in payloads])
    for response in responses:
        assert response.status_code == 202, response.text
    return [response.json()["job_id"] for response in responses]


def query(url: str, sql: str) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(sql)
            return rows
        finally:
            await conn.close()

    return asyncio.run(fetch())


def wait_until_all_done(url: str, count: int, timeout: float) -> None:
    def all_done() -> bool:
        counts = dict(query(url, "SELECT status, count(*) FROM jobs GROUP BY status"))
        if counts.get("failed"):
            pytest.fail(f"jobs failed: {counts}")
        return bool(counts.get("done") == count)

    poll_until(all_done, timeout, f"{count} jobs to be done")


def test_jobs_submitted_to_an_api_instance_run_exactly_once_across_three_workers(
    cluster: list[Instance], store_settings: dict[str, Any]
) -> None:
    url = store_settings["database_url"]
    api, *workers = cluster

    job_ids = submit(api, [{"task": "record"}] * 5000)
    wait_until_all_done(url, 5000, timeout=120)

    runs = query(url, "SELECT job_id, count(*) AS runs FROM executions GROUP BY job_id")
    assert sorted(row["job_id"] for row in runs) == sorted(job_ids)
    assert {row["runs"] for row in runs} == {1}
    pids = {row["pid"] for row in query(url, "SELECT DISTINCT pid FROM executions")}
    assert pids <= {worker.process.pid for worker in workers}
    assert len(pids) > 1, "one worker instance did all the work"


def test_a_killed_instances_running_jobs_finish_on_the_survivor_within_seconds(
    start_instances: StartInstances, store_settings: dict[str, Any]
) -> None:
    url = store_settings["database_url"]
    # Leases as long as the default: the survivor learns of the death from the victim's
    # lock, which the database drops with its connections, not from the leases.
    roles = ["api", "worker", "worker"]
    api, victim, survivor = start_instances(roles, {"JOB_LEASE_SECONDS": "30"})
    job_ids = submit(api, [{"task": "record", "seconds": 1}] * 8)

    def victim_runs_four() -> bool:
        held = f"SELECT count(*) FROM jobs WHERE locked_by LIKE '%:{victim.process.pid}:%'"
        return bool(query(url, held)[0][0] == 4)

    poll_until(victim_runs_four, 30, "the victim to run four jobs")
    victim.process.kill()
    victim.process.wait()
    # Each job takes a second once it runs again.
    wait_until_all_done(url, 8, timeout=5)

    lost = [
        (row["attempt"], json.loads(row["errors"]))
        for row in query(url, "SELECT * FROM jobs")
        if json.loads(row["errors"])
    ]
    assert lost == [(2, ["lost: instance died"])] * 4
    executed = {row["job_id"] for row in query(url, "SELECT DISTINCT job_id FROM executions")}
    assert executed == set(job_ids)
    assert survivor.process.poll() is None


def test_a_stuck_instances_jobs_come_back_once_their_leases_expire(
    start_instances: StartInstances, store_settings: dict[str, Any]
) -> None:
    url = store_settings["database_url"]
    api, stuck, _ = start_instances(["api", "worker", "worker"])
    job_ids = submit(api, [{"task": "record", "seconds": 0.5}] * 8)

    def stuck_is_running_jobs() -> bool:
        held = f"SELECT count(*) FROM jobs WHERE locked_by LIKE '%:{stuck.process.pid}:%'"
        return bool(query(url, held)[0][0] > 0)

    poll_until(stuck_is_running_jobs, 30, "the instance to run jobs")
    # Alive, its connections and its lock held, but renewing nothing: only the leases
    # (JOB_LEASE_SECONDS=2 here) can tell.
    stuck.process.send_signal(signal.SIGSTOP)
    try:
        wait_until_all_done(url, 8, timeout=30)
    finally:
        stuck.process.send_signal(signal.SIGCONT)

    errors = [json.loads(row["errors"]) for row in query(url, "SELECT * FROM jobs")]
    assert {str(error) for error in errors if error} == {str(["lost: lease expired"])}
    executed = {row["job_id"] for row in query(url, "SELECT DISTINCT job_id FROM executions")}
    assert executed == set(job_ids)


def test_three_instances_on_a_one_second_schedule_enqueue_one_job_per_tick(
    start_instances: StartInstances, store_settings: dict[str, Any]
) -> None:
    url = store_settings["database_url"]
    every_second = {"RECORD_CRON": "* * * * * *"}
    first, *_ = start_instances(["worker"] * 3, every_second)
    time.sleep(5)
    # A restarted instance catches up on the ticks it finds recorded: none twice.
    stop(first.process)
    start_instances(["worker"], every_second)
    time.sleep(5)

    per_tick = query(
        url,
        "SELECT run_at, count(*) AS jobs FROM jobs WHERE task = 'heartbeat'"
        " GROUP BY run_at ORDER BY run_at",
    )
    assert {row["jobs"] for row in per_tick} == {1}
    ticks = [row["run_at"] for row in per_tick]
    assert len(ticks) >= 9
    assert all(later - earlier == timedelta(seconds=1) for earlier, later in pairwise(ticks))
    runs = query(url, "SELECT job_id, count(*) AS runs FROM executions GROUP BY job_id")
    assert {row["runs"] for row in runs} == {1}


def test_two_api_instances_racing_with_one_unique_key_create_one_job(
    start_instances: StartInstances, store_settings: dict[str, Any]
) -> None:
    # No workers: every job stays queued, so it holds its key for the whole test.
    first, second = start_instances(["api", "api"])
    keys = [f"order-{n}" for n in range(25)]
    requests: list[tuple[Instance, str, dict[str, Any]]] = [
        (instance, "/jobs", {"payload": {"n": n}, "unique_key": key})
        for key in keys
        for n, instance in enumerate([first, second] * 4)
    ]

    responses = post_all(requests)

    by_key: dict[str, list[httpx.Response]] = {}
    for (_, _, body), response in zip(requests, responses, strict=True):
        by_key.setdefault(body["unique_key"], []).append(response)
    for key, answers in by_key.items():
        codes = sorted(answer.status_code for answer in answers)
        assert codes == [200] * 7 + [202], (key, [answer.text for answer in answers])
        assert len({answer.json()["job_id"] for answer in answers}) == 1, key
    rows = query(
        store_settings["database_url"],
        "SELECT unique_key, count(*) AS jobs FROM jobs GROUP BY unique_key",
    )
    assert {row["unique_key"]: row["jobs"] for row in rows} == dict.fromkeys(keys, 1)


def test_a_queue_paused_through_one_instance_stays_unclaimed_by_others_across_restarts(
    start_instances: StartInstances, store_settings: dict[str, Any]
) -> None:
    url = store_settings["database_url"]
    api, worker = start_instances(["api", "worker"])
    (paused,) = post_all([(api, "/queues/emails/pause", {})])
    assert (paused.status_code, paused.json()["paused"]) == (200, True), paused.text
    emails = [{"payload": {"task": "record"}, "queue": "emails"}] * 20
    others = [{"payload": {"task": "record"}}] * 20

    def statuses() -> dict[tuple[str, str], int]:
        rows = query(url, "SELECT queue, status, count(*) AS n FROM jobs GROUP BY 1, 2")
        return {(row["queue"], row["status"]): row["n"] for row in rows}

    def run_the_others_and_check_emails_waits(expected_done: int) -> None:
        assert all(r.status_code == 202 for r in post_all([(api, "/jobs", b) for b in others]))
        # The worker ran what came after the emails jobs: it would have claimed them too.
        poll_until(lambda: statuses().get(("default", "done")) == expected_done, 30)
        assert statuses()[("emails", "queued")] == 20

    assert all(r.status_code == 202 for r in post_all([(api, "/jobs", b) for b in emails]))
    run_the_others_and_check_emails_waits(20)

    stop(api.process)
    stop(worker.process)
    api, _worker = start_instances(["api", "worker"])
    run_the_others_and_check_emails_waits(40)

    (resumed,) = post_all([(api, "/queues/emails/resume", {})])
    assert (resumed.status_code, resumed.json()["paused"]) == (200, False), resumed.text
    poll_until(lambda: statuses().get(("emails", "done")) == 20, 30, "the emails jobs to run")


async def run_engine_until_done(
    make_settings: SettingsFactory,
    *,
    notify: bool,
    poll_interval: float,
    within: float,
    before_insert: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Insert a job through one store; an engine on another store must finish it `within`."""
    clock = SystemClock()
    settings = make_settings(database_notify=notify)
    worker_store, other_instance = make_store(settings, clock), make_store(settings, clock)
    await worker_store.open()
    await other_instance.open()
    engine = Engine(
        worker_store,
        TaskRegistry(),
        clock,
        queues={DEFAULT_QUEUE: 1},
        backoff_base=1,
        backoff_max=1,
        poll_interval=poll_interval,
    )
    await engine.start()
    try:
        await asyncio.sleep(0.2)  # the engine has looked once and found nothing: it is idle
        if before_insert is not None:
            await before_insert()
        job, _ = await other_instance.insert_job(NewJob(payload={}))

        job_id = job.id

        async def done() -> bool:
            found = await other_instance.get_job(job_id)
            return found is not None and found.status == "done"

        await wait_until(done, timeout=within, message="the job inserted elsewhere to finish")
    finally:
        await engine.stop(0)
        await worker_store.close()
        await other_instance.close()


async def test_notify_wakes_an_idle_worker_of_another_instance_at_once(
    make_settings: SettingsFactory,
) -> None:
    # Polling alone would take a minute.
    await run_engine_until_done(make_settings, notify=True, poll_interval=60, within=2)


async def test_with_notify_off_an_idle_worker_still_finds_jobs_by_polling(
    make_settings: SettingsFactory,
) -> None:
    await run_engine_until_done(make_settings, notify=False, poll_interval=0.3, within=5)


async def listening_backends(conn: asyncpg.Connection) -> list[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
    )
    return [row["pid"] for row in rows]


async def test_a_dropped_listening_connection_is_opened_again_and_wakes_idle_workers(
    make_settings: SettingsFactory,
) -> None:
    """As after a database restart: NOTIFY reaches the idle worker again, without polling."""
    admin = await asyncpg.connect(make_settings().database_url)

    async def drop_the_listening_connections() -> None:
        listening = await listening_backends(admin)
        assert len(listening) == 2  # the worker's store and the other instance's
        terminate = "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid"
        await admin.execute(terminate, listening)

        async def listening_again() -> bool:
            now = await listening_backends(admin)
            return len(now) == 2 and not set(now) & set(listening)

        await wait_until(listening_again, timeout=10, message="both stores to listen again")

    try:
        await run_engine_until_done(
            make_settings,
            notify=True,
            poll_interval=60,
            within=2,
            before_insert=drop_the_listening_connections,
        )
    finally:
        await admin.close()


async def cancel_through_another_instance(
    make_settings: SettingsFactory, *, notify: bool, poll_interval: float, within: float
) -> None:
    """An engine on one store runs a handler that never returns; another store cancels the
    job, which must end cancelled `within` seconds."""
    clock = SystemClock()
    settings = make_settings(database_notify=notify)
    worker_store, other_instance = make_store(settings, clock), make_store(settings, clock)
    await worker_store.open()
    await other_instance.open()
    registry = TaskRegistry()
    started = asyncio.Event()

    @registry.task("forever")
    async def forever(_job: Job) -> None:
        started.set()
        await asyncio.Event().wait()

    engine = Engine(
        worker_store,
        registry,
        clock,
        queues={DEFAULT_QUEUE: 1},
        backoff_base=1,
        backoff_max=1,
        poll_interval=poll_interval,
    )
    await engine.start()
    try:
        job, _ = await other_instance.insert_job(NewJob(payload={"task": "forever"}))
        await asyncio.wait_for(started.wait(), timeout=10)
        job_id = job.id

        await other_instance.cancel_job(job_id)

        async def cancelled() -> bool:
            found = await other_instance.get_job(job_id)
            return found is not None and found.status == "cancelled"

        await wait_until(cancelled, timeout=within, message="the job to end cancelled")
        assert engine.busy_workers == 0
    finally:
        await engine.stop(0)
        await worker_store.close()
        await other_instance.close()


async def test_a_cancel_through_another_instance_stops_the_running_handler_at_once(
    make_settings: SettingsFactory,
) -> None:
    # Polling for cancels would take a minute: the NOTIFY on the cancel channel does it.
    await cancel_through_another_instance(make_settings, notify=True, poll_interval=60, within=2)


async def test_with_notify_off_a_cancel_through_another_instance_is_found_by_polling(
    make_settings: SettingsFactory,
) -> None:
    await cancel_through_another_instance(make_settings, notify=False, poll_interval=0.3, within=5)
