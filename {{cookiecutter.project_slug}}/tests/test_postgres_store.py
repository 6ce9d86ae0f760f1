"""PostgreSQL only: migrations, and what several instances on one database must agree on.

Each test has a schema of its own (see conftest); a second store on it plays another
instance. Databases "made by the previous release" are built here from that release's
schema, written out as it was, so these tests do not depend on the migrations they check.
"""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.jobs import retention
from {{ cookiecutter.package_name }}.jobs.model import DEFAULT_QUEUE, Job, JobStatus, NewJob
from {{ cookiecutter.package_name }}.jobs.registry import TaskRegistry
from {{ cookiecutter.package_name }}.jobs.store import JobFilter, JobStore, make_store
from {{ cookiecutter.package_name }}.jobs.store import postgres_migrations as migrations
from {{ cookiecutter.package_name }}.jobs.store.postgres import (
    CANCEL_CHANNEL,
    FOLD_COUNTS,
    FOLD_MANY_COUNTS,
    FOLD_ROWS,
    LOST_LEASE_EXPIRED,
    RETENTION_LOCK,
    SCHEMA_LOCK,
)
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import ManualClock, SettingsFactory, StoreOpener, free_port, serve, wait_until

QUEUED, RUNNING, DONE, FAILED, CANCELLED = JobStatus
EVERY_QUEUE = {DEFAULT_QUEUE: 100}
# The schema the last release before migrations made, as its model compiled.
PREVIOUS_RELEASE_SCHEMA = (
    "CREATE TABLE jobs (id BIGSERIAL NOT NULL, payload JSON NOT NULL,"
    " status VARCHAR(16) NOT NULL, attempt INTEGER NOT NULL, max_attempts INTEGER NOT NULL,"
    " run_at TIMESTAMP WITH TIME ZONE NOT NULL, inserted_at TIMESTAMP WITH TIME ZONE NOT NULL,"
    " started_at TIMESTAMP WITH TIME ZONE, finished_at TIMESTAMP WITH TIME ZONE, result JSON,"
    " errors JSON NOT NULL, locked_by VARCHAR, lease_expires_at TIMESTAMP WITH TIME ZONE,"
    " PRIMARY KEY (id))",
    "CREATE INDEX ix_jobs_due ON jobs (run_at, id) WHERE status = 'queued'",
    "CREATE INDEX ix_jobs_leases ON jobs (lease_expires_at) WHERE status = 'running'",
    "CREATE INDEX ix_jobs_newest ON jobs (inserted_at, id)",
    "CREATE INDEX ix_jobs_status_newest ON jobs (status, inserted_at, id)",
)
PREVIOUS_RELEASE_COUNTS = "CREATE TABLE job_counts (status text NOT NULL, n bigint NOT NULL)"
OLD_COLUMNS = (
    "payload, status, attempt, max_attempts, run_at, inserted_at, started_at, finished_at,"
    " result, errors, locked_by, lease_expires_at"
)
LEASE = 30


def new_job(n: int = 0, **fields: Any) -> NewJob:
    return NewJob(payload={"n": n}, **fields)


async def sql(settings: Settings, *statements: str, args: tuple[Any, ...] = ()) -> list[Any]:
    """Each statement's first value, on a connection of its own to the test's schema."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        return [await conn.fetchval(statement, *args) for statement in statements]
    finally:
        await conn.close()


async def counts(store: JobStore) -> dict[str, int]:
    return {str(status): n for status, n in (await store.count_jobs()).items() if n}


async def stored(store: JobStore, job_id: int) -> Job:
    found = await store.get_job(job_id)
    assert found is not None
    return found


# --- Migrations.


async def previous_release_database(
    settings: Settings, jobs: list[tuple[Any, ...]], *, counts_table: bool = True
) -> list[int]:
    """The test's schema as the previous release left it, holding `jobs` (OLD_COLUMNS each,
    JSON as text) and, if it had the table, their counts; returns their ids."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        for statement in PREVIOUS_RELEASE_SCHEMA:
            await conn.execute(statement)
        placeholders = ", ".join(f"${n}" for n in range(1, 13))
        insert = f"INSERT INTO jobs ({OLD_COLUMNS}) VALUES ({placeholders}) RETURNING id"
        ids = [await conn.fetchval(insert, *job) for job in jobs]
        if counts_table:
            await conn.execute(PREVIOUS_RELEASE_COUNTS)
            # As that release appended them: a row per finished job.
            await conn.execute(
                "INSERT INTO job_counts (status, n) SELECT status, 1 FROM jobs"
                " WHERE status IN ('done', 'failed')"
            )
        return ids
    finally:
        await conn.close()


def old_row(
    payload: str,
    status: str,
    *,
    attempt: int = 0,
    max_attempts: int = 3,
    run_at: datetime,
    inserted_at: datetime,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    result: str | None = None,
    errors: str = "[]",
    locked_by: str | None = None,
    lease_expires_at: datetime | None = None,
) -> tuple[Any, ...]:
    """A row of the previous release's jobs table, OLD_COLUMNS in order, JSON as text."""
    return (
        payload,
        status,
        attempt,
        max_attempts,
        run_at,
        inserted_at,
        started_at,
        finished_at,
        result,
        errors,
        locked_by,
        lease_expires_at,
    )


