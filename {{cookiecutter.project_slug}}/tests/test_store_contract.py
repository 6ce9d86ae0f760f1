"""The contract every job store must keep, written once against the `store` fixture."""

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

{% if cookiecutter.job_store == "postgres" -%}
import asyncpg

{% endif -%}
from {{ cookiecutter.package_name }}.jobs.model import DEFAULT_QUEUE, Job, {% if cookiecutter.job_store != "memory" %}JobRow, {% endif %}JobStatus
from {{ cookiecutter.package_name }}.jobs.store import (
    JobConflict,
    JobFilter,
    JobStore,
    MinuteOutcomes,
    NewJob,
)
from {{ cookiecutter.package_name }}.jobs.store.base import OUTCOMES_KEPT, minute_of
{%- if cookiecutter.job_store == "sqlite" %}
from {{ cookiecutter.package_name }}.jobs.store.sqlite import LOST_WORKER_STOPPED
{%- elif cookiecutter.job_store == "postgres" %}
from {{ cookiecutter.package_name }}.jobs.store.postgres import (
    FOLD_COUNTS,
    LOST_INSTANCE_DIED,
    LOST_LEASE_EXPIRED,
)
from {{ cookiecutter.package_name }}.settings import Settings
{%- endif %}

from .conftest import ManualClock{% if cookiecutter.job_store != "memory" %}, StoreOpener{% endif %}

QUEUED, RUNNING, DONE, FAILED, CANCELLED = JobStatus


def new_job(
    n: int = 0,
    *,
    max_attempts: int = 3,
    run_at: datetime | None = None,
    task: str | None = None,
    **fields: Any,
) -> NewJob:
    payload: dict[str, Any] = {"n": n} if task is None else {"n": n, "task": task}
    return NewJob(payload=payload, max_attempts=max_attempts, run_at=run_at, **fields)


async def insert(store: JobStore, count: int = 1) -> list[Job]:
    enqueued = await store.insert_all_jobs([new_job(n) for n in range(count)])
    assert all(created for _, created in enqueued)
    return [job for job, _ in enqueued]


async def add(store: JobStore, job: NewJob) -> Job:
    """Insert one job that must be created."""
    enqueued = await store.insert_job(job)
    assert enqueued.created
    return enqueued.job


def limit(n: int) -> dict[str, int]:
    """Claim up to n jobs from every queue."""
    return {DEFAULT_QUEUE: n}


# Every queue served, with room.
EVERY_QUEUE = limit(1)
ANY = JobFilter()


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
    internal = ["claim_at", "task", "locked_by", "lease_expires_at", "lost_in_a_row"]
    assert sorted(columns) == sorted([*fields, *internal])
{%- else %}
    assert sorted(columns) == sorted([*fields, "claim_at"])
{%- endif %}


{% endif -%}
async def test_insert_returns_a_queued_job_with_a_growing_id_and_utc_timestamps(
    store: JobStore, clock: ManualClock
) -> None:
    first = await add(store, NewJob(payload={"task": "x", "value": 42}, max_attempts=5))
    second = await add(store, new_job())

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
    job = await add(store, new_job(7, max_attempts=2, run_at=run_at))

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
    later = await add(store, new_job(0, run_at=now + timedelta(seconds=10)))
    early_a = await add(store, new_job(1, run_at=now - timedelta(seconds=5)))
    current = await add(store, new_job(2))
    early_b = await add(store, new_job(3, run_at=now - timedelta(seconds=5)))

    claimed = await store.fetch_jobs(limit(10))

    assert [job.id for job in claimed] == [early_a.id, early_b.id, current.id]
    assert (await stored(store, later)).status is QUEUED

    clock.advance(10)
    assert [job.id for job in await store.fetch_jobs(limit(10))] == [later.id]


async def test_fetch_jobs_marks_claimed_jobs_running_with_the_next_attempt(
    store: JobStore, clock: ManualClock
) -> None:
    job = await add(store, new_job())
    clock.advance(3)

    (claimed,) = await store.fetch_jobs(limit(1))

    assert (claimed.id, claimed.status, claimed.attempt) == (job.id, RUNNING, 1)
    assert claimed.started_at == clock.now()
    assert claimed.finished_at is None
    found = await stored(store, job)
    assert (found.status, found.attempt, found.started_at) == (RUNNING, 1, clock.now())


async def test_fetch_jobs_never_returns_the_same_job_twice(store: JobStore) -> None:
    await insert(store, 3)

    first = await store.fetch_jobs(limit(10))
    second = await store.fetch_jobs(limit(10))

    assert len(first) == 3
    assert second == []


async def test_fetch_jobs_respects_the_limit(store: JobStore) -> None:
    jobs = await insert(store, 5)

    batches = [await store.fetch_jobs(limit(2)) for _ in range(4)]

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
    (job,) = await store.fetch_jobs(limit(1))
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
    (job,) = await store.fetch_jobs(limit(1))
    retry_at = clock.now() + timedelta(seconds=30)

    await store.error_job(job, "RuntimeError: boom", retry_at)

    found = await stored(store, job)
    assert (found.status, found.attempt, found.run_at) == (QUEUED, 1, retry_at)
    assert found.errors == ["RuntimeError: boom"]
    assert found.finished_at is None
    assert await store.fetch_jobs(limit(1)) == []

    clock.advance(30)
    (again,) = await store.fetch_jobs(limit(1))
    assert (again.id, again.attempt, again.errors) == (job.id, 2, ["RuntimeError: boom"])


