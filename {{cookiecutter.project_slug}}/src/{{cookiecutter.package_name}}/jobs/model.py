"""The job as the engine and API pass it around{% if cookiecutter.job_store != "memory" %}, the table it is kept in,{% endif %} and its JSON shape."""

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

{% if cookiecutter.job_store != "memory" -%}
from sqlalchemy import JSON, {% if cookiecutter.job_store == "postgres" %}BigInteger, {% endif %}DateTime, Index, String, text
from sqlmodel import Field, SQLModel

{% endif -%}
from .clock import isoformat_z


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

{%- if cookiecutter.job_store != "memory" %}


# Stores read statuses as text: a dict lookup, where JobStatus(text) runs two Python calls.
STATUS_BY_TEXT = {status.value: status for status in JobStatus}

# Every moment is UTC; databases that can keep the zone do.
MOMENT = DateTime(timezone=True)
{%- endif %}


@dataclass(slots=True, kw_only=True)
class Job:
    """One unit of work and everything that happened to it.

    A plain dataclass: stores build one for every job inserted, claimed or listed, from
    values they have already checked, and building it as a validated SQLModel cost five to
    six times as much (measured: 38,000 against 6,500 instructions for a new job, 48,500
    against 9,100 for one read back with every field).
    """

    id: int
    payload: dict[str, Any]
    status: JobStatus = JobStatus.QUEUED
    # Attempts started so far, including the running one.
    attempt: int = 0
    max_attempts: int = 3
    run_at: datetime
    inserted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Any = None
    # One error text per failed attempt, oldest first.
    errors: list[str] = field(default_factory=list)

    @property
    def task_name(self) -> str | None:
        name = self.payload.get("task")
        return name if isinstance(name, str) else None

{%- if cookiecutter.job_store != "memory" %}


class JobRow(SQLModel, table=True):
    """The table jobs are kept in: Job's fields as columns{% if cookiecutter.job_store == "postgres" %}, and the lease{% endif %}.

    tests/test_store_contract.py checks that the two keep the same fields.
    """

    __tablename__ = "jobs"
{%- set where = "sqlite_where" if cookiecutter.job_store == "sqlite" else "postgresql_where" %}
    __table_args__ = (
        # Claiming reads only queued jobs, oldest run_at first: a partial index keeps that a
        # short walk however many finished jobs pile up.
        Index("ix_jobs_due", "run_at", "id", {{ where }}=text("status = 'queued'")),
        # Listing is newest first, optionally by status.
        Index("ix_jobs_newest", "inserted_at", "id"),
        Index("ix_jobs_status_newest", "status", "inserted_at", "id"),
{%- if cookiecutter.job_store == "postgres" %}
        # Finding running jobs whose instance stopped renewing their lease.
        Index("ix_jobs_leases", "lease_expires_at", {{ where }}=text("status = 'running'")),
{%- endif %}
    )
{%- if cookiecutter.job_store == "postgres" %}

    # 64 bits: a busy service passes the 2,147,483,647 ids of an integer within a few years.
    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger)
{%- else %}

    id: int | None = Field(default=None, primary_key=True)
{%- endif %}
    payload: dict[str, Any] = Field(sa_type=JSON)
    status: JobStatus = Field(default=JobStatus.QUEUED, sa_type=String(16))
    attempt: int = 0
    max_attempts: int = 3
    run_at: datetime = Field(sa_type=MOMENT)
    inserted_at: datetime = Field(sa_type=MOMENT)
    started_at: datetime | None = Field(default=None, sa_type=MOMENT)
    finished_at: datetime | None = Field(default=None, sa_type=MOMENT)
    result: Any = Field(default=None, sa_type=JSON, nullable=True)
    errors: list[str] = Field(default_factory=list, sa_type=JSON)
{%- if cookiecutter.job_store == "postgres" %}

    # The instance running the job, and until when it has promised to be alive.
    locked_by: str | None = None
    lease_expires_at: datetime | None = Field(default=None, sa_type=MOMENT)
{%- endif %}
{%- endif %}


def job_to_json(job: Job) -> dict[str, Any]:
    """The job as the API shows it: integer id, UTC timestamps with `Z`, null when unknown."""
    return {
        "id": job.id,
        "payload": job.payload,
        "status": str(job.status),
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "run_at": isoformat_z(job.run_at),
        "inserted_at": isoformat_z(job.inserted_at),
        "started_at": job.started_at and isoformat_z(job.started_at),
        "finished_at": job.finished_at and isoformat_z(job.finished_at),
        "result": job.result,
        "errors": job.errors,
    }
