"""The contract every job store must keep, written once against the `store` fixture."""

{% if cookiecutter.job_store == "postgres" -%}
import asyncio
{% endif -%}
from datetime import datetime, timedelta

{% if cookiecutter.job_store == "postgres" -%}
import asyncpg

{% endif -%}
from {{ cookiecutter.package_name }}.jobs.model import Job, {% if cookiecutter.job_store != "memory" %}JobRow, {% endif %}JobStatus
from {{ cookiecutter.package_name }}.jobs.store import JobStore, NewJob
{%- if cookiecutter.job_store == "sqlite" %}
from {{ cookiecutter.package_name }}.jobs.store.sqlite import LOST_WORKER_STOPPED
{%- elif cookiecutter.job_store == "postgres" %}
from {{ cookiecutter.package_name }}.jobs.store.postgres import FOLD_COUNTS, LOST_LEASE_EXPIRED
from {{ cookiecutter.package_name }}.settings import Settings
{%- endif %}

from .conftest import ManualClock{% if cookiecutter.job_store != "memory" %}, StoreOpener{% endif %}

QUEUED, RUNNING, DONE, FAILED = JobStatus


def new_job(n: int = 0, *, max_attempts: int = 3, run_at: datetime | None = None) -> NewJob:
    return NewJob(payload={"n": n}, max_attempts=max_attempts, run_at=run_at)


async def insert(store: JobStore, count: int = 1) -> list[Job]:
    return await store.insert_all_jobs([new_job(n) for n in range(count)])


async def counts(store: JobStore) -> dict[str, int]:
    """Non-zero counts by status name, so comparisons read naturally."""
    return {str(status): n for status, n in (await store.count_jobs()).items() if n}


async def stored(store: JobStore, job: Job) -> Job:
    found = await store.get_job(job.id)
    assert found is not None
    return found


{% if cookiecutter.job_store != "memory" -%}
def test_the_table_has_a_column_for_every_field_of_a_job_and_no_other() -> None:
    # Job and JobRow declare the fields each: a field added to one only fails here.
    fields = list(Job.model_fields)
    columns = [column.name for column in JobRow.metadata.tables["jobs"].columns]
{%- if cookiecutter.job_store == "postgres" %}
    assert sorted(columns) == sorted([*fields, "locked_by", "lease_expires_at"])
{%- else %}
    assert sorted(columns) == sorted(fields)
{%- endif %}


{% endif -%}
async def test_insert_returns_a_queued_job_with_a_growing_id_and_utc_timestamps(
    store: JobStore, clock: ManualClock
) -> None:
    first = await store.insert_job(NewJob(payload={"task": "x", "value": 42}, max_attempts=5))
    second = await store.insert_job(new_job())

    assert second.id > first.id
    assert first.payload == {"task": "x", "value": 42}
    assert (first.status, first.attempt, first.max_attempts) == (QUEUED, 0, 5)
    assert first.inserted_at == first.run_at == clock.now()
    assert first.inserted_at.utcoffset() == timedelta(0)
    assert (first.started_at, first.finished_at, first.result, first.errors) == (
        None,
        None,
        None,
        [],
    )


async def test_get_job_returns_what_was_inserted_with_utc_timestamps_to_the_microsecond(
    store: JobStore, clock: ManualClock
) -> None:
    clock.advance(0.123456)
    run_at = clock.now() + timedelta(seconds=30.000001)
    job = await store.insert_job(new_job(7, max_attempts=2, run_at=run_at))

    found = await stored(store, job)

    assert found == job
    assert found.run_at == run_at
    assert found.run_at.utcoffset() == timedelta(0)
    assert found.inserted_at.utcoffset() == timedelta(0)


async def test_insert_all_jobs_keeps_the_given_order_in_ascending_ids(store: JobStore) -> None:
    jobs = await insert(store, 5)

    ids = [job.id or 0 for job in jobs]
    assert [job.payload["n"] for job in jobs] == [0, 1, 2, 3, 4]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5


async def test_get_job_of_an_unknown_id_is_none(store: JobStore) -> None:
    await insert(store)

    assert await store.get_job(10_000) is None