async def test_error_job_without_a_retry_time_fails_the_job_and_appends_the_error(
    store: JobStore, clock: ManualClock
) -> None:
    await insert(store)
    (job,) = await store.fetch_jobs(limit(1))
    await store.error_job(job, "first", clock.now())
    (job,) = await store.fetch_jobs(limit(1))
    clock.advance(1)

    await store.error_job(job, "second", None)

    found = await stored(store, job)
    assert (found.status, found.attempt) == (FAILED, 2)
    assert found.errors == ["first", "second"]
    assert found.finished_at == clock.now()
    assert await store.fetch_jobs(limit(1)) == []


async def test_release_jobs_requeues_running_jobs_and_gives_their_attempt_back(
    store: JobStore,
) -> None:
    await insert(store, 2)
    claimed = await store.fetch_jobs(limit(2))

    await store.release_jobs(claimed)

    for job in claimed:
        found = await stored(store, job)
        assert (found.status, found.attempt, found.started_at) == (QUEUED, 0, None)
        assert found.errors == []
    reclaimed = await store.fetch_jobs(limit(2))
    assert [(job.id, job.attempt) for job in reclaimed] == [(job.id, 1) for job in claimed]


async def test_release_jobs_of_a_retried_job_keeps_its_earlier_attempts(
    store: JobStore, clock: ManualClock
) -> None:
    await insert(store)
    (job,) = await store.fetch_jobs(limit(1))
    await store.error_job(job, "boom", clock.now())
    (job,) = await store.fetch_jobs(limit(1))

    await store.release_jobs([job])

    found = await stored(store, job)
    assert (found.status, found.attempt, found.errors) == (QUEUED, 1, ["boom"])


async def test_next_run_at_is_the_earliest_run_at_among_queued_jobs(
    store: JobStore, clock: ManualClock
) -> None:
    now = clock.now()
    assert await store.next_run_at(EVERY_QUEUE) is None

    await add(store, new_job(0, run_at=now + timedelta(seconds=20)))
    assert await store.next_run_at(EVERY_QUEUE) == now + timedelta(seconds=20)

    await add(store, new_job(1, run_at=now - timedelta(seconds=5)))
    assert await store.next_run_at(EVERY_QUEUE) == now - timedelta(seconds=5)

    # A running job is no longer queued, so it no longer counts.
    await store.fetch_jobs(limit(1))
    assert await store.next_run_at(EVERY_QUEUE) == now + timedelta(seconds=20)

    clock.advance(20)
    await store.fetch_jobs(limit(1))
    assert await store.next_run_at(EVERY_QUEUE) is None


async def test_list_jobs_is_newest_first(store: JobStore, clock: ManualClock) -> None:
    older = await add(store, new_job(0))
    clock.advance(1)
    # Inserted together, so with the same inserted_at: the higher id is newer.
    together = await insert(store, 2)

    listed = await store.list_jobs(ANY, 10, 0)

    assert [job.id for job in listed] == [together[1].id, together[0].id, older.id]


async def test_list_jobs_filters_by_status(store: JobStore, clock: ManualClock) -> None:
    jobs = await insert(store, 4)
    running = await store.fetch_jobs(limit(2))
    await store.complete_job(running[0], None)

    def ids(listed: list[Job]) -> list[int | None]:
        return [job.id for job in listed]

    assert ids(await store.list_jobs(JobFilter(status=QUEUED), 10, 0)) == [jobs[3].id, jobs[2].id]
    assert ids(await store.list_jobs(JobFilter(status=RUNNING), 10, 0)) == [jobs[1].id]
    assert ids(await store.list_jobs(JobFilter(status=DONE), 10, 0)) == [jobs[0].id]
    assert await store.list_jobs(JobFilter(status=FAILED), 10, 0) == []


async def test_list_jobs_pages_with_limit_and_offset(store: JobStore) -> None:
    jobs = await insert(store, 5)
    newest_first = [job.id for job in reversed(jobs)]

    pages = [await store.list_jobs(ANY, 2, offset) for offset in (0, 2, 4, 6)]

    assert [[job.id for job in page] for page in pages] == [
        newest_first[0:2],
        newest_first[2:4],
        newest_first[4:5],
        [],
    ]
    assert await store.list_jobs(ANY, 2, 2**62) == []
    filtered = await store.list_jobs(JobFilter(status=QUEUED), 1, 1)
    assert [job.id for job in filtered] == [newest_first[1]]


async def test_count_jobs_matches_after_every_transition(
    store: JobStore, clock: ManualClock
) -> None:
    assert await counts(store) == {}

    await insert(store, 4)
    assert await counts(store) == {"queued": 4}

    claimed = await store.fetch_jobs(limit(3))
    assert await counts(store) == {"queued": 1, "running": 3}

    await store.complete_job(claimed[0], {"ok": True})
    assert await counts(store) == {"queued": 1, "running": 2, "done": 1}

    await store.error_job(claimed[1], "retry me", clock.now())
    assert await counts(store) == {"queued": 2, "running": 1, "done": 1}

    await store.error_job(claimed[2], "give up", None)
    assert await counts(store) == {"queued": 2, "done": 1, "failed": 1}

    claimed = await store.fetch_jobs(limit(2))
    await store.release_jobs(claimed[:1])
    assert await counts(store) == {"queued": 1, "running": 1, "done": 1, "failed": 1}


