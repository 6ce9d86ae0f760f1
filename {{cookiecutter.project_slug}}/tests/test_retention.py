"""Retention: finished jobs past RETAIN_*_SECONDS are deleted, and nothing else is."""

from datetime import timedelta
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.jobs import retention
from {{ cookiecutter.package_name }}.jobs.model import DEFAULT_QUEUE, Job, JobStatus, NewJob
from {{ cookiecutter.package_name }}.jobs.store import JobFilter, JobStore

from .conftest import ManualClock, SettingsFactory, serve, wait_until

QUEUED, RUNNING, DONE, FAILED, CANCELLED = JobStatus
EVERY_QUEUE = {DEFAULT_QUEUE: 100}
HOUR = 3600.0


async def add(store: JobStore, n: int = 0, **fields: Any) -> Job:
    enqueued = await store.insert_job(NewJob(payload={"n": n}, **fields))
    assert enqueued.created
    return enqueued.job


async def finish(store: JobStore, status: JobStatus, n: int = 0, **fields: Any) -> Job:
    """A new job taken to `status` (done, failed or cancelled) now."""
    job = await add(store, n, **fields)
    if status is CANCELLED:
        await store.cancel_job(job.id)
    else:
        (claimed,) = await store.fetch_jobs(EVERY_QUEUE)
        if status is DONE:
            await store.complete_job(claimed, {"n": n})
        else:
            await store.error_job(claimed, "gave up", None)
    finished = await store.get_job(job.id)
    assert finished is not None and finished.status is status
    return finished


async def counts(store: JobStore) -> dict[str, int]:
    return {str(status): n for status, n in (await store.count_jobs()).items() if n}


async def test_only_jobs_of_the_status_that_finished_before_the_cutoff_are_deleted(
    store: JobStore, clock: ManualClock
) -> None:
    old_done = [await finish(store, DONE, n) for n in range(2)]
    old_failed = await finish(store, FAILED)
    old_cancelled = await finish(store, CANCELLED)
    clock.advance(HOUR)
    cutoff = clock.now()
    clock.advance(1)
    recent_done = await finish(store, DONE)
    running = await add(store)
    await store.fetch_jobs(EVERY_QUEUE)
    queued = await add(store, run_at=clock.now() - timedelta(days=1))

    assert await store.delete_finished_jobs(DONE, cutoff, 100) == 2

    for job in old_done:
        assert await store.get_job(job.id) is None
    kept = [old_failed, old_cancelled, recent_done, running, queued]
    assert [found.id for job in kept if (found := await store.get_job(job.id))] == [
        job.id for job in kept
    ]
    assert await counts(store) == {str(status): 1 for status in JobStatus}
    listed = await store.list_jobs(JobFilter(status=DONE), 10, 0)
    assert [job.id for job in listed] == [recent_done.id]
    (default,) = await store.list_queues()
    assert default.counts[DONE] == 1
    assert await store.delete_finished_jobs(DONE, cutoff, 100) == 0


async def test_at_most_limit_jobs_go_at_a_time_oldest_first(
    store: JobStore, clock: ManualClock
) -> None:
    jobs = []
    for n in range(5):
        jobs.append(await finish(store, FAILED, n))
        clock.advance(1)

    assert await store.delete_finished_jobs(FAILED, clock.now(), 2) == 2

    remaining = await store.list_jobs(JobFilter(status=FAILED), 10, 0)
    assert sorted(job.id for job in remaining) == [job.id for job in jobs[2:]]
    assert await counts(store) == {"failed": 3}


async def test_a_deleted_jobs_id_never_names_another_job(
    store: JobStore, clock: ManualClock
) -> None:
    old = [await finish(store, DONE, n) for n in range(3)]
    clock.advance(HOUR)
    await store.delete_finished_jobs(DONE, clock.now(), 100)

    new = await add(store, 99)

    assert new.id > max(job.id for job in old)
    for job in old:
        found = await store.get_job(job.id)
        assert found is None or found.payload == job.payload


async def test_a_queue_whose_jobs_were_all_deleted_is_no_longer_listed(
    store: JobStore, clock: ManualClock
) -> None:
    await finish(store, DONE, queue="emails")
    # The newest job, in another queue: a store may keep the largest id's job.
    await finish(store, DONE)
    await store.pause_queue("reports")
    clock.advance(HOUR)

    await store.delete_finished_jobs(DONE, clock.now(), 100)

    assert "emails" not in {queue.name for queue in await store.list_queues()}
    assert "reports" in {queue.name for queue in await store.list_queues()}


async def test_expired_jobs_are_deleted_in_batches_by_each_status_retention(
    store: JobStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH_SIZE", 2)
    done = [await finish(store, DONE, n) for n in range(5)]
    failed = [await finish(store, FAILED, n) for n in range(3)]
    cancelled = await finish(store, CANCELLED)
    clock.advance(2 * HOUR)
    keep_recent = await finish(store, DONE, 5)
    keep = {DONE: timedelta(hours=1), FAILED: timedelta(days=1)}

    deleted = await retention.delete_expired_jobs(store, keep, clock)

    assert deleted == 5
    assert [job.id for job in done if await store.get_job(job.id)] == []
    assert [job.id for job in failed if await store.get_job(job.id)] == [job.id for job in failed]
    assert await store.get_job(cancelled.id) is not None
    assert await store.get_job(keep_recent.id) is not None
    assert await counts(store) == {"done": 1, "failed": 3, "cancelled": 1}


async def test_the_running_service_deletes_jobs_past_their_retention(
    make_settings: SettingsFactory, clock: ManualClock
) -> None:
    settings = make_settings(retain_done_seconds=HOUR, retention_interval=0.02)
    async with serve(create_app(settings, clock=clock)) as client:
        job_ids = []
        for _ in range(2):
            response = await client.post("/jobs", json={"payload": {"task": "sleep", "seconds": 0}})
            job_ids.append(response.json()["job_id"])

        async def all_done() -> bool:
            done: int = (await client.get("/stats")).json()["done"]
            return done == 2

        await wait_until(all_done, message="both jobs done")
        clock.advance(HOUR + 1)

        async def first_deleted() -> bool:
            return (await client.get(f"/jobs/{job_ids[0]}")).status_code == 404

        await wait_until(first_deleted, message="the first job deleted")
        # A store may keep the newest job (its id must never be given again), none other.
        still_there = (await client.get(f"/jobs/{job_ids[1]}")).status_code == 200
        assert (await client.get("/stats")).json()["done"] == int(still_there)
