"""The API's answers, as pydantic models: `/docs` and `/openapi.json` are built from them."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..jobs.model import NO_NUL, JobStatus, Moment, NewJob, QueueName
from ..jobs.store import JobFilter

MAX_BULK_JOBS = 1000


class ErrorBody(BaseModel):
    """Every error the API answers."""

    error: str = Field(examples=["Job not found"])


class JobAccepted(BaseModel):
    message: Literal["Job accepted"] = "Job accepted"
    job_id: int = Field(examples=[123])


class JobExists(BaseModel):
    """A queued or running job already has the submitted unique_key: nothing was created."""

    message: Literal["Job already exists"] = "Job already exists"
    job_id: int = Field(examples=[123], description="The job that holds the key.")


class BulkJobs(BaseModel):
    """Jobs for `POST /jobs/bulk`: stored together or not at all."""

    jobs: list[NewJob] = Field(
        min_length=1,
        max_length=MAX_BULK_JOBS,
        description=f"1 to {MAX_BULK_JOBS} jobs, each as for POST /jobs (run_at optional).",
    )


class JobsAccepted(BaseModel):
    message: Literal["Jobs accepted"] = "Jobs accepted"
    job_ids: list[int] = Field(
        examples=[[125, 126]],
        description="One id per submitted job, in order; a job whose unique_key was taken"
        " gets the id of the job that holds it.",
    )


class JobSelection(BaseModel):
    """Which jobs a bulk cancel or retry applies to: every field given must match."""

    model_config = ConfigDict(extra="forbid")

    status: JobStatus | None = Field(default=None, description="Only jobs in this status.")
    queue: QueueName | None = Field(default=None, description="Only jobs in this queue.")
    task: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=NO_NUL,
        description='Only jobs whose `payload["task"]` is this.',
        examples=["send_email"],
    )

    def where(self) -> JobFilter:
        return JobFilter(status=self.status, queue=self.queue, task=self.task)


class JobsCancelled(BaseModel):
    message: Literal["Jobs cancelled"] = "Jobs cancelled"
    cancelled: int = Field(examples=[40], description="Queued jobs now `cancelled`.")
    stopping: int = Field(
        examples=[2],
        description="Running jobs asked to stop: each ends `cancelled` when its handler returns.",
    )


class JobsRetried(BaseModel):
    message: Literal["Jobs retried"] = "Jobs retried"
    retried: int = Field(
        examples=[12],
        description="Failed or cancelled jobs queued again; one whose unique_key a queued or"
        " running job holds is left as it is.",
    )


class JobScheduled(BaseModel):
    message: Literal["Job scheduled"] = "Job scheduled"
    job_id: int = Field(examples=[124])
    run_at: Moment = Field(description="When the job becomes due, in UTC.")


class Stats(BaseModel):
    """How many jobs there are in each status."""

    queued: int
    running: int
    done: int
    failed: int
    cancelled: int
    total: int


class Queue(BaseModel):
    """A queue: its jobs by status, how many run at once, whether it is paused."""

    name: str = Field(examples=["emails"])
    paused: bool = Field(description="Its jobs are accepted but no instance claims them.")
    concurrency: int | None = Field(
        description="Jobs of this queue each worker process runs at once, from QUEUES (a queue"
        " QUEUES does not name shares default's); null: no worker process serves it.",
        examples=[2],
    )
    jobs: Stats


class Schedule(BaseModel):
    """A task's schedule: its job is enqueued at every tick of `cron`, once across instances."""

    name: str = Field(examples=["nightly_report"], description="The task's name.")
    cron: str = Field(
        examples=["0 3 * * *"], description="5 fields, or 6 with seconds first, or an alias."
    )
    timezone: str = Field(examples=["UTC"], description="The zone the expression is read in.")
    payload: dict[str, Any] = Field(examples=[{"task": "nightly_report"}])
    queue: str = Field(examples=["default"])
    priority: int = Field(examples=[0])
    paused: bool = Field(description="No instance enqueues its ticks until it is resumed.")
    next_run_at: Moment | None = Field(description="Its next tick, in UTC; null while paused.")
    last_run_at: Moment | None = Field(
        description="Its latest tick that got a job, in UTC; null if none has yet."
    )
    last_job_id: int | None = Field(examples=[123], description="The job of that tick.")


class MinuteThroughput(BaseModel):
    minute: Moment = Field(description="The minute's start, in UTC.")
    completed: int = Field(description="Attempts whose handler returned.")
    failed: int = Field(
        description="Attempts whose handler raised or timed out, or whose worker was lost."
    )


class Throughput(BaseModel):
    """The attempts that ended in each of the last 60 minutes, on every instance."""

    minutes: list[MinuteThroughput] = Field(
        description="Oldest first; the last is the minute now under way."
    )


class Health(BaseModel):
    status: Literal["OK", "DEGRADED"]
    engine: str | None = Field(
        default=None, description="What is wrong with the job engine; absent when it runs."
    )
    store: str | None = Field(
        default=None, description="What is wrong with the job store; absent when it answers."
    )


def error_responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """The OpenAPI `responses` of a route that can answer these error statuses.
{%- if cookiecutter.job_store != "memory" %}
    A route the store can fail (503) can also find it full (507).
{%- endif %}"""
{%- if cookiecutter.job_store != "memory" %}
    if 503 in codes:
        codes = (*codes, 507)
{%- endif %}
    responses: dict[int | str, dict[str, object]] = {}
    for code in codes:
        response: dict[str, object] = {"model": ErrorBody, "description": ERRORS[code]}
        if code in RETRYABLE:
            response["headers"] = {"Retry-After": RETRY_AFTER_HEADER}
        responses[code] = response
    return responses


RETRYABLE = frozenset({503, 507})
RETRY_AFTER_HEADER = {
    "description": "Seconds to wait before trying again.",
    "schema": {"type": "integer"},
}


ERRORS = {
    400: "The request is invalid; the message names the field and what is wrong with it.",
{%- if cookiecutter.use_auth == "yes" %}
    401: "No API key was sent, or it is not one of API_KEYS.",
    403: "The API key may only read (its role is read); this route needs an admin key.",
{%- endif %}
    404: "No such job.",
    409: "The job is not in a status this action applies to.",
    413: "The request body is larger than MAX_BODY_BYTES.",
    503: "The job store cannot be reached, or did not answer in time; try again later.",
{%- if cookiecutter.job_store != "memory" %}
    507: "The job store's disk is full: nothing can be stored until space is freed.",
{%- endif %}
}