async def test_rescue_orphaned_jobs_finds_nothing_when_nothing_was_left_running(
    store: JobStore,
) -> None:
    jobs = await insert(store, 2)
    (job,) = await store.fetch_jobs(limit(1))
    await store.complete_job(job, None)

    assert await store.rescue_orphaned_jobs() == 0
    assert (await stored(store, jobs[1])).status is QUEUED


# --- Queues, priorities, unique keys, cancel and retry.

AGING = 300  # PRIORITY_AGING_SECONDS's default, which the test settings keep


def ids(jobs: list[Job]) -> list[int]:
    return [job.id for job in jobs]


async def test_queue_priority_and_unique_key_are_stored_and_returned(store: JobStore) -> None:
    job = await add(store, new_job(queue="emails", priority=7, unique_key="order-1"))

    assert (job.queue, job.priority, job.unique_key) == ("emails", 7, "order-1")
    assert await stored(store, job) == job
    plain = await add(store, new_job())
    assert (plain.queue, plain.priority, plain.unique_key, plain.cancel_requested) == (
        "default",
        0,
        None,
        False,
    )


async def test_due_jobs_are_claimed_by_priority_then_run_at_then_id(
    store: JobStore, clock: ManualClock
) -> None:
    now = clock.now()
    low = await add(store, new_job(priority=5, run_at=now - timedelta(seconds=10)))
    urgent_late = await add(store, new_job(priority=0))
    urgent_early = await add(store, new_job(priority=0, run_at=now - timedelta(seconds=5)))
    middle = await add(store, new_job(priority=2, run_at=now - timedelta(seconds=60)))
    urgent_same = await add(store, new_job(priority=0))
    future = await add(store, new_job(priority=0, run_at=now + timedelta(seconds=1)))

    claimed = await store.fetch_jobs(limit(10))

    assert ids(claimed) == [urgent_early.id, urgent_late.id, urgent_same.id, middle.id, low.id]
    assert (await stored(store, future)).status is QUEUED


async def test_a_job_that_waited_the_aging_interval_per_level_goes_first(
    store: JobStore, clock: ManualClock
) -> None:
    patient = await add(store, new_job(priority=3))
    clock.advance(3 * AGING - 1)
    earlier = await add(store, new_job(priority=0))
    clock.advance(2)
    later = await add(store, new_job(priority=0))

    assert ids(await store.fetch_jobs(limit(3))) == [earlier.id, patient.id, later.id]


