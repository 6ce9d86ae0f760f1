"""Submitting, scheduling, listing and inspecting jobs."""

from fastapi import APIRouter, Request

from ..events import JobEnqueued
from ..jobs.clock import isoformat_z
from ..jobs.model import Job, job_to_json
from ..jobs.store import NewJob
from .deps import events_of, registry_of, settings_of, store_of
from .errors import FastJSONResponse, PayloadTooLarge, error_response
from .validation import (
    parse_job_id,
    parse_new_job,
    parse_page,
    parse_scheduled_job,
    parse_status,
)

router = APIRouter(prefix="/jobs", tags=["jobs"])


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 as soon as it grows past MAX_BODY_BYTES."""
    limit = settings_of(request).max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is larger than {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def enqueue(request: Request, new_job: NewJob) -> Job:
    """Store the job and tell the subscribers of JobEnqueued."""
    job = await store_of(request).insert_job(new_job)
    events_of(request).emit(JobEnqueued(job, registry_of(request).resolve(job).name))
    return job


@router.post("", status_code=202)
async def submit_job(request: Request) -> FastJSONResponse:
    job = await enqueue(request, parse_new_job(await read_body(request)))
    return FastJSONResponse({"message": "Job accepted", "job_id": job.id}, status_code=202)


@router.post("/schedule", status_code=202)
async def schedule_job(request: Request) -> FastJSONResponse:
    job = await enqueue(request, parse_scheduled_job(await read_body(request)))
    body = {"message": "Job scheduled", "job_id": job.id, "run_at": isoformat_z(job.run_at)}
    return FastJSONResponse(body, status_code=202)


@router.get("")
async def list_jobs(request: Request) -> FastJSONResponse:
    status = parse_status(request.query_params.get("status"))
    limit, offset = parse_page(request.query_params)
    jobs = await store_of(request).list_jobs(status, limit, offset)
    return FastJSONResponse([job_to_json(job) for job in jobs])


@router.get("/{job_id}")
async def get_job(job_id: str, request: Request) -> FastJSONResponse:
    wanted = parse_job_id(job_id)
    job = None if wanted is None else await store_of(request).get_job(wanted)
    if job is None:
        return error_response(404, "Job not found")
    return FastJSONResponse(job_to_json(job))
