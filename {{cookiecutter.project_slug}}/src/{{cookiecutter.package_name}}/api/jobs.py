"""Submitting, scheduling, listing, inspecting, cancelling and retrying jobs."""

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse

from ..events import EventBus, JobCancelled, JobEnqueued
from ..jobs.model import NO_NUL, QUEUE_NAME_PATTERN, Job, JobStatus, NewJob, ScheduledJob
from ..jobs.registry import TaskRegistry
from ..jobs.store import Enqueued, JobFilter, JobStore
from .deps import StoreDep
from .json_body import OrjsonRoute
from .schemas import (
    BulkJobs,
    JobAccepted,
    JobExists,
    JobsAccepted,
    JobsCancelled,
    JobScheduled,
    JobSelection,
    JobsRetried,
    error_responses,
)

MAX_PER_PAGE = 200
# Offsets beyond what a database integer holds cannot match any job.
MAX_OFFSET = 2**62
# Ids are positive 64-bit integers; any other integer names no job.
ID_RANGE = range(1, 2**63)
# Jobs a bulk action changes per store call: each call is a short transaction of its own, so
# other writes go on between them however many jobs it selects.
BULK_ROUND = 1000

router = APIRouter(
    prefix="/jobs",
    tags=["jobs"],
    route_class=OrjsonRoute,
    # Accept a JSON body sent without a Content-Type, as plain HTTP clients often do; one
    # sent as a form or as text is still refused.
    strict_content_type=False,
    responses=error_responses(400, 503),
)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="The job's `unique_key` when the body gives none (a body's key wins:"
        " it names what is unique about the job, where clients may set this header per call).",
    ),
]
JOB_EXISTS: dict[int | str, dict[str, object]] = {
    200: {"model": JobExists, "description": "A job with this unique_key exists."}
}


class Intake:
    """Stores submitted jobs and tells the subscribers of JobEnqueued."""

    def __init__(self, store: JobStore, events: EventBus, registry: TaskRegistry) -> None:
        self._store = store
        self._events = events
        self._registry = registry

    async def enqueue(self, new_job: NewJob, idempotency_key: str | None) -> Enqueued:
        (enqueued,) = await self.enqueue_all([with_idempotency_key(new_job, idempotency_key)])
        return enqueued

    async def enqueue_all(self, new_jobs: Sequence[NewJob]) -> list[Enqueued]:
        enqueued = await self._store.insert_all_jobs(new_jobs)
        if self._events.wants(JobEnqueued):
            for job, created in enqueued:
                if created:
                    self._events.emit(JobEnqueued(job, self._registry.resolve(job).name))
        return enqueued


def with_idempotency_key(new_job: NewJob, key: str | None) -> NewJob:
    """The job with the header's key as its unique_key, unless the body gives one."""
    if key is None or new_job.unique_key is not None:
        return new_job
    return new_job.model_copy(update={"unique_key": key})


async def get_intake(request: Request) -> Intake:
    # One dependency rather than one for each of the three: resolving dependencies is a
    # good part of what FastAPI spends on a request.
    state = request.app.state
    return Intake(state.store, state.events, state.registry)


IntakeDep = Annotated[Intake, Depends(get_intake)]


@router.post(
    "",
    status_code=202,
    response_model=JobAccepted,
    responses={**JOB_EXISTS, **error_responses(413)},
)
async def submit_job(
    new_job: NewJob, intake: IntakeDep, idempotency_key: IdempotencyKey = None
) -> JobAccepted | JSONResponse:
    """Submit a job; it runs as soon as a worker of its queue is free."""
    job, created = await intake.enqueue(new_job, idempotency_key)
    if not created:
        return job_exists(job.id)
    return JobAccepted(job_id=job.id)


@router.post(
    "/schedule",
    status_code=202,
    response_model=JobScheduled,
    responses={**JOB_EXISTS, **error_responses(413)},
)
async def schedule_job(
    new_job: ScheduledJob, intake: IntakeDep, idempotency_key: IdempotencyKey = None
) -> JobScheduled | JSONResponse:
    """Submit a job that becomes due at `run_at` (UTC unless it gives an offset)."""
    job, created = await intake.enqueue(new_job, idempotency_key)
    if not created:
        return job_exists(job.id)
    return JobScheduled(job_id=job.id, run_at=job.run_at)


def job_exists(job_id: int) -> JSONResponse:
    # Answered directly rather than through a `Response` parameter, which every request
    # would pay for to serve the rare duplicate.
    return JSONResponse(JobExists(job_id=job_id).model_dump(), status_code=200)


