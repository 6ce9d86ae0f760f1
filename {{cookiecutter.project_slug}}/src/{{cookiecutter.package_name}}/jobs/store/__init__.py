"""Job stores: the protocol and the store this service was generated with."""

from ...settings import Settings
from ..clock import Clock
from ..model import NewJob
from .base import (
    Enqueued,
    JobConflict,
    JobFilter,
    JobStore,
    MinuteOutcomes,
    QueueCounts,
    ScheduleState,
    StoreFull,
    StoreUnavailable,
)
{%- if cookiecutter.job_store == "sqlite" %}
from .sqlite import SqliteJobStore
{%- elif cookiecutter.job_store == "postgres" %}
from .postgres import PostgresJobStore
{%- elif cookiecutter.job_store == "memory" %}
from .memory import MemoryJobStore
{%- endif %}

__all__ = [
    "Enqueued",
    "JobConflict",
    "JobFilter",
    "JobStore",
    "MinuteOutcomes",
    "NewJob",
    "QueueCounts",
    "ScheduleState",
    "StoreFull",
    "StoreUnavailable",
    "make_store",
]


def make_store(settings: Settings, clock: Clock) -> JobStore:
    """The job store the settings describe."""
{%- if cookiecutter.job_store == "sqlite" %}
    return SqliteJobStore(
        settings.database_url,
        clock,
        priority_aging_seconds=settings.priority_aging_seconds,
        timeout=settings.database_timeout,
    )
{%- elif cookiecutter.job_store == "postgres" %}
    return PostgresJobStore(
        settings.database_url,
        clock,
        notify=settings.database_notify,
        lease_seconds=settings.job_lease_seconds,
        connect_timeout=settings.database_connect_timeout,
        timeout=settings.database_timeout,
        priority_aging_seconds=settings.priority_aging_seconds,
        lost_limit=settings.job_lost_limit,
    )
{%- elif cookiecutter.job_store == "memory" %}
    return MemoryJobStore(clock, priority_aging_seconds=settings.priority_aging_seconds)
{%- endif %}