async def test_fetch_jobs_claims_only_due_jobs_in_run_at_then_id_order(
    store: JobStore, clock: ManualClock
) -> None:
    now = clock.now()
    later = await store.insert_job(new_job(0, run_at=now + timedelta(seconds=10)))
    early_a = await store.insert_job(new_job(1, run_at=now - timedelta(seconds=5)))
    current = await store.insert_job(new_job(2))
    early_b = await store.insert_job(new_job(3, run_at=now - timedelta(seconds=5)))

    claimed = await store.fetch_jobs(10)

    assert [job.id for job in claimed] == [early_a.id, early_b.id, current.id]
    assert (await stored(store, later)).status is QUEUED

    clock.advance(10)
    assert [job.id for job in await store.fetch_jobs(10)] == [later.id]


async def test_fetch_jobs_marks_claimed_jobs_running_with_the_next_attempt(
    store: JobStore, clock: ManualClock
) -> None:
    job = await store.insert_job(new_job())
    clock.advance(3)

    (claimed,) = await store.fetch_jobs(1)

    assert (claimed.id, claimed.status, claimed.attempt) == (job.id, RUNNING, 1)
    assert claimed.started_at == clock.now()
    assert claimed.finished_at is None
    found = await stored(store, job)
    assert (found.status, found.attempt, found.started_at) == (RUNNING, 1, clock.now())


async def test_fetch_jobs_never_returns_the_same_job_twice(store: JobStore) -> None:
    await insert(store, 3)

    first = await store.fetch_jobs(10)
    second = await store.fetch_jobs(10)

    assert len(first) == 3
    assert second == []


async def test_fetch_jobs_respects_the_limit(store: JobStore) -> None:
    jobs = await insert(store, 5)

    batches = [await store.fetch_jobs(2) for _ in range(4)]

    assert [[job.id for job in batch] for batch in batches] == [
        [jobs[0].id, jobs[1].id],
        [jobs[2].id, jobs[3].id],
        [jobs[4].id],
        [],
    ]


async def test_complete_job_stores_the_result_and_finished_at(
    store: JobStore, clock: ManualClock
) -> None:
    await insert(store)
    (job,) = await store.fetch_jobs(1)
    clock.advance(2)

    await store.complete_job(job, {"answer": 42, "items": [1, "two", None]})

    found = await stored(store, job)
    assert found.status is DONE
    assert found.result == {"answer": 42, "items": [1, "two", None]}
    assert found.finished_at == clock.now()
    assert found.attempt == 1
    assert found.errors == []


async def test_error_job_with_a_retry_time_requeues_the_job_until_then(
    store: JobStore, clock: ManualClock
) -> None:
    await insert(store)
    (job,) = await store.fetch_jobs(1)
    retry_at = clock.now() + timedelta(seconds=30)

    await store.error_job(job, "RuntimeError: boom", retry_at)

    found = await stored(store, job)
    assert (found.status, found.attempt, found.run_at) == (QUEUED, 1, retry_at)
    assert found.errors == ["RuntimeError: boom"]
    assert found.finished_at is None
    assert await store.fetch_jobs(1) == []

    clock.advance(30)
    (again,) = await store.fetch_jobs(1)
    assert (again.id, again.attempt, again.errors) == (job.id, 2, ["RuntimeError: boom"])


async def test_error_job_without_a_retry_time_fails_the_job_and_appends_the_error(
    store: JobStore, clock: ManualClock
) -> None:
    await insert(store)
    (job,) = await store.fetch_jobs(1)
    await store.error_job(job, "first", clock.now())
    (job,) = await store.fetch_jobs(1)
    clock.advance(1)

    await store.error_job(job, "second", None)

    found = await stored(store, job)
    assert (found.status, found.attempt) == (FAILED, 2)
    assert found.errors == ["first", "second"]
    assert found.finished_at == clock.now()
    assert await store.fetch_jobs(1) == []


async def test_release_jobs_requeues_running_jobs_and_gives_their_attempt_back(
    store: JobStore,
) -> None:
    await insert(store, 2)
    claimed = await store.fetch_jobs(2)

    await store.release_jobs(claimed)

    for job in claimed:
        found = await stored(store, job)
        assert (found.status, found.attempt, found.started_at) == (QUEUED, 0, None)
        assert found.errors == []
    reclaimed = await store.fetch_jobs(2)
    assert [(job.id, job.attempt) for job in reclaimed] == [(job.id, 1) for job in claimed]