@router.post("/bulk", status_code=202, responses=error_responses(413))
async def submit_jobs(bulk: BulkJobs, intake: IntakeDep) -> JobsAccepted:
    """Submit up to 1,000 jobs in one transaction: all are stored, or none is.

    A job whose unique_key a queued or running job holds (or an earlier job of the same
    request) is not created; its place in `job_ids` holds that job's id.
    """
    enqueued = await intake.enqueue_all(bulk.jobs)
    return JobsAccepted(job_ids=[job.id for job, _ in enqueued])


@router.get("")
async def list_jobs(
    store: StoreDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    queue: Annotated[
        str | None, Query(pattern=QUEUE_NAME_PATTERN, description="Only jobs in this queue.")
    ] = None,
    task: Annotated[
        str | None,
        Query(min_length=1, max_length=200, pattern=NO_NUL, description="Only jobs of this task."),
    ] = None,
    page: Annotated[int, Query(ge=1, description="Page number, from 1.")] = 1,
    per_page: Annotated[
        int, Query(ge=1, description=f"Jobs per page; above {MAX_PER_PAGE} means {MAX_PER_PAGE}.")
    ] = 50,
) -> list[Job]:
    """Jobs newest first (by insertion time, then id), optionally filtered."""
    limit = min(per_page, MAX_PER_PAGE)
    where = JobFilter(status=status, queue=queue, task=task)
    return await store.list_jobs(where, limit, min((page - 1) * limit, MAX_OFFSET))


@router.post("/cancel", responses=error_responses(400))
async def cancel_jobs(selection: JobSelection, store: StoreDep, request: Request) -> JobsCancelled:
    """Cancel every queued or running job the selection matches that exists now, as
    `POST /jobs/{id}/cancel` does each; an empty selection matches every job."""
    return await cancel_selected(selection.where(), store, request)


async def cancel_selected(where: JobFilter, store: JobStore, request: Request) -> JobsCancelled:
    state = request.app.state
    asked_at = state.clock.now()
    cancelled = stopping = 0
    while changed := await store.cancel_jobs(where, asked_at, BULK_ROUND):
        for job in changed:
            if job.status is JobStatus.CANCELLED:
                cancelled += 1
                state.events.emit(JobCancelled(job, state.registry.resolve(job).name, None))
            else:
                stopping += 1
    return JobsCancelled(cancelled=cancelled, stopping=stopping)


@router.post("/retry", responses=error_responses(400))
async def retry_jobs(selection: JobSelection, store: StoreDep, request: Request) -> JobsRetried:
    """Retry every failed or cancelled job the selection matches that has ended by now, as
    `POST /jobs/{id}/retry` does each; an empty selection matches every job."""
    return await retry_selected(selection.where(), store, request)


async def retry_selected(where: JobFilter, store: JobStore, request: Request) -> JobsRetried:
    finished_by = request.app.state.clock.now()
    retried = 0
    while changed := await store.retry_jobs(where, finished_by, BULK_ROUND):
        retried += len(changed)
    return JobsRetried(retried=retried)


# Declared before `/{job_id}`: otherwise `GET /jobs/schedule` would be the job "schedule"
# (a 400), where OpenAPI, which matches literal paths first, promises a 405.
@router.get("/schedule", include_in_schema=False)
@router.get("/bulk", include_in_schema=False)
@router.get("/cancel", include_in_schema=False)
@router.get("/retry", include_in_schema=False)
async def only_post_here() -> None:
    raise HTTPException(405)


JobId = Annotated[int, Path(description="The job's id.")]


@router.get("/{job_id}", responses=error_responses(404))
async def get_job(job_id: JobId, store: StoreDep) -> Job:
    """One job, with its result and every attempt's error."""
    job = await store.get_job(job_id) if job_id in ID_RANGE else None
    if job is None:
        raise HTTPException(404, "Job not found")
    return job


@router.post("/{job_id}/cancel", responses=error_responses(404, 409))
async def cancel_job(job_id: JobId, store: StoreDep, request: Request) -> Job:
    """Cancel a job: a queued one ends `cancelled` at once; a running one is asked to stop
    (an async handler is cancelled, a sync one sees `job.cancel_requested`) and ends
    `cancelled` when its handler returns or raises."""
    job = await store.cancel_job(job_id) if job_id in ID_RANGE else None
    if job is None:
        raise HTTPException(404, "Job not found")
    if job.status is JobStatus.CANCELLED:
        state = request.app.state
        state.events.emit(JobCancelled(job, state.registry.resolve(job).name, None))
    return job


@router.post("/{job_id}/retry", responses=error_responses(404, 409))
async def retry_job(job_id: JobId, store: StoreDep) -> Job:
    """Queue a failed or cancelled job again, due now, its errors kept; a job that had spent
    its attempts gets one more."""
    job = await store.retry_job(job_id) if job_id in ID_RANGE else None
    if job is None:
        raise HTTPException(404, "Job not found")
    return job
