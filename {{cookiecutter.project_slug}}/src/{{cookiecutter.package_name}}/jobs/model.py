"""The job: what a client submits, what the engine runs and what the API shows{% if cookiecutter.job_store != "memory" %}, and its table{% endif %}.

pydantic models, as the API documents them: `JobBase` holds what a client chooses, `NewJob`
is a submission, and `Job` is the stored job as handlers receive it and the API returns it.
Their field descriptions and examples are what `/docs` shows.
{%- if cookiecutter.job_store != "memory" %}
`JobRow` is the table (SQLModel) with a column for each of Job's fields: stores build a Job
from every row they read, and a pydantic model validates in half the time of a SQLModel
one, so the two are declared apart and a test holds them together.
{%- endif %}
"""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
{%- if cookiecutter.job_store != "memory" %}
from sqlalchemy import JSON, {% if cookiecutter.job_store == "postgres" %}BigInteger, {% endif %}DateTime, Index, String, text
from sqlmodel import Field as ColumnField
from sqlmodel import SQLModel
{%- endif %}

from .clock import isoformat_z
from .codec import MAX_DEPTH, nesting_depth

# The messages SPEC gives for these two requests.
MISSING_PAYLOAD = "Missing 'payload' field"
SCHEDULE_FIELDS = "Required fields: payload (object), run_at (ISO8601)"
EXAMPLE_PAYLOAD = {"task": "process_data", "value": 42}
EXAMPLE_MOMENT = "2025-12-28T17:24:48.957749Z"


DEFAULT_QUEUE = "default"
MAX_PRIORITY = 9
QUEUE_NAME_PATTERN = r"^[a-z0-9_-]{1,64}$"
NO_NUL = r"^[^\x00]*$"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Statuses a job never leaves by itself: only a retry brings failed and cancelled jobs back.
FINISHED = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED})
# While a job is in one of these, no other job may have its unique_key.
UNIQUE_WHILE = (JobStatus.QUEUED, JobStatus.RUNNING)


