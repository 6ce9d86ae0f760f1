"""Log set-up and the job-event log lines: the same for the API, the engine and uvicorn."""

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from .events import EventBus, JobCancelled, JobErrored, JobStarted, JobStopped
from .jobs.clock import isoformat_z

TEXT_FORMAT = "%(asctime)s [%(levelname)s] %(message)s"
# What a record carries beyond these was passed as `extra=` and belongs in the JSON line.
STANDARD_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

logger = logging.getLogger(__name__)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in STANDARD_RECORD_FIELDS:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler()
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def log_job_events(events: EventBus) -> None:
    """Log a line when a job starts, completes, fails or is cancelled, as the original did."""
    events.subscribe(JobStarted, _log_started)
    events.subscribe(JobStopped, _log_stopped)
    events.subscribe(JobErrored, _log_errored)
    events.subscribe(JobCancelled, _log_cancelled)


def _log_started(event: JobStarted) -> None:
    if logger.isEnabledFor(logging.INFO):  # skips building `extra` when nobody reads it
        logger.info("Executing job %d", event.job.id, extra=_fields(event))


def _log_stopped(event: JobStopped) -> None:
    if logger.isEnabledFor(logging.INFO):
        logger.info("Job %d completed successfully", event.job.id, extra=_fields(event))


def _log_errored(event: JobErrored) -> None:
    job = event.job
    outcome = "giving up" if event.retry_at is None else f"retry at {isoformat_z(event.retry_at)}"
    logger.error(
        "Job %d failed: %s (attempt %d of %d, %s)",
        job.id,
        event.error,
        job.attempt,
        job.max_attempts,
        outcome,
        extra=_fields(event),
    )


def _log_cancelled(event: JobCancelled) -> None:
    when = "before it started" if event.duration is None else f"after {event.duration:.3f}s"
    logger.warning("Job %d cancelled %s", event.job.id, when, extra=_fields(event))


def _fields(event: JobStarted | JobStopped | JobErrored | JobCancelled) -> dict[str, Any]:
    return {"job_id": event.job.id, "task": event.task, "attempt": event.job.attempt}
