"""Every knob of the service, read once from the environment (and a `.env` file)."""

import re
from datetime import timedelta
{% if cookiecutter.job_store == "sqlite" or cookiecutter.use_metrics == "yes" -%}
from pathlib import Path
{% endif -%}
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

{% if cookiecutter.use_auth == "yes" -%}
from .api_keys import ApiKey, parse_api_keys
{% endif -%}
from .jobs.model import DEFAULT_QUEUE, QUEUE_NAME_PATTERN, JobStatus

PositiveSeconds = Annotated[float, Field(gt=0)]
DAY = 24 * 60 * 60
# Up to a century: older cutoffs are out of datetime's range and mean "keep" anyway (0).
RetentionSeconds = Annotated[float, Field(ge=0, le=100 * 365 * DAY)]
{%- if cookiecutter.use_auth == "yes" %}
# Their values are never printed, not even in an error naming them.
SECRET_SETTINGS = frozenset({"api_keys"})
{%- endif %}


class SettingsError(Exception):
    """A setting has a value the service cannot run with."""


class Settings(BaseSettings):
    """Service settings; each field is the environment variable of the same name, upper-cased."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=1, le=65535)] = {{ cookiecutter.port }}
    # Jobs executed at once by this process, from the default queue and every queue QUEUES
    # does not name.
    worker_pool_size: Annotated[int, Field(ge=1, le=1024)] = {{ cookiecutter.worker_count }}
    # The queues this process serves and how many of each queue's jobs it runs at once, as
    # `default=4,emails=2`; `default` also serves every queue not named. Unset: the default
    # queue (and so every queue) with WORKER_POOL_SIZE.
    queues: Annotated[dict[str, int] | None, NoDecode] = None
    # Each priority level counts for this many seconds of waiting: a job of priority p is
    # claimed as if it had become due p x this later (0: first come, first served).
    priority_aging_seconds: Annotated[float, Field(ge=0)] = 300.0
{%- if cookiecutter.job_store == "sqlite" %}
    # Where the SQLite file lives; relative paths are relative to the working directory.
    database_url: str = "sqlite:///./jobs.db"
    # How long a write waits for another process's lock on the file: past it a request
    # answers 503, and workers try again.
    database_timeout: Annotated[float, Field(gt=0, le=600)] = 5.0
{%- elif cookiecutter.job_store == "postgres" %}
    # postgresql://user:password@host:5432/dbname; every instance of the service shares it.
    database_url: str
    # How long start-up keeps trying to reach the database before it gives up.
    database_connect_timeout: Annotated[float, Field(ge=0)] = 30.0
    # No connection, statement or wait for a pooled connection takes longer than this: past
    # it a request answers 503, and workers try again.
    database_timeout: Annotated[float, Field(gt=0, le=600)] = 5.0
    # LISTEN/NOTIFY wakes idle workers on every instance at once; turn it off where NOTIFY
    # does not work (PgBouncer in transaction mode): workers then poll every POLL_INTERVAL.
    database_notify: bool = True
    # A running job's lease, by the database's clock: its instance renews it every third of
    # this. An instance that dies is found at once (its lock; see the store), one that hangs
    # once its leases have expired: any other then requeues its jobs.
    job_lease_seconds: Annotated[float, Field(ge=1)] = 30.0
    # A job lost this many attempts in a row (its instance died, or its lease expired)
    # fails: one that crashes whatever runs it is not passed around the fleet.
    job_lost_limit: Annotated[int, Field(ge=1, le=100)] = 3
{%- endif %}
{%- if cookiecutter.use_auth == "yes" %}
    # Who may call the API: `name:secret` (an admin key) or `name:secret:read` (GET routes
    # only), comma-separated, or the path of a file of them, one a line (a mounted secret).
    # Unset: the API is open to anyone who can reach it.
    api_keys: Annotated[tuple[ApiKey, ...], NoDecode] = ()
{%- endif %}
    start_http: bool = True
    start_workers: bool = True
    # uvicorn's limits (python -m only). An idle keep-alive connection is closed after this.
    http_keep_alive_seconds: Annotated[int, Field(ge=1)] = 5
    # Connections and requests in progress at once; past it, new requests get a 503 at once
    # instead of queueing without end behind clients that send slowly.
    http_concurrency_limit: Annotated[int, Field(ge=1)] = 1000
    # Connections the kernel holds for accept() while the process is busy.
    http_backlog: Annotated[int, Field(ge=1)] = 2048
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    # "json": one JSON object per line, with job_id, task and attempt on job events.
    log_format: Literal["text", "json"] = "text"
    # Backoff before retry n is min(base * 2 ** (n - 1), max) seconds, with jitter.
    retry_backoff_base: PositiveSeconds = 1.0
    retry_backoff_max: PositiveSeconds = 300.0
    # How long SIGTERM waits for running jobs before releasing them back to the queue.
    shutdown_grace: Annotated[float, Field(ge=0)] = 25.0
    max_body_bytes: Annotated[int, Field(ge=1)] = 1_048_576
    # Idle workers look for due jobs at least this often, whatever wakes them sooner.
    poll_interval: Annotated[float, Field(gt=0, le=60)] = 1.0
    # Finished jobs are deleted once they finished this long ago, per status (0: kept for
    # good), checked every RETENTION_INTERVAL by the processes that run workers.
    retain_done_seconds: RetentionSeconds = 7 * DAY
    retain_failed_seconds: RetentionSeconds = 30 * DAY
    retain_cancelled_seconds: RetentionSeconds = 7 * DAY
    retention_interval: PositiveSeconds = 60.0
    # At start-up a schedule's latest missed tick is enqueued, and with this window also
    # every earlier tick missed in the last CRON_CATCH_UP_SECONDS.
    cron_catch_up_seconds: RetentionSeconds = 0.0
{%- if cookiecutter.use_metrics == "yes" %}
    # An empty directory shared by processes that answer on one port (uvicorn --workers N):
    # each keeps its metrics there and /metrics reports them all. prometheus_client reads it
    # from the environment itself; it is checked here so a wrong path is one clear line.
    prometheus_multiproc_dir: Path | None = None
{%- endif %}

    @field_validator("queues", mode="before")
    @classmethod
    def _parse_queues(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        limits: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, equals, limit = item.partition("=")
            if not equals or not re.fullmatch(QUEUE_NAME_PATTERN, name.strip()):
                raise ValueError(f"{item!r} is not queue=limit, a queue being 1-64 of a-z0-9_-")
            limits[name.strip()] = limit.strip()
        if not limits:
            raise ValueError("names no queue")
        return limits

{%- if cookiecutter.use_auth == "yes" %}

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        return parse_api_keys(value) if isinstance(value, str) else value
{%- endif %}

    @field_validator("queues")
    @classmethod
    def _check_limits(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        for name, limit in (value or {}).items():
            if not 1 <= limit <= 1024:
                raise ValueError(f"the limit of queue {name!r} must be 1 to 1024, got {limit}")
        return value

    @property
    def queue_limits(self) -> dict[str, int]:
        """Each served queue and how many of its jobs run at once (see `queues`)."""
        return dict(self.queues) if self.queues else {DEFAULT_QUEUE: self.worker_pool_size}

    @property
    def retention(self) -> dict[JobStatus, timedelta]:
        """How long finished jobs are kept, for each status whose jobs are ever deleted."""
        retain = {
            JobStatus.DONE: self.retain_done_seconds,
            JobStatus.FAILED: self.retain_failed_seconds,
            JobStatus.CANCELLED: self.retain_cancelled_seconds,
        }
        return {status: timedelta(seconds=seconds) for status, seconds in retain.items() if seconds}

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_consistency(self) -> "Settings":
        if not (self.start_http or self.start_workers):
            raise ValueError("START_HTTP and START_WORKERS are both false: nothing to run")
        if self.retry_backoff_max < self.retry_backoff_base:
            raise ValueError("RETRY_BACKOFF_MAX must be at least RETRY_BACKOFF_BASE")
{%- if cookiecutter.use_metrics == "yes" %}
        multiproc_dir = self.prometheus_multiproc_dir
        if multiproc_dir is not None and not multiproc_dir.is_dir():
            raise ValueError(f"PROMETHEUS_MULTIPROC_DIR: {multiproc_dir} is not a directory")
{%- endif %}
{%- if cookiecutter.job_store == "sqlite" %}
        if not self.database_url.startswith("sqlite:///"):
            raise ValueError("DATABASE_URL must look like sqlite:///path/to/jobs.db")
        path = self.database_url.removeprefix("sqlite:///")
        if not path or path.startswith(":memory:"):
            raise ValueError("DATABASE_URL must name a database file")
        if not Path(path).parent.is_dir():
            raise ValueError(f"DATABASE_URL: the directory {Path(path).parent} does not exist")
{%- elif cookiecutter.job_store == "postgres" %}
        scheme = self.database_url.partition("://")[0]
        if scheme not in {"postgresql", "postgres", "postgresql+asyncpg"}:
            raise ValueError("DATABASE_URL must look like postgresql://user@host:5432/dbname")
{%- elif cookiecutter.job_store == "memory" %}
        if not (self.start_http and self.start_workers):
            # No other process can see this process's jobs.
            raise ValueError("the memory store needs START_HTTP and START_WORKERS both true")
{%- endif %}
        return self


def load_settings() -> Settings:
    """Read the settings, turning validation errors into one line that names the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"] and error["type"] == "missing":
            problems.append(f"{str(error['loc'][0]).upper()} is required")
{%- if cookiecutter.use_auth == "yes" %}
        elif error["loc"] and error["loc"][0] in SECRET_SETTINGS:
            problems.append(f"{str(error['loc'][0]).upper()} is invalid: {message}")
{%- endif %}
        elif error["loc"]:
            variable = str(error["loc"][0]).upper()
            problems.append(f"{variable}={error.get('input')!r} is invalid: {message}")
        else:
            problems.append(message)
    return "; ".join(problems)
