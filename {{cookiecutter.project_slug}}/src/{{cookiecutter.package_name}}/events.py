"""What happens to jobs and requests, told to whoever subscribes: logs, metrics, your code.

Subscribe on the app's bus, typically from a lifespan or right after `create_app`:

    from {{ cookiecutter.package_name }}.events import JobErrored

    def page_on_call(event: JobErrored) -> None:
        if event.retry_at is None:  # out of attempts
            pager.send(f"job {event.job.id} failed: {event.error}")

    app.state.events.subscribe(JobErrored, page_on_call)

Subscribers run inline, on the event loop, in the order they subscribed: keep them quick
(hand slow work to a task of your own). One that raises is logged and the others still run;
it never fails the job or the request.

Events are named tuples: immutable, so no subscriber changes what the next one sees, and
several times cheaper to build than frozen dataclasses, which counts at two events a job
and one or two a request.
"""

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from starlette.requests import Request
from starlette.types import Scope

from .jobs.model import Job

logger = logging.getLogger(__name__)


class JobEnqueued(NamedTuple):
    """A job was stored by POST /jobs, /jobs/schedule or /jobs/bulk, or by a schedule."""

    job: Job
    task: str  # the registered task that will run it, "default" for the default handler


class JobStarted(NamedTuple):
    """A worker started the job's handler."""

    job: Job
    task: str
    queue_wait: float  # seconds from the job's run_at to this start


class JobStopped(NamedTuple):
    """The handler returned and its result is stored: the job is done."""

    job: Job
    task: str
    duration: float  # seconds the handler ran
    result: Any


class JobErrored(NamedTuple):
    """The handler raised or timed out, and the outcome is stored: retried or failed."""

    job: Job
    task: str
    duration: float
    error: str
    retry_at: datetime | None  # when the next attempt is due; None: out of attempts, failed


class JobCancelled(NamedTuple):
    """A job ended cancelled: before it started (POST /jobs/{id}/cancel on a queued job), or
    when its handler returned or raised after a cancel was asked for."""

    job: Job
    task: str
    duration: float | None  # seconds the handler ran; None: it never started


class RequestStarted(NamedTuple):
    """An HTTP request arrived."""

    scope: Scope  # the ASGI scope; `request` reads it as a Starlette Request

    @property
    def request(self) -> Request:
        """Method, path, headers, client: read them, do not read the body."""
        return Request(self.scope)


class RequestStopped(NamedTuple):
    """An HTTP request was answered (or failed before it could be)."""

    scope: Scope
    route: str | None  # the route's template, such as /jobs/{job_id}; None when none matched
    status: int
    duration: float  # seconds

    @property
    def request(self) -> Request:
        # Built when asked for, not for every request: the metrics read only the method.
        return Request(self.scope)


Event = (
    JobEnqueued
    | JobStarted
    | JobStopped
    | JobErrored
    | JobCancelled
    | RequestStarted
    | RequestStopped
)
E = TypeVar(
    "E",
    JobEnqueued,
    JobStarted,
    JobStopped,
    JobErrored,
    JobCancelled,
    RequestStarted,
    RequestStopped,
)


class EventBus:
    """Delivers each event to the subscribers of its type."""

    def __init__(self) -> None:
        self._subscribers: dict[type[Any], list[Callable[[Any], None]]] = {}

    def subscribe(self, event_type: type[E], subscriber: Callable[[E], None]) -> None:
        self._subscribers.setdefault(event_type, []).append(subscriber)

    def wants(self, event_type: type[Event]) -> bool:
        """Whether anyone listens, so that emitters can skip building unwanted events."""
        return event_type in self._subscribers

    def emit(self, event: Event) -> None:
        for subscriber in self._subscribers.get(type(event), ()):
            try:
                subscriber(event)
            except Exception:
                logger.exception("Subscriber %r failed on %s", subscriber, type(event).__name__)