def every_status_of_the_previous_release(clock: ManualClock) -> list[tuple[Any, ...]]:
    """One job in each state that release could leave a job in, every field set as it would."""
    now = clock.now()
    earlier, later = now - timedelta(minutes=5), now + timedelta(hours=2)
    return [
        old_row('{"task": "send", "n": 0}', "queued", run_at=earlier, inserted_at=earlier),
        old_row('{"n": 1, "text": "caf\\u00e9"}', "queued", run_at=later, inserted_at=earlier),
        old_row(
            '{"n": 2}',
            "queued",
            attempt=1,
            run_at=now,
            inserted_at=earlier,
            started_at=earlier,
            errors='["RuntimeError: again"]',
        ),
        old_row(
            '{"n": 3}',
            "running",
            attempt=1,
            max_attempts=2,
            run_at=earlier,
            inserted_at=earlier,
            started_at=now,
            locked_by="old-instance",
            lease_expires_at=now + timedelta(seconds=LEASE),
        ),
        old_row(
            '{"n": 4}',
            "done",
            attempt=1,
            run_at=earlier,
            inserted_at=earlier,
            started_at=earlier,
            finished_at=now,
            result='{"ok": [1, "two", null]}',
        ),
        old_row(
            '{"n": 5}',
            "failed",
            attempt=2,
            max_attempts=2,
            run_at=earlier,
            inserted_at=earlier,
            started_at=earlier,
            finished_at=now,
            errors='["boom", "boom"]',
        ),
    ]


def as_upgraded(job_id: int, row: tuple[Any, ...]) -> Job:
    """The job a previous-release row must come back as: every field kept, the new ones
    at their defaults."""
    payload, status, attempt, max_attempts, run_at, inserted_at, started, finished = row[:8]
    result, errors = row[8:10]
    return Job(
        id=job_id,
        payload=json.loads(payload),
        status=JobStatus(status),
        attempt=attempt,
        max_attempts=max_attempts,
        run_at=run_at,
        inserted_at=inserted_at,
        started_at=started,
        finished_at=finished,
        result=None if result is None else json.loads(result),
        errors=json.loads(errors),
    )


async def test_a_database_of_the_previous_release_upgrades_keeping_every_job_and_field(
    open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    rows = every_status_of_the_previous_release(clock)
    ids = await previous_release_database(settings, rows)

    store = await open_store(clock)

    for job_id, row in zip(ids, rows, strict=True):
        assert await stored(store, job_id) == as_upgraded(job_id, row)
    assert await counts(store) == {"queued": 3, "running": 1, "done": 1, "failed": 1}
    (queue,) = await store.list_queues()
    assert (queue.name, queue.paused, queue.counts[QUEUED], queue.counts[DONE]) == (
        DEFAULT_QUEUE,
        False,
        3,
        1,
    )
    assert [job.id for job in await store.list_jobs(JobFilter(task="send"), 10, 0)] == ids[:1]
    # The old instance holds no lock (it is not in `instances`): its job waits for its
    # lease, which ran out by the database's clock.
    clock.advance(LEASE + 1)
    assert await store.rescue_orphaned_jobs() == 1
    assert (await stored(store, ids[3])).errors == [LOST_LEASE_EXPIRED]
    # The due queued jobs are claimed in the order they were due; the later one waits.
    claimed = await store.fetch_jobs(EVERY_QUEUE)
    assert [job.id for job in claimed] == [ids[0], ids[3], ids[2]]
    retried = await store.retry_job(ids[5])
    assert retried is not None
    assert (retried.status, retried.max_attempts) == (QUEUED, 3)
    assert await counts(store) == {"queued": 2, "running": 3, "done": 1}


# The tables jobs/model.py declares (job_counts is the migrations' own).
TABLES = "'jobs', 'queues', 'schedules', 'schedule_ticks', 'instances', 'job_outcomes'"


async def test_the_schema_after_upgrade_is_what_the_model_declares(
    store: JobStore, settings: Settings
) -> None:
    differences: list[Any] = []
    catalogs: dict[str, Any] = {}
    migrated = (await sql(settings, "SELECT current_schema()"))[0]
    declared = f"{migrated}_model"

    def compare(connection: Connection) -> None:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_server_default": True,
                "include_name": lambda name, type_, _: (
                    not (type_ == "table" and name == "job_counts")
                ),
            },
        )
        differences.extend(compare_metadata(context, SQLModel.metadata))
        # What autogenerate does not compare (index predicates and expressions, defaults),
        # the catalogs show: the model's own tables, made in a schema beside, must read alike.
        connection.exec_driver_sql(f"CREATE SCHEMA {declared}")
        connection.exec_driver_sql(f"SET LOCAL search_path TO {declared}")
        SQLModel.metadata.create_all(connection, checkfirst=False)
        for schema in (migrated, declared):
            columns = connection.exec_driver_sql(
                "SELECT table_name, column_name, data_type, character_maximum_length,"
                " is_nullable, column_default FROM information_schema.columns"
                f" WHERE table_schema = '{schema}' AND table_name IN ({TABLES})"
                " ORDER BY 1, 2"
            ).all()
            indexes = connection.exec_driver_sql(
                f"SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = '{schema}'"
                f" AND tablename IN ({TABLES}) ORDER BY 1"
            ).all()
            catalogs[schema] = [
                [str(value).replace(f"{schema}.", "") for value in row]
                for row in [*columns, *indexes]
            ]
        connection.exec_driver_sql(f"DROP SCHEMA {declared} CASCADE")

    await migrations.run_locked(settings.database_url, compare)

    assert differences == []
    assert catalogs[migrated] == catalogs[declared]
    assert len(catalogs[migrated]) > 20