async def test_a_low_priority_job_does_not_starve_behind_a_stream_of_urgent_ones(
    store: JobStore, clock: ManualClock
) -> None:
    starving = await add(store, new_job(priority=9))
    claimed_at = None
    # An urgent job every 10 seconds, one claim each time: more urgent work than workers.
    for tick in range(1, 2 * 9 * AGING // 10):
        clock.advance(10)
        await add(store, new_job(priority=0))
        (job,) = await store.fetch_jobs(limit(1))
        if job.id == starving.id:
            claimed_at = tick * 10
            break

    assert claimed_at is not None
    assert claimed_at <= 9 * AGING + 10


async def test_each_queue_gets_at_most_its_limit_and_default_covers_unnamed_queues(
    store: JobStore,
) -> None:
    emails = [await add(store, new_job(n, queue="emails")) for n in range(3)]
    default = [await add(store, new_job(n)) for n in range(2)]
    reports = [await add(store, new_job(n, queue="reports")) for n in range(2)]

    claimed = await store.fetch_jobs({"default": 3, "emails": 1})

    assert sorted(ids(claimed)) == sorted(
        [emails[0].id, default[0].id, default[1].id, reports[0].id]
    )
    # Only emails served, and it has room for two.
    assert ids(await store.fetch_jobs({"emails": 2})) == [emails[1].id, emails[2].id]
    assert await store.fetch_jobs({"emails": 5, "default": 0}) == []
    assert ids(await store.fetch_jobs({"reports": 1})) == [reports[1].id]


async def test_a_paused_queue_keeps_its_jobs_until_it_is_resumed(
    store: JobStore, clock: ManualClock
) -> None:
    woken: list[bool] = []
    store.subscribe(lambda: woken.append(True))
    held = await add(store, new_job(queue="emails"))
    free = await add(store, new_job())
    await store.pause_queue("emails")

    assert ids(await store.fetch_jobs({"default": 5, "emails": 5})) == [free.id]
    assert ids(await store.fetch_jobs(limit(5))) == []
    # A paused queue's due job is nothing to wait for.
    assert await store.next_run_at({"emails": 1}) is None
    later = await add(store, new_job(queue="emails", run_at=clock.now() + timedelta(seconds=9)))
    assert await store.next_run_at({"emails": 1}) is None

    woken.clear()
    await store.resume_queue("emails")

    assert woken
    assert ids(await store.fetch_jobs({"emails": 5})) == [held.id]
    assert await store.next_run_at({"emails": 1}) == later.run_at


async def test_next_run_at_looks_only_at_queues_with_room(
    store: JobStore, clock: ManualClock
) -> None:
    soon = clock.now() + timedelta(seconds=5)
    await add(store, new_job(queue="emails", run_at=soon))
    await add(store, new_job(run_at=soon + timedelta(seconds=5)))

    assert await store.next_run_at({"default": 1, "emails": 1}) == soon
    assert await store.next_run_at({"default": 1, "emails": 0}) == soon + timedelta(seconds=5)
    assert await store.next_run_at({"emails": 0}) is None
    assert await store.next_run_at({"reports": 3}) is None


async def test_list_queues_counts_each_queues_jobs_and_says_which_are_paused(
    store: JobStore,
) -> None:
    await add(store, new_job(queue="emails"))
    await add(store, new_job(queue="emails"))
    await add(store, new_job())
    await store.fetch_jobs({"emails": 1})
    await store.pause_queue("reports")

    queues = {queue.name: queue for queue in await store.list_queues()}

    assert sorted(queues) == ["default", "emails", "reports"]
    emails = queues["emails"]
    assert ({s: n for s, n in emails.counts.items() if n}, emails.paused) == (
        {QUEUED: 1, RUNNING: 1},
        False,
    )
    assert {s: n for s, n in queues["default"].counts.items() if n} == {QUEUED: 1}
    assert (sum(queues["reports"].counts.values()), queues["reports"].paused) == (0, True)


async def test_a_unique_key_held_by_a_queued_or_running_job_creates_nothing(
    store: JobStore,
) -> None:
    first = await add(store, new_job(unique_key="invoice-7"))

    again, created = await store.insert_job(new_job(1, unique_key="invoice-7"))
    assert (again.id, created) == (first.id, False)

    await store.fetch_jobs(limit(1))
    again, created = await store.insert_job(new_job(2, unique_key="invoice-7"))
    assert (again.id, again.status, created) == (first.id, RUNNING, False)
    assert await counts(store) == {"running": 1}


async def test_a_unique_key_is_free_again_once_its_job_has_finished(store: JobStore) -> None:
    first = await add(store, new_job(unique_key="invoice-7"))
    (running,) = await store.fetch_jobs(limit(1))
    await store.complete_job(running, None)

    second = await add(store, new_job(unique_key="invoice-7"))

    assert second.id != first.id
    assert await counts(store) == {"queued": 1, "done": 1}


async def test_insert_all_jobs_names_the_holder_of_a_repeated_key_in_order(
    store: JobStore,
) -> None:
    held = await add(store, new_job(unique_key="a"))

    enqueued = await store.insert_all_jobs(
        [
            new_job(0, unique_key="b"),
            new_job(1, unique_key="a"),
            new_job(2),
            new_job(3, unique_key="b"),
        ]
    )

    assert [created for _, created in enqueued] == [True, False, True, False]
    b, a, plain, b_again = (job for job, _ in enqueued)
    assert a.id == held.id
    assert b_again.id == b.id
    assert b.id < plain.id
    assert await counts(store) == {"queued": 3}


async def test_cancelling_a_queued_job_ends_it_at_once(store: JobStore, clock: ManualClock) -> None:
    job = await add(store, new_job(unique_key="k"))
    clock.advance(1)

    cancelled = await store.cancel_job(job.id)

    assert cancelled is not None
    assert (cancelled.status, cancelled.finished_at) == (CANCELLED, clock.now())
    assert await stored(store, job) == cancelled
    assert await store.fetch_jobs(limit(1)) == []
    assert await counts(store) == {"cancelled": 1}
    # Its unique key is free again.
    assert (await store.insert_job(new_job(unique_key="k"))).created


async def test_cancelling_a_running_job_asks_it_to_stop_and_tells_the_listeners(
    store: JobStore,
) -> None:
    asked: list[int] = []
    store.subscribe_cancellations(asked.append)
    job = await add(store, new_job())
    await store.fetch_jobs(limit(1))

    cancelling = await store.cancel_job(job.id)

    assert cancelling is not None
    assert (cancelling.status, cancelling.cancel_requested) == (RUNNING, True)
    assert await store.cancel_requested_among([job.id, job.id + 100]) == [job.id]
    assert await wait_for_value(lambda: asked, [job.id])
    # Asking twice is the same as asking once.
    assert (await store.cancel_job(job.id)) == await stored(store, job)


async def wait_for_value(read: Callable[[], Any], expected: Any, timeout: float = 5.0) -> bool:
    """Some stores tell listeners from another connection: give them a moment."""
    for _ in range(int(timeout / 0.01)):
        if read() == expected:
            return True
        await asyncio.sleep(0.01)
    return bool(read() == expected)


async def test_a_running_job_whose_cancel_was_asked_ends_cancelled_however_it_ends(
    store: JobStore, clock: ManualClock
) -> None:
    await insert(store, 3)
    returned, raised, released = await store.fetch_jobs(limit(3))
    for job in (returned, raised, released):
        await store.cancel_job(job.id)
    clock.advance(1)

    await store.complete_job(returned, {"partial": True})
    await store.error_job(raised, "CancelledError", clock.now())
    await store.release_jobs([released])

    for job in (returned, raised, released):
        found = await stored(store, job)
        assert (found.status, found.finished_at) == (CANCELLED, clock.now())
    assert (await stored(store, returned)).result == {"partial": True}
    assert (await stored(store, raised)).errors == ["CancelledError"]
    assert await counts(store) == {"cancelled": 3}
    assert await store.cancel_requested_among(ids([returned, raised, released])) == []


async def test_cancelling_a_finished_job_is_a_conflict_and_an_unknown_one_is_none(
    store: JobStore,
) -> None:
    await insert(store, 3)
    done, failed, cancelled = await store.fetch_jobs(limit(3))
    await store.complete_job(done, None)
    await store.error_job(failed, "boom", None)
    await store.cancel_job(cancelled.id)
    await store.release_jobs([cancelled])

    for job, status in ((done, "done"), (failed, "failed"), (cancelled, "cancelled")):
        try:
            await store.cancel_job(job.id)
        except JobConflict as conflict:
            assert str(conflict) == f"Job {job.id} is {status}"
        else:
            raise AssertionError(f"cancelling a {status} job was accepted")
    assert await store.cancel_job(10_000) is None
    assert await counts(store) == {"done": 1, "failed": 1, "cancelled": 1}


async def test_retrying_a_failed_job_queues_it_now_with_one_more_attempt(
    store: JobStore, clock: ManualClock
) -> None:
    woken: list[bool] = []
    store.subscribe(lambda: woken.append(True))
    job = await add(store, new_job(max_attempts=1))
    (running,) = await store.fetch_jobs(limit(1))
    await store.error_job(running, "boom", None)
    clock.advance(60)
    woken.clear()

    retried = await store.retry_job(job.id)

    assert retried is not None
    assert (retried.status, retried.run_at, retried.finished_at) == (QUEUED, clock.now(), None)
    assert (retried.attempt, retried.max_attempts, retried.errors) == (1, 2, ["boom"])
    assert await stored(store, job) == retried
    assert woken
    (again,) = await store.fetch_jobs(limit(1))
    assert (again.id, again.attempt) == (job.id, 2)
    await store.complete_job(again, "ok")
    assert await counts(store) == {"done": 1}


async def test_retrying_a_cancelled_job_with_attempts_left_keeps_max_attempts(
    store: JobStore,
) -> None:
    job = await add(store, new_job(max_attempts=3))
    await store.cancel_job(job.id)

    retried = await store.retry_job(job.id)

    assert retried is not None
    assert (retried.status, retried.max_attempts, retried.cancel_requested) == (QUEUED, 3, False)
    assert await counts(store) == {"queued": 1}


async def test_retrying_is_refused_unless_the_job_failed_or_was_cancelled(
    store: JobStore,
) -> None:
    await insert(store, 3)
    done, _running = await store.fetch_jobs(limit(2))
    await store.complete_job(done, None)
    statuses = {job.id: job.status for job in await store.list_jobs(ANY, 10, 0)}

    for job_id, status in statuses.items():
        try:
            await store.retry_job(job_id)
        except JobConflict as conflict:
            assert str(conflict) == f"Job {job_id} is {status}"
        else:
            raise AssertionError(f"retrying a {status} job was accepted")
    assert await store.retry_job(10_000) is None


async def test_retrying_is_refused_while_another_job_holds_its_unique_key(
    store: JobStore,
) -> None:
    first = await add(store, new_job(unique_key="k"))
    await store.cancel_job(first.id)
    second = await add(store, new_job(unique_key="k"))

    try:
        await store.retry_job(first.id)
    except JobConflict as conflict:
        assert str(conflict) == f"Job {first.id} has unique_key 'k', which job {second.id} holds"
    else:
        raise AssertionError("two queued jobs hold one unique key")
    assert (await stored(store, first)).status is CANCELLED


async def cancel_all(store: JobStore, where: JobFilter, inserted_by: datetime) -> list[int]:
    """Bulk-cancel in rounds of 2 until a round finds none; the ids changed, in order."""
    changed: list[int] = []
    while found := await store.cancel_jobs(where, inserted_by, 2):
        assert len(found) <= 2
        changed += ids(found)
    return changed


async def test_a_bulk_cancel_ends_the_queued_jobs_it_selects_and_asks_the_running_ones(
    store: JobStore, clock: ManualClock
) -> None:
    asked: list[int] = []
    store.subscribe_cancellations(asked.append)
    emails = [await add(store, new_job(n, queue="emails")) for n in range(4)]
    other = await add(store, new_job(9, queue="reports"))
    running = await store.fetch_jobs({"emails": 1})
    clock.advance(1)

    changed = await cancel_all(store, JobFilter(queue="emails"), clock.now())

    assert sorted(changed) == ids(emails)
    for job in emails[1:]:
        found = await stored(store, job)
        assert (found.status, found.finished_at) == (CANCELLED, clock.now())
    stopping = await stored(store, running[0])
    assert (stopping.status, stopping.cancel_requested) == (RUNNING, True)
    assert await wait_for_value(lambda: asked, ids(running))
    assert (await stored(store, other)).status is QUEUED
    assert await counts(store) == {"queued": 1, "running": 1, "cancelled": 3}
    # Nothing is left for it to change: the running job was asked once.
    assert await store.cancel_jobs(JobFilter(queue="emails"), clock.now(), 10) == []


async def test_a_bulk_cancel_leaves_jobs_inserted_after_its_moment_and_other_statuses(
    store: JobStore, clock: ManualClock
) -> None:
    first = await add(store, new_job(0, task="send"))
    asked_at = clock.now()
    clock.advance(1)
    later = await add(store, new_job(1, task="send"))
    other_task = await add(store, new_job(2, task="render"))

    assert await cancel_all(store, JobFilter(task="send"), asked_at) == [first.id]
    assert await cancel_all(store, JobFilter(status=DONE), clock.now()) == []
    assert (await stored(store, later)).status is QUEUED
    assert (await stored(store, other_task)).status is QUEUED


async def fail(store: JobStore, count: int, **fields: Any) -> list[Job]:
    """Jobs that ran once and failed for good, one after the other."""
    failed = []
    for n in range(count):
        failed.append(await add(store, new_job(n, max_attempts=1, **fields)))
        (running,) = await store.fetch_jobs(limit(1))
        await store.error_job(running, "boom", None)
    return failed


async def retry_all(store: JobStore, where: JobFilter, finished_by: datetime) -> list[int]:
    """Bulk-retry in rounds of 2 until a round finds none; the ids changed, sorted."""
    changed: list[int] = []
    while found := await store.retry_jobs(where, finished_by, 2):
        assert len(found) <= 2
        changed += ids(found)
    return sorted(changed)


async def test_a_bulk_retry_queues_the_failed_and_cancelled_jobs_it_selects_once(
    store: JobStore, clock: ManualClock
) -> None:
    woken: list[bool] = []
    store.subscribe(lambda: woken.append(True))
    failed = await fail(store, 3)
    cancelled = await add(store, new_job(7))
    await store.cancel_job(cancelled.id)
    done = await add(store, new_job(8))
    await store.complete_job((await store.fetch_jobs(limit(1)))[0], None)
    clock.advance(60)
    finished_by = clock.now()
    woken.clear()

    # A job that fails again while the retry goes on is not picked up again.
    (first,) = await store.retry_jobs(ANY, finished_by, 1)
    (rerun,) = await store.fetch_jobs(limit(1))
    assert rerun.id == first.id
    clock.advance(1)
    await store.error_job(rerun, "again", None)
    rest = await retry_all(store, ANY, finished_by)

    assert sorted([first.id, *rest]) == ids([*failed, cancelled])
    for job in [*failed, cancelled]:
        if job.id == first.id:
            continue
        found = await stored(store, job)
        assert (found.status, found.run_at, found.finished_at) == (QUEUED, clock.now(), None)
    again = await stored(store, failed[0] if first.id == failed[0].id else first)
    assert (again.status, again.errors) == (FAILED, ["boom", "again"])
    assert (await stored(store, done)).status is DONE
    assert woken
    assert await counts(store) == {"queued": 3, "failed": 1, "done": 1}


async def test_a_bulk_retry_leaves_out_a_job_whose_unique_key_is_held(
    store: JobStore, clock: ManualClock
) -> None:
    first, second = await fail(store, 2, unique_key="k")
    held = (await fail(store, 1, unique_key="h"))[0]
    holder = await add(store, new_job(5, unique_key="h"))

    retried = await retry_all(store, JobFilter(status=FAILED), clock.now())

    # Of the two jobs with key k, one is queued again; the other would be a second holder.
    assert len(retried) == 1 and retried[0] in (first.id, second.id)
    assert (await stored(store, held)).status is FAILED
    assert (await stored(store, holder)).status is QUEUED
    assert await counts(store) == {"queued": 2, "failed": 2}


async def test_count_jobs_ahead_counts_the_due_jobs_of_its_queue_claimed_before_it(
    store: JobStore, clock: ManualClock
) -> None:
    await add(store, new_job(0, priority=9))
    clock.advance(1)
    urgent = [await add(store, new_job(n, priority=0)) for n in range(1, 4)]
    job = await add(store, new_job(4, priority=2))
    await add(store, new_job(5, priority=0, run_at=clock.now() + timedelta(hours=1)))
    await add(store, new_job(6, priority=0, queue="emails"))
    behind = await add(store, new_job(7, priority=2))

    assert await store.count_jobs_ahead(job, 100) == len(urgent)
    assert await store.count_jobs_ahead(job, 2) == 2
    assert await store.count_jobs_ahead(urgent[0], 100) == 0
    assert await store.count_jobs_ahead(behind, 100) == len(urgent) + 1
    await store.fetch_jobs(limit(2))
    assert await store.count_jobs_ahead(job, 100) == len(urgent) - 2


async def test_recent_outcomes_counts_the_attempts_that_ended_per_minute(
    store: JobStore, clock: ManualClock
) -> None:
    await insert(store, 5)
    start = clock.now()
    completed, retried, failed, *later = await store.fetch_jobs(limit(5))
    await store.complete_job(completed, None)
    await store.error_job(retried, "boom", clock.now() + timedelta(seconds=5))
    await store.error_job(failed, "boom", None)
    clock.advance(60)
    for job in later:
        await store.complete_job(job, None)
    minutes = [minute_of(start), minute_of(clock.now())]

    expected = [MinuteOutcomes(minutes[0], 1, 2), MinuteOutcomes(minutes[1], 2, 0)]
    assert await wait_for_value_async(lambda: store.recent_outcomes(start), expected)
    assert await store.recent_outcomes(clock.now()) == expected[1:]
    clock.advance(OUTCOMES_KEPT.total_seconds() + 60)
    assert await store.recent_outcomes(start) == []


async def wait_for_value_async(
    read: Callable[[], Awaitable[Any]], expected: Any, timeout: float = 5.0
) -> bool:
    """Some stores write what they counted every second or so: give them time."""
    for _ in range(int(timeout / 0.05)):
        if await read() == expected:
            return True
        await asyncio.sleep(0.05)
    return bool(await read() == expected)


async def test_list_jobs_filters_by_queue_and_task_and_with_status(store: JobStore) -> None:
    a = await add(store, new_job(0, queue="emails", task="send"))
    b = await add(store, new_job(1, queue="emails", task="render"))
    c = await add(store, new_job(2, task="send"))
    d = await add(store, new_job(3, queue="emails", task="send"))
    await store.fetch_jobs({"emails": 1})  # a runs

    async def listed(**where: Any) -> list[int]:
        return ids(await store.list_jobs(JobFilter(**where), 10, 0))

    assert await listed(queue="emails") == [d.id, b.id, a.id]
    assert await listed(task="send") == [d.id, c.id, a.id]
    assert await listed(queue="emails", task="send") == [d.id, a.id]
    assert await listed(status=QUEUED, task="send") == [d.id, c.id]
    assert await listed(status=RUNNING, queue="emails", task="send") == [a.id]
    assert await listed(status=QUEUED, queue="emails") == [d.id, b.id]
    assert await listed(queue="nowhere") == []
    assert ids(await store.list_jobs(JobFilter(queue="emails"), 1, 1)) == [b.id]
{%- if cookiecutter.job_store == "sqlite" %}


# --- Durability: the file outlives the process. A second store opened on the same file
# plays the process that starts after the first one died with jobs still running.


async def test_reopened_store_keeps_every_job_and_its_state(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    jobs = await insert(store, 3)
    (job,) = await store.fetch_jobs(limit(1))
    await store.complete_job(job, {"kept": True})

    reopened = await open_store(clock)

    assert [found.id for found in await reopened.list_jobs(ANY, 10, 0)] == [
        job.id for job in reversed(jobs)
    ]
    assert (await stored(reopened, job)).result == {"kept": True}
    assert await counts(reopened) == {"queued": 2, "done": 1}


async def test_rescue_requeues_a_job_left_running_and_counts_the_lost_attempt(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    (job,) = await insert(store)
    await store.fetch_jobs(limit(1))

    restarted = await open_store(clock)
    rescued = await restarted.rescue_orphaned_jobs()

    assert rescued == 1
    found = await stored(restarted, job)
    assert (found.status, found.attempt) == (QUEUED, 1)
    assert found.errors == [LOST_WORKER_STOPPED]
    assert found.finished_at is None
    (again,) = await restarted.fetch_jobs(limit(1))
    assert (again.id, again.attempt) == (job.id, 2)


async def test_rescue_fails_a_job_left_running_on_its_last_attempt(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    job = await add(store, new_job(max_attempts=1))
    await store.fetch_jobs(limit(1))
    clock.advance(5)

    restarted = await open_store(clock)
    rescued = await restarted.rescue_orphaned_jobs()

    assert rescued == 1
    found = await stored(restarted, job)
    assert (found.status, found.attempt) == (FAILED, 1)
    assert found.errors == [LOST_WORKER_STOPPED]
    assert found.finished_at == clock.now()
    assert await counts(restarted) == {"failed": 1}
    assert await restarted.fetch_jobs(limit(1)) == []
{%- elif cookiecutter.job_store == "postgres" %}


# --- Several instances: a second store on the same database plays another instance.
# Leases last JOB_LEASE_SECONDS (30 by default) of the database's clock; `expire_leases`
# plays that time passing without a renewal.

LEASE = 30


async def expire_leases(settings: Settings) -> None:
    """Every running job's lease runs out now, as if its instance had stopped renewing it."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(
            "UPDATE jobs SET lease_expires_at = now() - interval '1 second'"
            " WHERE status = 'running'"
        )
    finally:
        await conn.close()


async def test_another_instance_sees_every_job_and_its_state(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    jobs = await insert(store, 3)
    (job,) = await store.fetch_jobs(limit(1))
    await store.complete_job(job, {"kept": True})

    other = await open_store(clock)

    assert [found.id for found in await other.list_jobs(ANY, 10, 0)] == [
        job.id for job in reversed(jobs)
    ]
    assert (await stored(other, job)).result == {"kept": True}
    assert await counts(other) == {"queued": 2, "done": 1}


async def test_a_running_job_is_not_rescued_while_its_lease_holds(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    (job,) = await insert(store)
    await store.fetch_jobs(limit(1))
    # An instance whose clock runs a day ahead: leases are by the database's clock.
    other = await open_store(ManualClock(clock.now() + timedelta(days=1)))

    assert await other.rescue_orphaned_jobs() == 0
    assert (await stored(other, job)).status is RUNNING


async def test_an_expired_lease_requeues_the_job_with_the_lost_attempt_counted(
    store: JobStore, open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    (job,) = await insert(store)
    await store.fetch_jobs(limit(1))
    other = await open_store(clock)
    await expire_leases(settings)

    assert await other.rescue_orphaned_jobs() == 1

    found = await stored(other, job)
    assert (found.status, found.attempt) == (QUEUED, 1)
    assert found.errors == [LOST_LEASE_EXPIRED]
    assert found.finished_at is None
    (again,) = await other.fetch_jobs(limit(1))
    assert (again.id, again.attempt) == (job.id, 2)


async def test_an_expired_lease_on_the_last_attempt_fails_the_job(
    store: JobStore, open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    job = await add(store, new_job(max_attempts=1))
    await store.fetch_jobs(limit(1))
    other = await open_store(clock)
    await expire_leases(settings)

    assert await other.rescue_orphaned_jobs() == 1

    found = await stored(other, job)
    assert (found.status, found.errors) == (FAILED, [LOST_LEASE_EXPIRED])
    assert found.finished_at == clock.now()
    assert await other.fetch_jobs(limit(1)) == []
    assert await counts(store) == await counts(other) == {"failed": 1}


async def test_a_rescue_skips_a_job_its_instance_is_finishing_and_waits_for_nothing(
    store: JobStore, open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    (job,) = await insert(store)
    await store.fetch_jobs(limit(1))
    other = await open_store(clock)
    await expire_leases(settings)
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
    store: JobStore, open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    (job,) = await insert(store)
    (lost,) = await store.fetch_jobs(limit(1))
    other = await open_store(clock)
    await expire_leases(settings)
    await other.rescue_orphaned_jobs()
    (taken_over,) = await other.fetch_jobs(limit(1))

    await store.complete_job(lost, {"from": "the first instance"})
    await store.error_job(lost, "too late", None)

    found = await stored(other, job)
    assert (found.status, found.attempt, found.result) == (RUNNING, 2, None)
    assert await counts(store) == {"running": 1}
    await other.complete_job(taken_over, {"from": "the second instance"})
    assert (await stored(other, job)).result == {"from": "the second instance"}
    assert await counts(store) == {"done": 1}


async def test_the_jobs_of_an_instance_whose_lock_is_free_are_rescued_at_once(
    store: JobStore, open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    (job,) = await insert(store)
    await store.fetch_jobs(limit(1))
    # As a process that died with the job running: registered, its lock gone with it.
    await run_sql_on(
        settings,
        "INSERT INTO instances (id, started_at) VALUES ('gone:1:dead', now())",
        f"UPDATE jobs SET locked_by = 'gone:1:dead' WHERE id = {job.id}",
    )
    other = await open_store(clock)

    assert await other.rescue_orphaned_jobs() == 1

    found = await stored(other, job)
    assert (found.status, found.attempt, found.errors) == (QUEUED, 1, [LOST_INSTANCE_DIED])
    # Its row goes once it has no job left running.
    await other.rescue_orphaned_jobs()
    assert await run_sql_on(settings, "SELECT count(*) FROM instances") == [2]


async def test_the_jobs_of_an_instance_holding_its_lock_stay_its_own(
    store: JobStore, open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    (job,) = await insert(store)
    await store.fetch_jobs(limit(1))
    alive = await asyncpg.connect(settings.database_url)
    try:
        await alive.execute(
            "SELECT pg_advisory_lock(hashtext(current_schema() || '.instances'),"
            " hashtext('alive:1:here'))"
        )
        await run_sql_on(
            settings,
            "INSERT INTO instances (id, started_at) VALUES ('alive:1:here', now())",
            f"UPDATE jobs SET locked_by = 'alive:1:here' WHERE id = {job.id}",
        )
        other = await open_store(clock)

        assert await other.rescue_orphaned_jobs() == 0
        assert (await stored(other, job)).status is RUNNING
    finally:
        # The connection ends as the process would: its lock with it.
        await alive.close()

    assert await other.rescue_orphaned_jobs() == 1


async def test_an_instance_is_registered_while_its_store_is_open(
    open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    first = await open_store(clock)
    await open_store(clock)
    assert await run_sql_on(settings, "SELECT count(*) FROM instances") == [2]

    await first.close()

    assert await run_sql_on(settings, "SELECT count(*) FROM instances") == [1]


async def test_a_job_lost_three_times_in_a_row_is_quarantined_as_failed(
    store: JobStore, open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    job = await add(store, new_job(max_attempts=10))
    other = await open_store(clock)
    for _ in range(3):
        await store.fetch_jobs(limit(1))
        await expire_leases(settings)
        assert await other.rescue_orphaned_jobs() == 1

    found = await stored(other, job)
    assert (found.status, found.attempt) == (FAILED, 3)
    assert found.errors == [LOST_LEASE_EXPIRED] * 2 + ["lost: crashed its worker 3 times"]
    assert await counts(other) == {"failed": 1}


async def test_an_attempt_that_ends_starts_the_count_of_lost_ones_again(
    store: JobStore, open_store: StoreOpener, clock: ManualClock, settings: Settings
) -> None:
    job = await add(store, new_job(max_attempts=10))
    other = await open_store(clock)
    for lose_first in (True, True, False, True, True):
        (claimed,) = await store.fetch_jobs(limit(1))
        if lose_first:
            await expire_leases(settings)
            await other.rescue_orphaned_jobs()
        else:
            await store.error_job(claimed, "failed once", clock.now())

    found = await stored(other, job)
    assert (found.status, found.attempt) == (QUEUED, 5)


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
        done, failed = await store.fetch_jobs(limit(2))
        await store.complete_job(done, None)
        await store.error_job(failed, "give up", None)
    count_rows = "SELECT count(*) FROM job_counts"

    appended, _, folded = await run_sql_on(settings, count_rows, FOLD_COUNTS, count_rows)

    assert (appended, folded) == (10, 2)
    assert await counts(store) == {"done": 3, "failed": 3}


async def test_ids_go_past_the_32_bit_range(store: JobStore, settings: Settings) -> None:
    await run_sql_on(settings, f"SELECT setval(pg_get_serial_sequence('jobs', 'id'), {2**31 - 1})")

    (job,) = await insert(store)

    assert job.id == 2**31
    assert (await stored(store, job)).id == 2**31


async def test_two_instances_claiming_together_never_get_the_same_job(
    store: JobStore, open_store: StoreOpener, clock: ManualClock
) -> None:
    await insert(store, 200)
    other = await open_store(clock)

    claims = await asyncio.gather(
        *(s.fetch_jobs(limit(7)) for _ in range(15) for s in (store, other))
    )

    claimed = [job.id for batch in claims for job in batch]
    assert len(claimed) == len(set(claimed)) == 200
{%- endif %}
