"""Submitting, scheduling, listing and inspecting jobs."""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request

from ..events import EventBus, JobEnqueued
from ..jobs.model import Job, JobStatus, NewJob, ScheduledJob
from ..jobs.registry import TaskRegistry
from ..jobs.store import JobStore
from .deps import StoreDep
from .json_body import OrjsonRoute
from .schemas import JobAccepted, JobScheduled, error_responses

MAX_PER_PAGE = 200
# Offsets beyond what a database integer holds cannot match any job.
MAX_OFFSET = 2**62
# Ids are positive 64-bit integers; any other integer names no job.
ID_RANGE = range(1, 2**63)

router = APIRouter(
    prefix="/jobs",
    tags=["jobs"],
    route_class=OrjsonRoute,
    # Accept a JSON body sent without a Content-Type, as plain HTTP clients often do; one
    # sent as a form or as text is still refused.
    strict_content_type=False,
    responses=error_responses(400, 503),
)


class Intake:
    """Stores submitted jobs and tells the subscribers of JobEnqueued."""

    def __init__(self, store: JobStore, events: EventBus, registry: TaskRegistry) -> None:
        self._store = store
        self._events = events
        self._registry = registry

    async def enqueue(self, new_job: NewJob) -> Job:
        job = await self._store.insert_job(new_job)
        self._events.emit(JobEnqueued(job, self._registry.resolve(job).name))
        return job


async def get_intake(request: Request) -> Intake:
    # One dependency rather than one for each of the three: resolving dependencies is a
    # good part of what FastAPI spends on a request.
    state = request.app.state
    return Intake(state.store, state.events, state.registry)


IntakeDep = Annotated[Intake, Depends(get_intake)]


@router.post("", status_code=202, responses=error_responses(413))
async def submit_job(new_job: NewJob, intake: IntakeDep) -> JobAccepted:
    """Submit a job; it runs as soon as a worker is free."""
    job = await intake.enqueue(new_job)
    return JobAccepted(job_id=job.id)


@router.post("/schedule", status_code=202, responses=error_responses(413))
async def schedule_job(new_job: ScheduledJob, intake: IntakeDep) -> JobScheduled:
    """Submit a job that becomes due at `run_at` (UTC unless it gives an offset)."""
    job = await intake.enqueue(new_job)
    return JobScheduled(job_id=job.id, run_at=job.run_at)


@router.get("")
async def list_jobs(
    store: StoreDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    page: Annotated[int, Query(ge=1, description="Page number, from 1.")] = 1,
    per_page: Annotated[
        int, Query(ge=1, description=f"Jobs per page; above {MAX_PER_PAGE} means {MAX_PER_PAGE}.")
    ] = 50,
) -> list[Job]:
    """Jobs newest first (by insertion time, then id)."""
    limit = min(per_page, MAX_PER_PAGE)
    return await store.list_jobs(status, limit, min((page - 1) * limit, MAX_OFFSET))


# Declared before `/{job_id}`: otherwise `GET /jobs/schedule` would be the job "schedule"
# (a 400), where OpenAPI, which matches literal paths first, promises a 405.
@router.get("/schedule", include_in_schema=False)
async def schedule_takes_only_post() -> None:
    raise HTTPException(405)


@router.get("/{job_id}", responses=error_responses(404))
async def get_job(
    job_id: Annotated[int, Path(description="The job's id.")], store: StoreDep
) -> Job:
    """One job, with its result and every attempt's error."""
    job = await store.get_job(job_id) if job_id in ID_RANGE else None
    if job is None:
        raise HTTPException(404, "Job not found")
    return job