async def test_release_jobs_of_a_retried_job_keeps_its_earlier_attempts(
    store: JobStore, clock: ManualClock
) -> None:
    await insert(store)
    (job,) = await store.fetch_jobs(1)
    await store.error_job(job, "boom", clock.now())
    (job,) = await store.fetch_jobs(1)

    await store.release_jobs([job])

    found = await stored(store, job)
    assert (found.status, found.attempt, found.errors) == (QUEUED, 1, ["boom"])


async def test_next_run_at_is_the_earliest_run_at_among_queued_jobs(
    store: JobStore, clock: ManualClock
) -> None:
    now = clock.now()
    assert await store.next_run_at() is None

    await store.insert_job(new_job(0, run_at=now + timedelta(seconds=20)))
    assert await store.next_run_at() == now + timedelta(seconds=20)

    await store.insert_job(new_job(1, run_at=now - timedelta(seconds=5)))
    assert await store.next_run_at() == now - timedelta(seconds=5)

    # A running job is no longer queued, so it no longer counts.
    await store.fetch_jobs(1)
    assert await store.next_run_at() == now + timedelta(seconds=20)

    clock.advance(20)
    await store.fetch_jobs(1)
    assert await store.next_run_at() is None


async def test_list_jobs_is_newest_first(store: JobStore, clock: ManualClock) -> None:
    older = await store.insert_job(new_job(0))
    clock.advance(1)
    # Inserted together, so with the same inserted_at: the higher id is newer.
    together = await insert(store, 2)

    listed = await store.list_jobs(None, 10, 0)

    assert [job.id for job in listed] == [together[1].id, together[0].id, older.id]


async def test_list_jobs_filters_by_status(store: JobStore, clock: ManualClock) -> None:
    jobs = await insert(store, 4)
    running = await store.fetch_jobs(2)
    await store.complete_job(running[0], None)

    def ids(listed: list[Job]) -> list[int | None]:
        return [job.id for job in listed]

    assert ids(await store.list_jobs(QUEUED, 10, 0)) == [jobs[3].id, jobs[2].id]
    assert ids(await store.list_jobs(RUNNING, 10, 0)) == [jobs[1].id]
    assert ids(await store.list_jobs(DONE, 10, 0)) == [jobs[0].id]
    assert await store.list_jobs(FAILED, 10, 0) == []


async def test_list_jobs_pages_with_limit_and_offset(store: JobStore) -> None:
    jobs = await insert(store, 5)
    newest_first = [job.id for job in reversed(jobs)]

    pages = [await store.list_jobs(None, 2, offset) for offset in (0, 2, 4, 6)]

    assert [[job.id for job in page] for page in pages] == [
        newest_first[0:2],
        newest_first[2:4],
        newest_first[4:5],
        [],
    ]
    assert await store.list_jobs(None, 2, 2**62) == []
    filtered = await store.list_jobs(QUEUED, 1, 1)
    assert [job.id for job in filtered] == [newest_first[1]]


async def test_count_jobs_matches_after_every_transition(
    store: JobStore, clock: ManualClock
) -> None:
    assert await counts(store) == {}

    await insert(store, 4)
    assert await counts(store) == {"queued": 4}

    claimed = await store.fetch_jobs(3)
    assert await counts(store) == {"queued": 1, "running": 3}

    await store.complete_job(claimed[0], {"ok": True})
    assert await counts(store) == {"queued": 1, "running": 2, "done": 1}

    await store.error_job(claimed[1], "retry me", clock.now())
    assert await counts(store) == {"queued": 2, "running": 1, "done": 1}

    await store.error_job(claimed[2], "give up", None)
    assert await counts(store) == {"queued": 2, "done": 1, "failed": 1}

    claimed = await store.fetch_jobs(2)
    await store.release_jobs(claimed[:1])
    assert await counts(store) == {"queued": 1, "running": 1, "done": 1, "failed": 1}


async def test_rescue_orphaned_jobs_finds_nothing_when_nothing_was_left_running(
    store: JobStore,
) -> None:
    jobs = await insert(store, 2)
    (job,) = await store.fetch_jobs(1)
    await store.complete_job(job, None)

    assert await store.rescue_orphaned_jobs() == 0
    assert (await stored(store, jobs[1])).status is QUEUED
{%- if cookiecutter.job_store == "sqlite" %}


# --- Durability: the file outlives the process. A second store opened on the same file
# plays the process that starts after the first one died with jobs still running.