async def test_the_migrations_land_in_the_schema_the_url_names(
    store: JobStore, settings: Settings
) -> None:
    schema = (await sql(settings, "SELECT current_schema()"))[0]
    assert schema.startswith("test_")
    tables = await sql(
        settings,
        "SELECT array_agg(tablename::text ORDER BY tablename) FROM pg_tables WHERE schemaname = $1",
        args=(schema,),
    )
    assert tables == [
        [
            "alembic_version",
            "instances",
            "job_counts",
            "job_outcomes",
            "jobs",
            "queues",
            "schedule_ticks",
            "schedules",
        ]
    ]
    versions = await sql(settings, "SELECT array_agg(version_num) FROM alembic_version")
    assert set(versions[0]) == migrations.head_revisions() == {"0007"}


async def test_finished_jobs_from_before_the_counts_table_are_counted_once_it_is_made(
    open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    # As a database last written by a render from before the table.
    rows = every_status_of_the_previous_release(clock)
    await previous_release_database(settings, rows, counts_table=False)

    store = await open_store(clock)

    assert await counts(store) == {"queued": 3, "running": 1, "done": 1, "failed": 1}


async def test_a_table_with_32_bit_ids_is_widened_with_its_jobs_kept(
    open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    rows = every_status_of_the_previous_release(clock)
    ids = await previous_release_database(settings, rows)
    # As a database last written by a render from before 64-bit ids.
    await sql(
        settings,
        "ALTER TABLE jobs ALTER COLUMN id TYPE integer",
        "ALTER SEQUENCE jobs_id_seq AS integer",
        f"SELECT setval('jobs_id_seq', {2**31 - 1})",
    )

    store = await open_store(clock)

    for job_id, row in zip(ids, rows, strict=True):
        assert await stored(store, job_id) == as_upgraded(job_id, row)
    (job, _) = await store.insert_job(new_job())
    assert job.id == 2**31
    assert (await stored(store, job.id)).id == 2**31


async def test_a_32_bit_id_column_without_its_sequence_is_widened_all_the_same(
    open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    rows = every_status_of_the_previous_release(clock)
    ids = await previous_release_database(settings, rows)
    # As a table whose owner replaced the ids' sequence with ids of their own making.
    await sql(
        settings,
        "ALTER TABLE jobs ALTER COLUMN id TYPE integer",
        "ALTER TABLE jobs ALTER COLUMN id DROP DEFAULT",
        "DROP SEQUENCE jobs_id_seq",
    )

    store = await open_store(clock)

    assert (await stored(store, ids[0])).payload == {"task": "send", "n": 0}
    bigint_ids = (
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = 'jobs' AND column_name = 'id' AND data_type = 'bigint'"
    )
    assert await sql(settings, bigint_ids) == [1]


@pytest.fixture
async def schema_lock(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """Another session holding the schema lock, as an instance migrating right now would."""
    conn = await asyncpg.connect(settings.database_url)
    await conn.execute("SELECT pg_advisory_lock($1)", SCHEMA_LOCK)
    yield conn
    await conn.close()


async def test_an_up_to_date_database_opens_without_waiting_for_the_schema_lock(
    store: JobStore, open_store: StoreOpener, clock: ManualClock, schema_lock: asyncpg.Connection
) -> None:
    (job, _) = await store.insert_job(new_job())

    again = await asyncio.wait_for(open_store(clock), timeout=5)

    assert (await stored(again, job.id)).id == job.id


async def test_a_database_that_needs_migrating_waits_for_the_schema_lock(
    open_store: StoreOpener, clock: ManualClock, schema_lock: asyncpg.Connection
) -> None:
    opening = asyncio.ensure_future(open_store(clock))
    await asyncio.sleep(0.5)
    assert not opening.done()

    await schema_lock.execute("SELECT pg_advisory_unlock($1)", SCHEMA_LOCK)

    store = await asyncio.wait_for(opening, timeout=10)
    assert await counts(store) == {}


async def test_instances_starting_together_on_an_empty_database_all_open_it(
    open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    stores = await asyncio.gather(*(open_store(clock) for _ in range(4)))

    enqueued = await asyncio.gather(*(s.insert_job(new_job(n)) for n, s in enumerate(stores)))
    assert all(created for _, created in enqueued)
    assert await sql(settings, "SELECT count(*) FROM alembic_version") == [1]


async def test_downgrading_to_the_baseline_and_upgrading_again_keeps_the_jobs(
    store: JobStore, open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    (kept, _) = await store.insert_job(new_job(queue="emails", priority=3))
    (cancelled, _) = await store.insert_job(new_job(1))
    await store.cancel_job(cancelled.id)

    await migrations.run_locked(
        settings.database_url,
        lambda connection: command.downgrade(migrations.alembic_config(connection), "0001"),
    )
    # The baseline knew neither queues nor cancelled jobs: the job is back in the default
    # queue, and the cancelled one counted as failed.
    reopened = await open_store(clock)

    found = await stored(reopened, kept.id)
    assert (found.payload, found.queue, found.priority) == (kept.payload, DEFAULT_QUEUE, 0)
    assert (await stored(reopened, cancelled.id)).status is FAILED
    assert await counts(reopened) == {"queued": 1, "failed": 1}


# --- Unique keys: the partial unique index decides, whichever instance inserts.


async def test_instances_racing_to_insert_one_unique_key_create_one_job(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    others = [await open_store(clock) for _ in range(2)]
    stores = [store, *others]

    for round_ in range(40):
        key = f"race-{round_}"
        # Two inserts from each instance: some share a statement, some race across.
        outcomes = await asyncio.gather(
            *(s.insert_job(new_job(n, unique_key=key)) for n, s in enumerate(stores * 2))
        )
        assert sum(created for _, created in outcomes) == 1, key
        assert len({job.id for job, _ in outcomes}) == 1, key
    assert await counts(store) == {"queued": 40}


async def test_bulk_inserts_racing_with_overlapping_keys_create_each_key_once(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    other = await open_store(clock)
    keys = [f"k{n}" for n in range(200)]

    first, second = await asyncio.gather(
        store.insert_all_jobs([new_job(n, unique_key=key) for n, key in enumerate(keys)]),
        other.insert_all_jobs([new_job(n, unique_key=key) for n, key in enumerate(reversed(keys))]),
    )

    by_key: dict[str, set[int]] = {}
    for job, _ in [*first, *second]:
        assert job.unique_key is not None
        by_key.setdefault(job.unique_key, set()).add(job.id)
    assert all(len(ids) == 1 for ids in by_key.values())
    assert sum(created for _, created in [*first, *second]) == 200
    assert await counts(store) == {"queued": 200}


async def test_an_insert_waits_for_an_uncommitted_holder_and_names_it_once_committed(
    store: JobStore, settings: Settings, clock: ManualClock
) -> None:
    other = await asyncpg.connect(settings.database_url)
    try:
        transaction = other.transaction()
        await transaction.start()
        holder = await other.fetchval(
            "INSERT INTO jobs (payload, status, attempt, max_attempts, queue, priority,"
            " unique_key, cancel_requested, run_at, claim_at, inserted_at, errors)"
            " VALUES ('{}', 'queued', 0, 3, 'default', 0, 'k', false, $1, $1, $1, '[]')"
            " RETURNING id",
            clock.now(),
        )
        inserting = asyncio.create_task(store.insert_job(new_job(unique_key="k")))
        await asyncio.sleep(0.3)
        assert not inserting.done()

        await transaction.commit()

        job, created = await asyncio.wait_for(inserting, timeout=5)
        assert (job.id, created) == (holder, False)
    finally:
        await other.close()


async def test_an_insert_waiting_on_a_holder_that_rolls_back_creates_the_job(
    store: JobStore, settings: Settings, clock: ManualClock
) -> None:
    other = await asyncpg.connect(settings.database_url)
    try:
        transaction = other.transaction()
        await transaction.start()
        await other.execute(
            "INSERT INTO jobs (payload, status, attempt, max_attempts, queue, priority,"
            " unique_key, cancel_requested, run_at, claim_at, inserted_at, errors)"
            " VALUES ('{}', 'queued', 0, 3, 'default', 0, 'k', false, $1, $1, $1, '[]')",
            clock.now(),
        )
        inserting = asyncio.create_task(store.insert_job(new_job(unique_key="k")))
        await asyncio.sleep(0.3)

        await transaction.rollback()

        job, created = await asyncio.wait_for(inserting, timeout=5)
        assert created
        assert (await stored(store, job.id)).unique_key == "k"
    finally:
        await other.close()


# --- Pause, cancel and retry across instances.


async def test_a_queue_paused_through_one_instance_is_not_claimed_by_another(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    other = await open_store(clock)
    (held, _) = await store.insert_job(new_job(queue="emails"))
    (free, _) = await store.insert_job(new_job())

    await store.pause_queue("emails")

    assert [job.id for job in await other.fetch_jobs({DEFAULT_QUEUE: 5})] == [free.id]
    assert await other.fetch_jobs({"emails": 5}) == []
    restarted = await open_store(clock)
    assert await restarted.fetch_jobs({"emails": 5}) == []
    assert [q.paused for q in await restarted.list_queues() if q.name == "emails"] == [True]

    woken: list[bool] = []
    other.subscribe(lambda: woken.append(True))
    await store.resume_queue("emails")
    await wait_until(lambda: bool(woken), timeout=2, message="the other instance to wake")
    assert [job.id for job in await other.fetch_jobs({"emails": 5})] == [held.id]


async def test_a_pause_written_by_hand_holds_at_the_next_claim(
    store: JobStore, settings: Settings
) -> None:
    # The claim itself reads the queues table: nothing the store remembers.
    await store.insert_job(new_job(queue="emails"))
    await sql(settings, "INSERT INTO queues (name, paused) VALUES ('emails', true)")

    assert await store.fetch_jobs({"emails": 5, DEFAULT_QUEUE: 5}) == []
    assert await store.next_run_at({"emails": 5, DEFAULT_QUEUE: 5}) is None

    await sql(settings, "UPDATE queues SET paused = false")
    assert len(await store.fetch_jobs({DEFAULT_QUEUE: 5})) == 1


async def test_a_cancel_asked_through_one_instance_is_heard_at_once_by_every_instance(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    other = await open_store(clock)
    heard_here: list[int] = []
    heard_there: list[int] = []
    store.subscribe_cancellations(heard_here.append)
    other.subscribe_cancellations(heard_there.append)
    first, second = [job for job, _ in await store.insert_all_jobs([new_job(0), new_job(1)])]
    await store.fetch_jobs(EVERY_QUEUE)
    asked = time.monotonic()

    await other.cancel_job(first.id)

    # Well within the engine's poll interval (1 s by default): NOTIFY, not polling.
    await wait_until(
        lambda: heard_here == heard_there == [first.id],
        timeout=0.5,
        message="both instances to hear the cancel",
    )
    assert time.monotonic() - asked < 0.5
    # Asked again, nobody is told again: notices arrive in order, so the second job's
    # would come after a repeated first one.
    await other.cancel_job(first.id)
    await store.cancel_job(second.id)
    await wait_until(lambda: heard_here == heard_there == [first.id, second.id], timeout=2)


async def test_with_notify_off_a_cancel_is_told_here_and_found_elsewhere_by_asking(
    make_settings: SettingsFactory, clock: ManualClock
) -> None:
    settings = make_settings(database_notify=False)
    store, other = make_store(settings, clock), make_store(settings, clock)
    await store.open()
    await other.open()
    try:
        heard_here: list[int] = []
        heard_there: list[int] = []
        store.subscribe_cancellations(heard_here.append)
        other.subscribe_cancellations(heard_there.append)
        (job, _) = await store.insert_job(new_job())
        await store.fetch_jobs(EVERY_QUEUE)

        await other.cancel_job(job.id)

        assert (heard_here, heard_there) == ([], [job.id])
        assert await store.cancel_requested_among([job.id]) == [job.id]
    finally:
        await store.close()
        await other.close()


async def test_cancels_are_notified_on_a_channel_of_their_own_with_the_job_id(
    store: JobStore, settings: Settings
) -> None:
    listener = await asyncpg.connect(settings.database_url)
    heard: list[tuple[str, str]] = []
    await listener.add_listener(CANCEL_CHANNEL, lambda *args: heard.append((args[2], args[3])))
    try:
        (job, _) = await store.insert_job(new_job())
        await store.fetch_jobs(EVERY_QUEUE)

        await store.cancel_job(job.id)

        schema = await listener.fetchval("SELECT current_schema()")
        await wait_until(lambda: heard == [(CANCEL_CHANNEL, f"{schema}.{job.id}")], timeout=2)
    finally:
        await listener.close()


async def test_a_cancel_in_another_schema_of_the_database_is_not_heard_here(
    store: JobStore,
    settings: Settings,
    make_settings: SettingsFactory,
    postgres_url: str,
    clock: ManualClock,
) -> None:
    # Two services sharing one database, a schema each: their job ids overlap.
    schema = f"test_{uuid.uuid4().hex[:12]}"
    await sql(settings, f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in postgres_url else "?"
    elsewhere = make_store(
        make_settings(database_url=f"{postgres_url}{separator}search_path={schema}"), clock
    )
    await elsewhere.open()
    try:
        heard_here: list[int] = []
        heard_there: list[int] = []
        store.subscribe_cancellations(heard_here.append)
        elsewhere.subscribe_cancellations(heard_there.append)
        here = [job for job, _ in await store.insert_all_jobs([new_job(0), new_job(1)])]
        (there, _) = await elsewhere.insert_job(new_job())
        assert there.id == here[0].id
        await store.fetch_jobs(EVERY_QUEUE)
        await elsewhere.fetch_jobs(EVERY_QUEUE)

        await elsewhere.cancel_job(there.id)
        # Notices arrive in the order they were sent: once this one is heard, so is any
        # that the other schema's cancel sent here.
        await store.cancel_job(here[1].id)
        await wait_until(lambda: here[1].id in heard_here, timeout=2)

        assert heard_here == [here[1].id]
        assert heard_there == [there.id]
    finally:
        await elsewhere.close()
        await sql(settings, f"DROP SCHEMA {schema} CASCADE")


async def test_a_retry_through_one_instance_wakes_the_others(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    other = await open_store(clock)
    (job, _) = await store.insert_job(new_job())
    await store.cancel_job(job.id)
    woken: list[bool] = []
    other.subscribe(lambda: woken.append(True))

    await store.retry_job(job.id)

    await wait_until(lambda: bool(woken), timeout=2, message="the other instance to wake")
    assert [claimed.id for claimed in await other.fetch_jobs(EVERY_QUEUE)] == [job.id]


# --- Counts: per queue and status, kept apart from the jobs table.


async def test_counts_per_queue_follow_cancels_and_retries_through_folding(
    store: JobStore, settings: Settings
) -> None:
    jobs = [
        job
        for job, _ in await store.insert_all_jobs(
            [new_job(0, queue="emails"), new_job(1, queue="emails"), new_job(2), new_job(3)]
        )
    ]
    await store.cancel_job(jobs[0].id)
    done, failed = await store.fetch_jobs({DEFAULT_QUEUE: 2, "emails": 0})
    await store.complete_job(done, None)
    await store.error_job(failed, "give up", None)
    await sql(settings, FOLD_COUNTS)
    await store.retry_job(jobs[0].id)
    await store.retry_job(failed.id)

    queues = {q.name: {s: n for s, n in q.counts.items() if n} for q in await store.list_queues()}

    assert queues == {"default": {QUEUED: 1, DONE: 1}, "emails": {QUEUED: 2}}
    assert await counts(store) == {"queued": 3, "done": 1}
    await sql(settings, FOLD_COUNTS)
    assert await counts(store) == {"queued": 3, "done": 1}
    # One row per queue and status left, none for the counts back at zero.
    assert await sql(settings, "SELECT count(*) FROM job_counts") == [3]


async def counts_in_the_jobs_table(settings: Settings) -> dict[str, dict[JobStatus, int]]:
    """Per queue, per status: the jobs there are, counted one by one."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch("SELECT queue, status, count(*) FROM jobs GROUP BY queue, status")
    finally:
        await conn.close()
    counted: dict[str, dict[JobStatus, int]] = {}
    for queue, status, n in rows:
        counted.setdefault(queue, {})[JobStatus(status)] = n
    return counted


async def assert_counts_are_the_jobs_tables(store: JobStore, settings: Settings) -> None:
    """count_jobs and list_queues say what counting the jobs table says, status by status."""
    expected = await counts_in_the_jobs_table(settings)
    queues = {
        queue.name: {status: n for status, n in queue.counts.items() if n}
        for queue in await store.list_queues()
    }
    assert {name: queue for name, queue in queues.items() if queue} == expected
    totals = dict.fromkeys(JobStatus, 0)
    for queue_counts in expected.values():
        for status, n in queue_counts.items():
            totals[status] += n
    assert await store.count_jobs() == totals


async def test_counts_stay_exact_through_every_change_of_status(
    store: JobStore, open_store: StoreOpener, settings: Settings, clock: ManualClock
) -> None:
    # Each step is a statement that changes statuses; a step whose count went missing or
    # was kept twice shows here, and in the jobs table, as the queue and status it left.
    async def step() -> None:
        await assert_counts_are_the_jobs_tables(store, settings)

    # Inserts: in bulk (two of them with one key, so one is created), alone, and a key
    # already held.
    await store.insert_all_jobs(
        [new_job(n, queue="emails" if n % 2 else DEFAULT_QUEUE) for n in range(8)]
        + [new_job(8, unique_key="k"), new_job(9, unique_key="k")]
    )
    await store.insert_job(new_job(10, queue="emails", max_attempts=1))
    await store.insert_job(new_job(11, unique_key="k"))
    await step()
    # A schedule's tick, and the same tick again: one job.
    tick = clock.now()
    await store.enqueue_tick("nightly", tick, new_job(12, queue="reports"))
    await store.enqueue_tick("nightly", tick, new_job(13, queue="reports"))
    await step()

    # Claims from a named queue and from the rest.
    running = await store.fetch_jobs({DEFAULT_QUEUE: 4, "emails": 3})
    assert len(running) == 7
    await step()
    done, cancelled, retried, failed, released, cancelled_released, *rest = running
    await store.complete_job(done, {"ok": True})
    await step()
    await store.cancel_job(cancelled.id)  # running: asked to stop, still running
    await step()
    await store.complete_job(cancelled, None)
    await step()
    await store.error_job(retried, "again", clock.now())
    await store.error_job(failed, "give up", None)
    await step()
    await store.cancel_job(cancelled_released.id)
    await store.release_jobs([released, cancelled_released])
    await step()
    await sql(settings, FOLD_COUNTS)
    await step()

    # Rescues: a lease that expired (requeued, failed on its last attempt, cancelled), and
    # an instance that died. An outcome its instance stores too late changes nothing.
    (late,) = rest
    expiring = await store.fetch_jobs({DEFAULT_QUEUE: 2, "emails": 3})
    await store.cancel_job(expiring[0].id)
    await sql(settings, "UPDATE jobs SET lease_expires_at = now() - interval '1 second'")
    other = await open_store(clock)
    assert await other.rescue_orphaned_jobs() == 1 + len(expiring)
    await step()
    rescued = {(await stored(other, job.id)).status for job in expiring}
    assert rescued == {QUEUED, FAILED, CANCELLED}
    await store.complete_job(late, None)
    await step()
    lost = await store.fetch_jobs({DEFAULT_QUEUE: 2, "emails": 2, "reports": 1})
    assert lost
    await sql(
        settings,
        "INSERT INTO instances (id, started_at) VALUES ('gone:1:dead', now())",
        "UPDATE jobs SET locked_by = 'gone:1:dead' WHERE status = 'running'",
    )
    assert await other.rescue_orphaned_jobs() == len(lost)
    await step()

    # Cancel of a queued job, retries of a failed and a cancelled one.
    queued = await store.list_jobs(JobFilter(status=QUEUED), 1, 0)
    await store.cancel_job(queued[0].id)
    await step()
    await store.retry_job(failed.id)
    await store.retry_job(cancelled.id)
    await step()
    # Bulk: every queued job of a queue cancelled, a running one asked to stop, and the
    # failed and cancelled jobs retried, in rounds of 2.
    while await store.cancel_jobs(JobFilter(queue="emails"), clock.now(), 2):
        await step()
    while await store.retry_jobs(JobFilter(), clock.now(), 2):
        await step()

    # Retention deletes finished jobs of every status.
    clock.advance(LEASE)
    for status in (DONE, FAILED, CANCELLED):
        await store.delete_finished_jobs(status, clock.now(), 100)
        await step()
    await sql(settings, FOLD_COUNTS)
    await step()
    # Queued jobs are left (the bulk retry queued the reports queue's too), whose counts
    # were compared all along.
    left = await counts_in_the_jobs_table(settings)
    assert set(left) == {DEFAULT_QUEUE, "emails", "reports"}


async def test_the_store_folds_the_appended_counts_once_there_are_many(
    store: JobStore, settings: Settings
) -> None:
    await store.insert_all_jobs([new_job(0)])
    # Claims and outcomes in pairs, as many statements would append them, which cancel out.
    append = (
        "INSERT INTO job_counts (queue, status, left_status, n) SELECT 'default',"
        " CASE WHEN i % 2 = 1 THEN 'running' ELSE 'queued' END,"
        " CASE WHEN i % 2 = 1 THEN 'queued' ELSE 'running' END, 1"
        " FROM generate_series(1, $1) AS i"
    )
    rows = "SELECT count(*) FROM job_counts"
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(append, FOLD_ROWS - 2)

        await conn.execute(FOLD_MANY_COUNTS)
        assert await conn.fetchval(rows) == FOLD_ROWS - 1

        await conn.execute(append, 2)
        await conn.execute(FOLD_MANY_COUNTS)
        assert await conn.fetchval(rows) == 1
    finally:
        await conn.close()
    assert await counts(store) == {"queued": 1}


# --- Retention: one instance deletes at a time, and the counts follow.


async def finished_jobs(store: JobStore, count: int) -> None:
    await store.insert_all_jobs([new_job(n) for n in range(count)])
    for job in await store.fetch_jobs({DEFAULT_QUEUE: count}):
        await store.complete_job(job, None)


async def test_an_instance_deletes_nothing_while_another_is_deleting(
    store: JobStore, settings: Settings, clock: ManualClock
) -> None:
    await finished_jobs(store, 3)
    clock.advance(LEASE)
    other = await asyncpg.connect(settings.database_url)
    try:
        async with other.transaction():
            await other.execute(f"SELECT pg_advisory_xact_lock({RETENTION_LOCK})")
            assert await store.delete_finished_jobs(DONE, clock.now(), 100) == 0
            assert await counts(store) == {"done": 3}
    finally:
        await other.close()

    assert await store.delete_finished_jobs(DONE, clock.now(), 100) == 3
    assert await counts(store) == {}


async def test_instances_deleting_at_once_delete_each_job_once_and_keep_counts_right(
    open_store: StoreOpener, store: JobStore, settings: Settings, clock: ManualClock
) -> None:
    await finished_jobs(store, 500)
    others = [await open_store(clock) for _ in range(2)]
    clock.advance(LEASE)
    keep = {DONE: timedelta(seconds=1)}

    deleted = await asyncio.gather(
        *(retention.delete_expired_jobs(one, keep, clock) for one in [store, *others])
    )

    # Whoever found the lock taken stopped; the rounds after it delete the rest.
    while remaining := await retention.delete_expired_jobs(store, keep, clock):
        deleted.append(remaining)
    assert sum(deleted) == 500
    assert await sql(settings, "SELECT count(*) FROM jobs") == [0]
    assert await counts(store) == {}
    await sql(settings, FOLD_COUNTS)
    assert await sql(settings, "SELECT count(*) FROM job_counts") == [0]


# --- Faults, on a server of the test's own: stopping it never touches the shared one.


class PrivateServer:
    """A PostgreSQL cluster made for one test (initdb), on a free port, to stop and start."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.directory = Path(tempfile.mkdtemp(prefix="pg-fault-"))
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        # PostgreSQL refuses to run as root: then its files and processes are postgres's.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.directory, "postgres")
        self._run("initdb", "-D", str(self.directory / "data"), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        data = str(self.directory / "data")
        log = str(self.directory / "log")
        self._run("pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        """Stop (fast: sessions are ended) and start again, as `pg_ctl restart -m fast`."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        """Stop every process of the server, connections left open: a stalled disk or a
        network partition, as clients see it."""
        self._signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, number: signal.Signals) -> None:
        postmaster = int((self.directory / "data" / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(
            ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in [postmaster, *map(int, children)]:
            with suppress(ProcessLookupError):
                os.kill(pid, number)

    def remove(self) -> None:
        with suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [*self.as_user, str(self.bindir / program), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=60)


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, or Debian's newest /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        return Path(on_path).parent
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda path: int(path.parts[-3])
    )
    return found[-1].parent if found else None


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    bindir = postgres_bindir()
    if bindir is None:
        reason = "no initdb/pg_ctl (PostgreSQL server binaries) to run a server of the test's own"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    server = PrivateServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.remove()


async def test_workers_and_health_are_back_within_seconds_of_a_long_outage(
    private_server: PrivateServer, make_settings: SettingsFactory
) -> None:
    settings = make_settings(database_url=private_server.url)
    async with serve(create_app(settings)) as client:
        first = await client.post("/jobs", json={"payload": {"n": 1}})
        await wait_until(lambda: job_done(client, first.json()["job_id"]), message="a job")

        private_server.stop()
        await wait_until(lambda: health_is(client, 503), message="/health to say DEGRADED")
        # Long enough that pauses doubling from 0.1 s would have grown past 6 s.
        await asyncio.sleep(10)
        await asyncio.to_thread(private_server.start)

        await wait_until(lambda: health_is(client, 200), timeout=2, message="/health OK again")
        # A connection the outage broke can still answer one request 503, which clients
        # retry (README, API).
        accepted: list[int] = []

        async def accept() -> bool:
            response = await client.post("/jobs", json={"payload": {"n": 2}})
            if response.status_code == 202:
                accepted.append(response.json()["job_id"])
            return bool(accepted)

        await wait_until(accept, timeout=2, message="a job accepted again")
        await wait_until(lambda: job_done(client, accepted[0]), timeout=2, message="it to run")


async def test_a_frozen_database_costs_a_503_within_its_timeout_and_health_a_second(
    private_server: PrivateServer, make_settings: SettingsFactory
) -> None:
    settings = make_settings(database_url=private_server.url, database_timeout=1)
    async with serve(create_app(settings)) as client:
        first = await client.post("/jobs", json={"payload": {"n": 1}})
        await wait_until(lambda: job_done(client, first.json()["job_id"]), message="a job")

        private_server.freeze()
        try:
            # The client gives up after 5 s: a request that waited for the server would fail.
            refused = await client.post("/jobs", json={"payload": {"n": 2}}, timeout=5)
            health = await client.get("/health", timeout=5)
        finally:
            private_server.thaw()

        assert refused.status_code == 503, refused.text
        assert refused.json() == {"error": "Job store unavailable"}
        assert refused.headers["retry-after"] == "1"
        assert health.status_code == 503
        assert health.json()["store"] == "timed out after 0.8 s"
        await wait_until(lambda: health_is(client, 200), timeout=2, message="/health OK again")
        accepted: list[int] = []

        async def accept() -> bool:
            response = await client.post("/jobs", json={"payload": {"n": 3}})
            if response.status_code == 202:
                accepted.append(response.json()["job_id"])
            return bool(accepted)

        await wait_until(accept, timeout=2, message="a job accepted again")
        await wait_until(lambda: job_done(client, accepted[0]), timeout=2, message="it to run")


async def test_jobs_that_finish_while_the_database_restarts_are_stored_done_and_run_once(
    private_server: PrivateServer, make_settings: SettingsFactory
) -> None:
    release = asyncio.Event()
    started: list[int] = []
    registry = TaskRegistry()

    @registry.task("hold")
    async def hold(job: Job) -> int:
        started.append(job.id)
        await release.wait()
        return job.id

    settings = make_settings(database_url=private_server.url)
    async with serve(create_app(settings, registry=registry)) as client:
        submitted = [
            (await client.post("/jobs", json={"payload": {"task": "hold"}})).json()["job_id"]
            for _ in range(2)
        ]
        await wait_until(lambda: len(started) == 2, message="both jobs to start")

        await asyncio.to_thread(private_server.stop)
        release.set()  # their outcomes cannot be stored now
        await asyncio.sleep(1)
        await asyncio.to_thread(private_server.start)

        # Well within the 30 s lease that would otherwise bring them back to run again.
        async def all_done() -> bool:
            return all([await job_done(client, job_id) for job_id in submitted])

        await wait_until(all_done, timeout=10, message="both stored done")
        for job_id in submitted:
            job = (await client.get(f"/jobs/{job_id}")).json()
            assert (job["attempt"], job["result"]) == (1, job_id)
        assert sorted(started) == sorted(submitted)


async def health_is(client: httpx.AsyncClient, status_code: int) -> bool:
    return (await client.get("/health")).status_code == status_code


async def job_done(client: httpx.AsyncClient, job_id: int) -> bool:
    response = await client.get(f"/jobs/{job_id}")
    return response.status_code == 200 and response.json()["status"] == "done"