def parse_moment(value: object) -> datetime:
    """An ISO 8601 string as a UTC moment: an offset is converted, none means UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value)
    else:
        raise ValueError("must be an ISO 8601 date and time, as a string")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


# Every moment is UTC, shown with microseconds and a trailing Z, whatever pydantic would
# write by default (it drops zero microseconds).
Moment = Annotated[
    datetime,
    PlainSerializer(isoformat_z, return_type=str, when_used="json"),
    WithJsonSchema(
        {"type": "string", "format": "date-time", "examples": [EXAMPLE_MOMENT]},
        mode="serialization",
    ),
]
# What clients may send: a string, not the Unix timestamps pydantic would also take.
MomentInput = Annotated[
    Moment,
    PlainValidator(parse_moment),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "description": "ISO 8601; an offset is converted to UTC, none means UTC",
            "examples": ["2030-12-31T23:59:59Z"],
        },
        mode="validation",
    ),
]


def _reject_bool_and_text(value: object) -> object:
    """`true` and `"3"` are not integers here; `3.0` is, as JSON Schema counts."""
    if isinstance(value, bool | str):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


StrictInt = Annotated[int, BeforeValidator(_reject_bool_and_text)]
QueueName = Annotated[str, Field(pattern=QUEUE_NAME_PATTERN, examples=["emails"])]


class JobBase(BaseModel):
    """What the client chooses about a job."""

    payload: dict[str, Any] = Field(
        description='Any JSON object; `payload["task"]` names the handler that runs the job.',
        examples=[EXAMPLE_PAYLOAD],
    )
    max_attempts: StrictInt = Field(
        default=3, ge=1, le=100, description="Attempts allowed before the job fails for good."
    )
    queue: QueueName = Field(
        default=DEFAULT_QUEUE,
        description="The queue the job waits in: 1-64 of `a-z`, `0-9`, `_` and `-`.",
    )
    priority: StrictInt = Field(
        default=0,
        ge=0,
        le=MAX_PRIORITY,
        description="0 runs first, 9 last; a waiting job gains a level every"
        " PRIORITY_AGING_SECONDS, so none starves.",
    )
    unique_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        # Without NUL: text columns cannot hold it.
        pattern=NO_NUL,
        description="While a queued or running job has this key, submitting another with it"
        " creates nothing and answers with the existing job's id.",
        examples=["invoice-2025-0042"],
    )


class NewJob(JobBase):
    """A job as a client submits it; the store assigns the id, status and timestamps."""

    run_at: MomentInput | None = Field(
        default=None, description="When the job becomes due; absent or past: now."
    )

    @model_validator(mode="before")
    @classmethod
    def _require_an_object_with_payload(cls, data: Any) -> Any:
        if isinstance(data, NewJob):
            return data
        if not isinstance(data, dict):
            raise PydanticCustomError("body_type", "Request body must be a JSON object")
        if "payload" not in data:
            raise PydanticCustomError("missing_payload", MISSING_PAYLOAD)
        return data

    @field_validator("payload")
    @classmethod
    def _limit_nesting(cls, payload: dict[str, Any]) -> dict[str, Any]:
        if nesting_depth(payload) > MAX_DEPTH:
            raise ValueError(f"is nested more than {MAX_DEPTH} levels deep")
        return payload

    def inserted(self, job_id: int, now: datetime) -> "Job":
        """The job as a store has just inserted it, with id `job_id`, at `now`."""
        return Job(
            id=job_id,
            payload=self.payload,
            max_attempts=self.max_attempts,
            queue=self.queue,
            priority=self.priority,
            unique_key=self.unique_key,
            run_at=self.run_at or now,
            inserted_at=now,
        )


class ScheduledJob(NewJob):
    """A job for `POST /jobs/schedule`: `run_at` is required."""

    run_at: MomentInput = Field(description="When the job becomes due; past: now.")

    @model_validator(mode="wrap")
    @classmethod
    def _as_spec_says(cls, data: Any, handler: ModelWrapValidatorHandler["ScheduledJob"]) -> Any:
        # The API promises one message for anything wrong with these two fields.
        try:
            return handler(data)
        except ValidationError as exc:
            if any(error["loc"][:1] in ((), ("payload",), ("run_at",)) for error in exc.errors()):
                raise PydanticCustomError("schedule_fields", SCHEDULE_FIELDS) from None
            raise


class Job(JobBase):
    """One unit of work and everything that happened to it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 123,
                    "payload": {"task": "process_data", "value": 42},
                    "status": "done",
                    "attempt": 1,
                    "max_attempts": 3,
                    "queue": "default",
                    "priority": 0,
                    "unique_key": None,
                    "cancel_requested": False,
                    "run_at": EXAMPLE_MOMENT,
                    "inserted_at": EXAMPLE_MOMENT,
                    "started_at": "2025-12-28T17:24:49.566352Z",
                    "finished_at": "2025-12-28T17:24:49.667314Z",
                    "result": {"status": "completed", "job_id": 123},
                    "errors": [],
                }
            ]
        }
    )

    id: int = Field(description="Assigned by the store; grows with every job.")
    status: JobStatus = JobStatus.QUEUED
    attempt: int = Field(default=0, description="Attempts started so far, the running one too.")
    cancel_requested: bool = Field(
        default=False,
        description="A cancel was asked for while the job ran; it ends `cancelled` when its"
        " handler returns or raises.",
    )
    run_at: Moment = Field(description="When the job is (or was) due.")
    inserted_at: Moment
    started_at: Moment | None = Field(default=None, description="When the latest attempt started.")
    finished_at: Moment | None = Field(
        default=None, description="When it ended done, failed or cancelled."
    )
    result: Any = Field(default=None, description="What the handler returned.")
    errors: list[str] = Field(
        default_factory=list, description="One error per failed attempt, oldest first."
    )

    @property
    def task_name(self) -> str | None:
        name = self.payload.get("task")
        return name if isinstance(name, str) else None

{%- if cookiecutter.job_store != "memory" %}