async def test_reopened_store_keeps_every_job_and_its_state(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    jobs = await insert(store, 3)
    (job,) = await store.fetch_jobs(1)
    await store.complete_job(job, {"kept": True})

    reopened = await open_store(clock)

    assert [found.id for found in await reopened.list_jobs(None, 10, 0)] == [
        job.id for job in reversed(jobs)
    ]
    assert (await stored(reopened, job)).result == {"kept": True}
    assert await counts(reopened) == {"queued": 2, "done": 1}


async def test_rescue_requeues_a_job_left_running_and_counts_the_lost_attempt(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    (job,) = await insert(store)
    await store.fetch_jobs(1)

    restarted = await open_store(clock)
    rescued = await restarted.rescue_orphaned_jobs()

    assert rescued == 1
    found = await stored(restarted, job)
    assert (found.status, found.attempt) == (QUEUED, 1)
    assert found.errors == [LOST_WORKER_STOPPED]
    assert found.finished_at is None
    (again,) = await restarted.fetch_jobs(1)
    assert (again.id, again.attempt) == (job.id, 2)


async def test_rescue_fails_a_job_left_running_on_its_last_attempt(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    (job,) = await store.insert_all_jobs([new_job(max_attempts=1)])
    await store.fetch_jobs(1)
    clock.advance(5)

    restarted = await open_store(clock)
    rescued = await restarted.rescue_orphaned_jobs()

    assert rescued == 1
    found = await stored(restarted, job)
    assert (found.status, found.attempt) == (FAILED, 1)
    assert found.errors == [LOST_WORKER_STOPPED]
    assert found.finished_at == clock.now()
    assert await counts(restarted) == {"failed": 1}
    assert await restarted.fetch_jobs(1) == []
{%- elif cookiecutter.job_store == "postgres" %}


# --- Several instances: a second store on the same database plays another instance.
# Leases last JOB_LEASE_SECONDS (30 by default) of the clock the stores share.

LEASE = 30


async def test_another_instance_sees_every_job_and_its_state(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    jobs = await insert(store, 3)
    (job,) = await store.fetch_jobs(1)
    await store.complete_job(job, {"kept": True})

    other = await open_store(clock)

    assert [found.id for found in await other.list_jobs(None, 10, 0)] == [
        job.id for job in reversed(jobs)
    ]
    assert (await stored(other, job)).result == {"kept": True}
    assert await counts(other) == {"queued": 2, "done": 1}


async def test_a_running_job_is_not_rescued_while_its_lease_holds(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    (job,) = await insert(store)
    await store.fetch_jobs(1)
    other = await open_store(clock)
    clock.advance(LEASE - 1)

    assert await other.rescue_orphaned_jobs() == 0
    assert (await stored(other, job)).status is RUNNING


async def test_an_expired_lease_requeues_the_job_with_the_lost_attempt_counted(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    (job,) = await insert(store)
    await store.fetch_jobs(1)
    other = await open_store(clock)
    clock.advance(LEASE + 1)

    assert await other.rescue_orphaned_jobs() == 1

    found = await stored(other, job)
    assert (found.status, found.attempt) == (QUEUED, 1)
    assert found.errors == [LOST_LEASE_EXPIRED]
    assert found.finished_at is None
    (again,) = await other.fetch_jobs(1)
    assert (again.id, again.attempt) == (job.id, 2)


async def test_an_expired_lease_on_the_last_attempt_fails_the_job(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    (job,) = await store.insert_all_jobs([new_job(max_attempts=1)])
    await store.fetch_jobs(1)
    other = await open_store(clock)
    clock.advance(LEASE + 1)

    assert await other.rescue_orphaned_jobs() == 1

    found = await stored(other, job)
    assert (found.status, found.errors) == (FAILED, [LOST_LEASE_EXPIRED])
    assert found.finished_at == clock.now()
    assert await other.fetch_jobs(1) == []
    assert await counts(store) == await counts(other) == {"failed": 1}


async def test_a_rescue_skips_a_job_its_instance_is_finishing_and_waits_for_nothing(
    store: JobStore, open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    (job,) = await insert(store)
    await store.fetch_jobs(1)
    other = await open_store(clock)
    clock.advance(LEASE + 1)
    # The row locked as an outcome's transaction locks it, still open.
    finishing = await asyncpg.connect(settings.database_url)
    try:
        async with finishing.transaction():
            await finishing.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job.id)
            assert await asyncio.wait_for(other.rescue_orphaned_jobs(), timeout=5) == 0
    finally:
        await finishing.close()

    assert await other.rescue_orphaned_jobs() == 1


async def test_a_late_outcome_from_the_instance_that_lost_the_lease_changes_nothing(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    (job,) = await insert(store)
    (lost,) = await store.fetch_jobs(1)
    other = await open_store(clock)
    clock.advance(LEASE + 1)
    await other.rescue_orphaned_jobs()
    (taken_over,) = await other.fetch_jobs(1)

    await store.complete_job(lost, {"from": "the first instance"})
    await store.error_job(lost, "too late", None)

    found = await stored(other, job)
    assert (found.status, found.attempt, found.result) == (RUNNING, 2, None)
    assert await counts(store) == {"running": 1}
    await other.complete_job(taken_over, {"from": "the second instance"})
    assert (await stored(other, job)).result == {"from": "the second instance"}
    assert await counts(store) == {"done": 1}


async def run_sql_on(settings: Settings, *statements: str) -> list[int]:
    """Each statement's first value, on a connection to the store's database."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        return [await conn.fetchval(statement) for statement in statements]
    finally:
        await conn.close()


async def test_folding_the_appended_counts_changes_no_count(
    store: JobStore, settings: Settings
) -> None:
    await insert(store, 6)
    for _ in range(3):
        done, failed = await store.fetch_jobs(2)
        await store.complete_job(done, None)
        await store.error_job(failed, "give up", None)
    count_rows = "SELECT count(*) FROM job_counts"

    appended, _, folded = await run_sql_on(settings, count_rows, FOLD_COUNTS, count_rows)

    assert (appended, folded) == (6, 2)
    assert await counts(store) == {"done": 3, "failed": 3}


async def test_finished_jobs_from_before_the_counts_table_are_counted_once_it_is_made(
    store: JobStore, open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    await insert(store, 3)
    first, second = await store.fetch_jobs(2)
    await store.complete_job(first, None)
    await store.error_job(second, "give up", None)
    # As a database last written by a render from before the table.
    await run_sql_on(settings, "DROP TABLE job_counts")

    restarted = await open_store(clock)

    assert await counts(restarted) == {"queued": 1, "done": 1, "failed": 1}


async def test_ids_go_past_the_32_bit_range(store: JobStore, settings: Settings) -> None:
    await run_sql_on(settings, f"SELECT setval(pg_get_serial_sequence('jobs', 'id'), {2**31 - 1})")

    (job,) = await insert(store)

    assert job.id == 2**31
    assert (await stored(store, job)).id == 2**31


async def test_a_table_with_32_bit_ids_is_widened_at_start_with_its_jobs_kept(
    store: JobStore, open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    jobs = await insert(store, 2)
    # As a database last written by a render from before 64-bit ids.
    await run_sql_on(
        settings,
        "ALTER TABLE jobs ALTER COLUMN id TYPE integer",
        "ALTER SEQUENCE jobs_id_seq AS integer",
        f"SELECT setval('jobs_id_seq', {2**31 - 1})",
    )

    restarted = await open_store(clock)

    assert [found.id for found in await restarted.list_jobs(None, 10, 0)] == [
        job.id for job in reversed(jobs)
    ]
    (job,) = await insert(restarted)
    assert job.id == 2**31


async def test_a_32_bit_id_column_without_its_sequence_is_widened_all_the_same(
    store: JobStore, open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    (job,) = await insert(store)
    # As a table whose owner replaced the ids' sequence with ids of their own making.
    await run_sql_on(
        settings,
        "ALTER TABLE jobs ALTER COLUMN id TYPE integer",
        "ALTER TABLE jobs ALTER COLUMN id DROP DEFAULT",
        "DROP SEQUENCE jobs_id_seq",
    )

    restarted = await open_store(clock)

    assert (await stored(restarted, job)).id == job.id
    bigint_ids = (
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = 'jobs' AND column_name = 'id' AND data_type = 'bigint'"
    )
    assert await run_sql_on(settings, bigint_ids) == [1]


async def test_two_instances_claiming_together_never_get_the_same_job(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    await insert(store, 200)
    other = await open_store(clock)

    claims = await asyncio.gather(*(s.fetch_jobs(7) for _ in range(15) for s in (store, other)))

    claimed = [job.id for batch in claims for job in batch]
    assert len(claimed) == len(set(claimed)) == 200
{%- endif %}
