"""The SQLite store beyond the contract: its migrations, what survives a restart, and the
file shared with other connections, where writes wait their turn and the loop never does."""

import asyncio
import itertools
import json
import logging
import os
import re
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from sqlalchemy.schema import CreateIndex

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.jobs.model import Job, JobRow, JobStatus
from {{ cookiecutter.package_name }}.jobs.store import (
    JobFilter,
    JobStore,
    NewJob,
    make_store,
    sqlite_migrations,
)
from {{ cookiecutter.package_name }}.jobs.store import sqlite as sqlite_store
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import START, ManualClock, SettingsFactory, StoreOpener, enqueue, serve


class WriteLockHolder(threading.Thread):
    """Another connection to the same file that holds its write lock for `seconds`."""

    def __init__(self, path: str, seconds: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.seconds = seconds
        self.locked = threading.Event()
        self.released_at: float | None = None

    def run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            self.locked.set()
            time.sleep(self.seconds)
            self.released_at = time.monotonic()
            conn.execute("COMMIT")
        finally:
            conn.close()


async def test_health_answers_while_another_connection_holds_the_write_lock(
    settings: Settings,
) -> None:
    app = create_app(settings)
    async with serve(app) as client:
        holder = WriteLockHolder(settings.database_url.removeprefix("sqlite:///"))
        holder.start()
        assert await asyncio.to_thread(holder.locked.wait, 5)
        posts = [
            asyncio.create_task(client.post("/jobs", json={"payload": {"n": n}})) for n in range(20)
        ]
        await asyncio.sleep(0.05)  # the inserts are waiting for the lock by now

        health = await client.get("/health")
        answered_at = time.monotonic()

        # Had the waiting inserts blocked the event loop, nothing could answer before the
        # lock was released.
        assert health.status_code == 200, health.text
        assert holder.released_at is None or answered_at < holder.released_at
        responses = await asyncio.gather(*posts)
        await asyncio.to_thread(holder.join)
        assert [response.status_code for response in responses] == [202] * len(posts)
        for response in responses:
            job = await client.get(f"/jobs/{response.json()['job_id']}")
            assert job.status_code == 200
        stats = (await client.get("/stats")).json()
        assert stats["total"] == len(posts)


async def test_a_write_lock_held_past_the_timeout_is_a_503_not_a_hang(
    make_settings: SettingsFactory,
) -> None:
    # Shorter than the lock is held: the insert gives up, and says so.
    settings = make_settings(database_timeout=0.2)
    app = create_app(settings)
    async with serve(app) as client:
        await app.state.engine.stop(0)
        holder = WriteLockHolder(settings.database_url.removeprefix("sqlite:///"), seconds=1.0)
        holder.start()
        assert await asyncio.to_thread(holder.locked.wait, 5)

        response = await client.post("/jobs", json={"payload": {}})
        await asyncio.to_thread(holder.join)

        assert response.status_code == 503
        assert response.json() == {"error": "Job store unavailable"}
        assert (await client.get("/stats")).json()["total"] == 0


# --- Migrations: every database reaches the schema jobs/model.py declares, keeping its jobs.

# The schema the last release before migrations made at start-up, as it wrote it.
PREVIOUS_RELEASE_TABLES = """
CREATE TABLE jobs (
    id INTEGER NOT NULL,
    payload JSON NOT NULL,
    status VARCHAR(16) NOT NULL,
    attempt INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    run_at DATETIME NOT NULL,
    inserted_at DATETIME NOT NULL,
    started_at DATETIME,
    finished_at DATETIME,
    result JSON,
    errors JSON NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX ix_jobs_due ON jobs (run_at, id) WHERE status = 'queued';
CREATE INDEX ix_jobs_newest ON jobs (inserted_at, id);
CREATE INDEX ix_jobs_status_newest ON jobs (status, inserted_at, id);
"""
PREVIOUS_RELEASE_COUNTS = """
CREATE TABLE job_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL);
INSERT INTO job_counts VALUES ('queued', 0), ('running', 0), ('done', 0), ('failed', 0);
CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
    UPDATE job_counts SET n = n + 1 WHERE status = NEW.status; END;
CREATE TRIGGER jobs_count_update AFTER UPDATE OF status ON jobs
    WHEN OLD.status <> NEW.status BEGIN
    UPDATE job_counts SET n = n - 1 WHERE status = OLD.status;
    UPDATE job_counts SET n = n + 1 WHERE status = NEW.status; END;
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
    UPDATE job_counts SET n = n - 1 WHERE status = OLD.status; END;
"""
# Jobs in every status that release had, as its store wrote them; START is 12:00.
PREVIOUS_RELEASE_JOBS = [
    # id, payload, status, attempt, max_attempts, run_at, inserted_at, started_at,
    # finished_at, result, errors
    (1, '{"task":"report","n":1}', "queued", 0, 3, "2025-01-01 11:00:00.000000",
     "2025-01-01 11:00:00.000000", None, None, "null", "[]"),
    (2, '{"n":2}', "queued", 1, 3, "2025-01-01 13:00:00.250000",
     "2025-01-01 10:00:00.000001", "2025-01-01 10:00:01.000000", None, "null",
     '["RuntimeError: boom"]'),
    (3, '{"n":3,"text":"caf\\u00e9"}', "running", 1, 2, "2025-01-01 11:30:00.000000",
     "2025-01-01 11:30:00.000000", "2025-01-01 11:59:00.000000", None, "null", "[]"),
    (4, '{"n":4}', "done", 1, 3, "2025-01-01 09:00:00.000000", "2025-01-01 09:00:00.000000",
     "2025-01-01 09:00:01.000000", "2025-01-01 09:00:02.000000", '{"ok":[1,"two",null]}', "[]"),
    (5, '{"n":5}', "failed", 2, 2, "2025-01-01 09:30:00.000000", "2025-01-01 09:00:00.000000",
     "2025-01-01 09:30:00.500000", "2025-01-01 09:30:01.000000", "null", '["one","two"]'),
]  # fmt: skip
PREVIOUS_RELEASE_COLUMNS = [
    *("id", "payload", "status", "attempt", "max_attempts", "run_at", "inserted_at"),
    *("started_at", "finished_at", "result", "errors"),
]
COUNTS_BEFORE = {"queued": 2, "running": 1, "done": 1, "failed": 1}


def database_path(settings: Settings) -> Path:
    return Path(settings.database_url.removeprefix("sqlite:///"))


def make_previous_release_database(path: Path, *, with_counts: bool = True) -> None:
    """The file as the release before migrations left it (with_counts=False: an older one)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executescript(PREVIOUS_RELEASE_TABLES)
        if with_counts:
            conn.executescript(PREVIOUS_RELEASE_COUNTS)
        conn.executemany(
            "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", PREVIOUS_RELEASE_JOBS
        )
    finally:
        conn.close()


def expected_job(row: tuple[Any, ...]) -> Job:
    """A job of the previous release as this one must show it: its fields, the new ones at
    their defaults."""
    values = dict(zip(PREVIOUS_RELEASE_COLUMNS, row, strict=True))
    for name in ("payload", "result", "errors"):
        values[name] = json.loads(values[name])
    for name in ("run_at", "inserted_at", "started_at", "finished_at"):
        if values[name] is not None:
            values[name] = values[name].replace(" ", "T") + "Z"
    return Job.model_validate(values)


def nonzero(counts: dict[JobStatus, int]) -> dict[str, int]:
    return {str(status): n for status, n in counts.items() if n}


@pytest.mark.parametrize("with_counts", [True, False], ids=["release", "before-job_counts"])
async def test_a_database_of_the_previous_release_keeps_every_job_and_field_when_upgraded(
    open_store: StoreOpener, clock: ManualClock, settings: Settings, with_counts: bool
) -> None:
    make_previous_release_database(database_path(settings), with_counts=with_counts)

    store = await open_store(clock)

    expected = [expected_job(row) for row in PREVIOUS_RELEASE_JOBS]
    for job in expected:
        assert await store.get_job(job.id) == job
        assert (job.queue, job.priority, job.unique_key, job.cancel_requested) == (
            "default",
            0,
            None,
            False,
        )
    assert nonzero(await store.count_jobs()) == COUNTS_BEFORE
    (default,) = await store.list_queues()
    assert (default.name, nonzero(default.counts), default.paused) == (
        "default",
        COUNTS_BEFORE,
        False,
    )


async def test_an_upgraded_database_claims_its_queued_jobs_when_due_and_rescues_the_running(
    open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    make_previous_release_database(database_path(settings))
    store = await open_store(clock)

    assert await store.rescue_orphaned_jobs() == 1
    # Job 2 waits for its retry at 13:00; job 3 was running when the old release stopped.
    assert [job.id for job in await store.fetch_jobs({"default": 10})] == [1, 3]
    assert await store.next_run_at({"default": 10}) == START + timedelta(hours=1, seconds=0.25)
    clock.advance(3600.25)
    (retried,) = await store.fetch_jobs({"default": 10})
    assert (retried.id, retried.attempt, retried.errors) == (2, 2, ["RuntimeError: boom"])
    assert nonzero(await store.count_jobs()) == {"running": 3, "done": 1, "failed": 1}


# Alembic reflects neither the expression in ix_jobs_task_newest nor the WHERE of a partial
# index: the test compares every index's DDL with the model's instead.
@pytest.mark.filterwarnings("ignore:.*expression-based index")
async def test_the_migrated_schema_is_the_one_the_model_declares(
    store: JobStore, settings: Settings
) -> None:
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={"compare_type": True, "include_object": sqlite_migrations.include_object},
            )
            assert compare_metadata(context, JobRow.metadata) == []
            made = conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            ).all()
            declared = {
                index.name: str(CreateIndex(index).compile(dialect=conn.dialect))
                for table in JobRow.metadata.tables.values()
                for index in table.indexes
            }
    finally:
        engine.dispose()
    assert {name: re.sub(r"\s+", " ", sql) for name, sql in made} == declared


async def test_the_database_records_the_newest_revision(
    store: JobStore, settings: Settings
) -> None:
    conn = sqlite3.connect(database_path(settings))
    try:
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    finally:
        conn.close()
    assert versions == [(sqlite_migrations.head(),)]
    assert sqlite_migrations.head() == "0004"


def schema_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        version: int = conn.execute("PRAGMA schema_version").fetchone()[0]
        return version
    finally:
        conn.close()


async def test_reopening_an_up_to_date_database_migrates_nothing(
    store: JobStore,
    open_store: StoreOpener,
    clock: ManualClock,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = await enqueue(store, NewJob(payload={"n": 1}))
    before = schema_version(database_path(settings))

    def refuse(*_: object) -> None:
        raise AssertionError("an up-to-date database was migrated again")

    monkeypatch.setattr(sqlite_migrations, "upgrade", refuse)
    reopened = await open_store(clock)

    assert await reopened.get_job(job.id) == job
    assert schema_version(database_path(settings)) == before


async def test_stores_opening_a_new_file_at_once_migrate_it_once(
    settings: Settings, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alembic")
    stores = [make_store(settings, clock) for _ in range(3)]

    await asyncio.gather(*(store.open() for store in stores))
    try:
        job = await enqueue(stores[0], NewJob(payload={"n": 1}))
        assert [await store.get_job(job.id) for store in stores] == [job] * 3
    finally:
        for store in stores:
            await store.close()
    upgrades = [r.getMessage() for r in caplog.records if "Running upgrade" in r.getMessage()]
    # Each revision once: the stores that waited found the file migrated.
    steps = [message.split(",")[0].removeprefix("Running upgrade ") for message in upgrades]
    assert steps == [" -> 0001", "0001 -> 0002", "0002 -> 0003", "0003 -> 0004"]


# --- What a restart keeps, and what only SQLite has to get right.


async def test_a_paused_queue_stays_paused_after_a_restart(
    open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    first = make_store(settings, clock)
    await first.open()
    job = await enqueue(first, NewJob(payload={"n": 1}, queue="emails"))
    await first.pause_queue("emails")
    await first.close()

    restarted = await open_store(clock)

    assert await restarted.fetch_jobs({"emails": 1}) == []
    assert [(queue.name, queue.paused) for queue in await restarted.list_queues()] == [
        ("emails", True)
    ]
    await restarted.resume_queue("emails")
    assert [claimed.id for claimed in await restarted.fetch_jobs({"emails": 1})] == [job.id]


async def test_a_job_left_running_with_a_cancel_asked_is_cancelled_at_restart_not_rerun(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    job = await enqueue(store, NewJob(payload={"n": 1}))
    await store.fetch_jobs({"default": 1})
    await store.cancel_job(job.id)
    clock.advance(5)

    restarted = await open_store(clock)

    assert await restarted.rescue_orphaned_jobs() == 1
    found = await restarted.get_job(job.id)
    assert found is not None
    assert (found.status, found.finished_at) == (JobStatus.CANCELLED, clock.now())
    assert found.errors == [sqlite_store.LOST_WORKER_STOPPED]
    assert await restarted.fetch_jobs({"default": 1}) == []


async def test_one_store_at_a_time_on_a_file_may_run_workers(
    settings: Settings, open_store: StoreOpener, clock: ManualClock
) -> None:
    first = make_store(settings, clock)
    await first.open()
    try:
        await first.rescue_orphaned_jobs()
        second = await open_store(clock)

        with pytest.raises(sqlite_store.WorkersRunElsewhere, match=rf"process {os.getpid()} "):
            await second.rescue_orphaned_jobs()
    finally:
        await first.close()
    assert await second.rescue_orphaned_jobs() == 0


async def test_two_stores_on_one_file_inserting_one_unique_key_create_one_job(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    other = await open_store(clock)

    outcomes = await asyncio.gather(
        *(
            s.insert_job(NewJob(payload={"n": n}, unique_key="k"))
            for n, s in enumerate([store, other])
        )
    )

    assert sorted(created for _, created in outcomes) == [False, True]
    assert len({job.id for job, _ in outcomes}) == 1
    assert sum((await store.count_jobs()).values()) == 1


async def test_inserts_sharing_a_commit_each_get_their_own_jobs_in_order(
    store: JobStore,
) -> None:
    # Queued together, these calls share one transaction: the ids each call gets back must
    # be the rows it inserted, around the keys taken by itself or by an earlier call.
    def job(n: int, key: str | None = None) -> NewJob:
        return NewJob(payload={"n": n}, unique_key=key)

    calls = [
        [job(0), job(1, "a"), job(2)],
        [job(3, "a"), job(4)],
        [job(5), job(6, "b")],
        [job(7, "b"), job(8, "b")],
    ]

    results = await asyncio.gather(*(store.insert_all_jobs(call) for call in calls))

    created = [[enqueued.payload["n"] for enqueued, made in result if made] for result in results]
    assert created == [[0, 1, 2], [4], [5, 6], []]
    holders = [
        [enqueued.payload["n"] for enqueued, made in result if not made] for result in results
    ]
    assert holders == [[], [1], [], [6, 6]]
    for result in results:
        for enqueued, _ in result:
            assert await store.get_job(enqueued.id) == enqueued
        ids = [enqueued.id for enqueued, made in result if made]
        assert ids == sorted(ids)
    assert len({enqueued.id for result in results for enqueued, made in result if made}) == 6


async def test_the_default_limit_takes_unnamed_queues_together_in_claim_order(
    store: JobStore, clock: ManualClock
) -> None:
    now = clock.now()
    aging = timedelta(seconds=300)

    async def add(queue: str, priority: int, waited: float) -> Job:
        run_at = now - timedelta(seconds=waited)
        return await enqueue(
            store, NewJob(payload={}, queue=queue, priority=priority, run_at=run_at)
        )

    late_urgent = await add("a", 0, 10)  # claim_at now - 10
    b_urgent = await add("b", 0, 50)  # now - 50
    patient = await add("a", 1, 400)  # now - 400 + 300 = now - 100
    recent_low = await add("b", 2, 1)  # now - 1 + 600: due, and last in line
    named = await add("emails", 0, 999)
    assert recent_low.run_at + 2 * aging > now

    claimed = await store.fetch_jobs({"default": 3, "emails": 0})

    assert [job.id for job in claimed] == [patient.id, b_urgent.id, late_urgent.id]
    assert [job.id for job in await store.fetch_jobs({"default": 5, "emails": 0})] == [
        recent_low.id
    ]
    assert [job.id for job in await store.fetch_jobs({"emails": 5})] == [named.id]


async def test_every_listing_and_claim_seeks_an_index_and_scans_no_table(
    store: JobStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = sqlite3.connect(database_path(settings))
    try:
        listings = set()
        # Both ways of listing by task and status: walking the status, or the task.
        for walk_limit in (-1, 10**9):
            monkeypatch.setattr(sqlite_store, "STATUS_WALK_LIMIT", walk_limit)
            for status, queue, task in itertools.product(
                [None, JobStatus.DONE], [None, "q"], [None, "t"]
            ):
                where = JobFilter(status=status, queue=queue, task=task)
                if where != JobFilter():
                    listings.add(sqlite_store._listing(conn, where)[0])
        assert len(listings) == 7 + 2
        claims = [sqlite_store._claim_statement(shape) for shape in [(1,), (3,), (1, 2, 1)]]
        others = [
            sqlite_store.FIRST_CLAIM_ATS,
            sqlite_store.RUNNING_JOBS,
            sqlite_store.HOLDER_OF_KEY,
        ]
        for statement in [*listings, *claims, *others]:
            plan = conn.execute(f"EXPLAIN QUERY PLAN {statement}", [None] * statement.count("?"))
            steps = [step for *_, step in plan.fetchall()]
            assert not [step for step in steps if step.startswith("SCAN jobs")], statement
            assert any(step.startswith("SEARCH jobs USING") for step in steps), statement
    finally:
        conn.close()


async def test_next_run_at_is_the_earliest_run_at_whatever_the_priorities(
    store: JobStore, clock: ManualClock
) -> None:
    now = clock.now()
    await enqueue(store, NewJob(payload={}, priority=0, run_at=now + timedelta(seconds=20)))
    soonest = await enqueue(
        store, NewJob(payload={}, priority=9, run_at=now + timedelta(seconds=10))
    )
    await enqueue(
        store, NewJob(payload={}, queue="b", priority=3, run_at=now + timedelta(seconds=15))
    )

    assert await store.next_run_at({"default": 1}) == soonest.run_at
    assert await store.next_run_at({"b": 1}) == now + timedelta(seconds=15)


@pytest.mark.parametrize("walk_limit", [-1, 10**9], ids=["by-task", "by-status"])
async def test_listing_by_task_and_status_finds_the_same_jobs_either_way(
    store: JobStore, monkeypatch: pytest.MonkeyPatch, walk_limit: int
) -> None:
    monkeypatch.setattr(sqlite_store, "STATUS_WALK_LIMIT", walk_limit)
    jobs = [
        await enqueue(store, NewJob(payload={"task": f"t{n % 3}"}, queue=f"q{n % 2}"))
        for n in range(12)
    ]
    claimed = await store.fetch_jobs({"default": 5})
    for job in claimed[:2]:
        await store.complete_job(job, None)
    current = {job.id: job for job in await store.list_jobs(JobFilter(), 100, 0)}

    for status, queue in itertools.product([JobStatus.QUEUED, JobStatus.DONE], [None, "q1"]):
        where = JobFilter(status=status, queue=queue, task="t1")
        expected = [
            job.id
            for job in sorted(current.values(), key=lambda job: job.id, reverse=True)
            if job.status is status and job.task_name == "t1" and queue in (None, job.queue)
        ]
        assert [job.id for job in await store.list_jobs(where, 100, 0)] == expected
        assert [job.id for job in await store.list_jobs(where, 1, 1)] == expected[1:2]
    assert len(jobs) == len(current)