# The column type every moment is kept in; databases that can keep the zone do.
MOMENT = DateTime(timezone=True)
# The task a job names, as the database reads it from the payload, for listing by task.
{%- if cookiecutter.job_store == "postgres" %}
# A column of its own, written by the store: PostgreSQL's JSON operators fail on any payload
# that holds "\u0000" anywhere, so no index or filter can read the task from the payload.
TASK = "task"
{%- else %}
TASK = text("json_extract(payload, '$.task')")
{%- endif %}


class JobRow(SQLModel, table=True):
    """The table jobs are kept in: Job's fields as columns, `claim_at`{% if cookiecutter.job_store == "postgres" %} and the lease{% endif %}.

    Migrations (jobs/store/migrations) make and change the table in a database; this
    declaration is what they must arrive at, which a test checks.
    """

    __tablename__ = "jobs"
{%- set where = "sqlite_where" if cookiecutter.job_store == "sqlite" else "postgresql_where" %}
    __table_args__ = (
{%- if cookiecutter.job_store == "sqlite" %}
        # Claiming reads only queued jobs: a partial index keeps that a short walk however
        # many finished jobs pile up. By queue and priority: within one priority claim order
        # is run_at order, so claims (and next_run_at) seek straight to each priority's due
        # jobs and never walk the ones not yet due.
        Index(
            "ix_jobs_queue_due",
            "queue",
            "priority",
            "claim_at",
            "id",
            {{ where }}=text("status = 'queued'"),
        ),
{%- else %}
        # Claiming reads only queued jobs in claim order: partial indexes keep that a short
        # walk however many finished jobs pile up; one for claims across every queue, one
        # for claims in a named queue. run_at last: jobs not yet due are skipped in the
        # index, and walking it stays the plan before the table has statistics.
        Index(
            "ix_jobs_due",
            "claim_at",
            "id",
            "run_at",
            {{ where }}=text("status = 'queued'"),
        ),
        Index(
            "ix_jobs_queue_due",
            "queue",
            "claim_at",
            "id",
            "run_at",
            {{ where }}=text("status = 'queued'"),
        ),
{%- endif %}
        # The database itself refuses a second queued or running job with the same key, so
        # two instances inserting at once cannot both succeed.
        Index(
            "ix_jobs_unique_key",
            "unique_key",
            unique=True,
            {{ where }}=text("unique_key IS NOT NULL AND status IN ('queued', 'running')"),
        ),
        # Listing is newest first, optionally by status, queue or task.
        Index("ix_jobs_newest", "inserted_at", "id"),
{%- if cookiecutter.job_store == "sqlite" %}
        # Status is in one listing index only: every claim and outcome rewrites a job's
        # entry in each index that has it. A filter an index has a column for and the
        # listing leaves unset stands for every value (the statuses; the queues job_counts
        # knows), whose ranges SQLite walks newest first and merges.
        Index("ix_jobs_queue_newest", "queue", "status", "inserted_at", "id"),
        Index("ix_jobs_task_newest", TASK, "queue", "inserted_at", "id"),
{%- else %}
        Index("ix_jobs_status_newest", "status", "inserted_at", "id"),
        Index("ix_jobs_queue_newest", "queue", "inserted_at", "id"),
        Index("ix_jobs_task_newest", TASK, "inserted_at", "id"),
{%- endif %}
{%- if cookiecutter.job_store == "postgres" %}
        # Finding running jobs whose instance stopped renewing their lease.
        Index("ix_jobs_leases", "lease_expires_at", {{ where }}=text("status = 'running'")),
{%- endif %}
    )
{%- if cookiecutter.job_store == "postgres" %}

    # 64 bits: a busy service passes the 2,147,483,647 ids of an integer within a few years.
    id: int | None = ColumnField(default=None, primary_key=True, sa_type=BigInteger)
{%- else %}

    id: int | None = ColumnField(default=None, primary_key=True)
{%- endif %}
    payload: dict[str, Any] = ColumnField(sa_type=JSON)
    max_attempts: int = 3
    queue: str = ColumnField(default=DEFAULT_QUEUE, sa_type=String(64))
    priority: int = 0
    unique_key: str | None = ColumnField(default=None, sa_type=String(200))
    status: str = ColumnField(default=JobStatus.QUEUED.value, sa_type=String(16))
    attempt: int = 0
    cancel_requested: bool = False
    run_at: datetime = ColumnField(sa_type=MOMENT)
    inserted_at: datetime = ColumnField(sa_type=MOMENT)
    started_at: datetime | None = ColumnField(default=None, sa_type=MOMENT)
    finished_at: datetime | None = ColumnField(default=None, sa_type=MOMENT)
    result: Any = ColumnField(default=None, sa_type=JSON, nullable=True)
    errors: list[str] = ColumnField(default_factory=list, sa_type=JSON)
    # Where the job stands in line: run_at + priority x PRIORITY_AGING_SECONDS. Claims take
    # the smallest first, so a priority counts for that many seconds of waiting.
    claim_at: datetime = ColumnField(sa_type=MOMENT)
{%- if cookiecutter.job_store == "postgres" %}

    # payload["task"] when it is a string text can hold (no NUL), for listing by task.
    task: str | None = None
    # The instance running the job, and until when it has promised to be alive.
    locked_by: str | None = None
    lease_expires_at: datetime | None = ColumnField(default=None, sa_type=MOMENT)
    # Attempts in a row lost with their instance (died, or its lease expired); at
    # JOB_LOST_LIMIT the job fails. A default in the table, so inserts need not name it.
    lost_in_a_row: int = ColumnField(default=0, sa_column_kwargs={"server_default": text("0")})
{%- endif %}


class QueueRow(SQLModel, table=True):
    """A queue an operator paused or resumed: kept, so it holds across restarts and instances."""

    __tablename__ = "queues"

    name: str = ColumnField(primary_key=True, sa_type=String(64))
    paused: bool = False


{%- if cookiecutter.job_store == "postgres" %}


class InstanceRow(SQLModel, table=True):
    """A running instance that holds its liveness lock (jobs/store/postgres.py)."""

    __tablename__ = "instances"

    id: str = ColumnField(primary_key=True)
    started_at: datetime = ColumnField(sa_type=MOMENT)
{%- endif %}


class ScheduleRow(SQLModel, table=True):
    """A task's schedule (jobs/cron.py) as every instance shares it."""

    __tablename__ = "schedules"

    name: str = ColumnField(primary_key=True)
    paused: bool = False
    # When the schedule was first seen or last resumed: a start-up catches up on no tick
    # before it.
    active_since: datetime = ColumnField(sa_type=MOMENT)


class ScheduleTickRow(SQLModel, table=True):
    """A tick that has its job. The primary key makes it one job per tick, whichever
    instances reach the tick at once."""

    __tablename__ = "schedule_ticks"

    schedule: str = ColumnField(primary_key=True)
    tick: datetime = ColumnField(primary_key=True, sa_type=MOMENT)
{%- if cookiecutter.job_store == "postgres" %}
    job_id: int = ColumnField(sa_type=BigInteger)
{%- else %}
    job_id: int
{%- endif %}


class JobOutcomeRow(SQLModel, table=True):
    """How many attempts ended one way in one minute{% if cookiecutter.job_store == "postgres" %}, as one instance counted them:
    each instance adds to rows of its own, so none waits for another's lock{% endif %}. Kept for
    an hour, for the dashboard's chart (see jobs/store/outcomes.py)."""

    __tablename__ = "job_outcomes"

    minute: datetime = ColumnField(primary_key=True, sa_type=MOMENT)
    outcome: str = ColumnField(primary_key=True, sa_type=String(16))
{%- if cookiecutter.job_store == "postgres" %}
    instance: str = ColumnField(primary_key=True)
{%- endif %}
    n: int


# The columns that make a Job, in the order stores select them.
JOB_COLUMNS = tuple(Job.model_fields)
{%- endif %}
