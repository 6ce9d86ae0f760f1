"""Builds the application: routes, error handling, and the lifespan that runs the engine."""

import asyncio
{%- if cookiecutter.job_store == "sqlite" or cookiecutter.use_auth == "yes" %}
import logging
{%- endif %}
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import timedelta
{%- if cookiecutter.use_auth == "yes" %}
from typing import Any
{%- endif %}

from fastapi import FastAPI{% if cookiecutter.use_auth == "yes" %}, Security{% endif %}

from .about import DESCRIPTION, TITLE
from .api import jobs, queues, schedules, system
{%- if cookiecutter.use_auth == "yes" %}
from .api.auth import RequireApiKey
{%- endif %}
from .api.body_limit import BodySizeLimitMiddleware
from .api.errors import document_validation_errors_as_400, install_error_handlers
from .api.request_events import RequestEventsMiddleware
{%- if cookiecutter.use_auth == "yes" %}
from .api.schemas import error_responses
{%- endif %}
{%- if cookiecutter.use_dashboard == "yes" %}
from .dashboard import NAME as DASHBOARD_NAME
from .dashboard import PATH as DASHBOARD_PATH
from .dashboard import create_dashboard
{%- endif %}
from .events import EventBus
from .jobs.clock import Clock, SystemClock
from .jobs.engine import Engine
from .jobs.registry import TaskRegistry
from .jobs.retention import keep_deleting_expired_jobs
from .jobs.scheduler import Scheduler
from .jobs.store import JobStore, make_store
{%- if cookiecutter.job_store == "sqlite" %}
from .jobs.store.sqlite import WorkersRunElsewhere
{%- endif %}
from .jobs.tasks import registry as default_registry
from .logs import configure_logging, log_job_events
{%- if cookiecutter.use_metrics == "yes" %}
from .metrics import ServiceMetrics
{%- endif %}
from .settings import Settings, SettingsError, load_settings
from .subscribers import subscribe
{%- if cookiecutter.job_store == "sqlite" or cookiecutter.use_auth == "yes" %}

logger = logging.getLogger(__name__)
{%- endif %}


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    registry: TaskRegistry | None = None,
) -> FastAPI:
    """The service for `settings`; the store opens and the engine starts with the lifespan."""
    clock = clock or SystemClock()
    registry = registry or default_registry
    store = make_store(settings, clock)
    events = EventBus()
    log_job_events(events)
    engine = None
    if settings.start_workers:
        engine = Engine(
            store,
            registry,
            clock,
            queues=settings.queue_limits,
            backoff_base=settings.retry_backoff_base,
            backoff_max=settings.retry_backoff_max,
            poll_interval=settings.poll_interval,
            events=events,
        )
{%- if cookiecutter.use_metrics == "yes" %}
    service_metrics = ServiceMetrics()
    service_metrics.subscribe(events, engine)
{%- endif %}
    subscribe(events)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await store.open()
        chores: list[asyncio.Task[None]] = []
        try:
            if engine is not None:
{%- if cookiecutter.job_store == "sqlite" %}
                try:
                    await engine.start()
                    chores = start_chores(store, registry, settings, clock, events)
                except WorkersRunElsewhere as exc:
                    # One process runs workers on the file: this one serves HTTP only, and
                    # its /health says that the engine it should run does not.
                    logger.error("This process runs no workers: %s", exc)
{%- else %}
                await engine.start()
                chores = start_chores(store, registry, settings, clock, events)
{%- endif %}
            yield
            if engine is not None:
                await engine.stop(settings.shutdown_grace)
        finally:
            for chore in chores:
                chore.cancel()
                with suppress(asyncio.CancelledError):
                    await chore
            await store.close()
{%- if cookiecutter.use_metrics == "yes" %}
            service_metrics.close()
{%- endif %}

    app = FastAPI(
        title=TITLE,
        description=DESCRIPTION,
        lifespan=lifespan,
        # FastAPI's OpenTelemetry support asks on every request whether providers are set up,
        # for spans and metrics nothing collects here: turn it on with an OpenTelemetry SDK.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.store = store
    app.state.engine = engine
    app.state.registry = registry
    app.state.clock = clock
    app.state.events = events
{%- if cookiecutter.use_metrics == "yes" %}
    app.state.metrics = service_metrics
{%- endif %}
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestEventsMiddleware, events=events)
    install_error_handlers(app)
    document_validation_errors_as_400(app)
{%- if cookiecutter.use_auth == "yes" %}
    protected = api_key_protection(settings)
{%- endif %}
    # A worker-only process serves no jobs API, but still answers probes (/ and /health){% if cookiecutter.use_metrics == "yes" %}
    # and Prometheus{% endif %}.
    if settings.start_http:
        for router in (jobs.router, queues.router, schedules.router):
            app.include_router(router{% if cookiecutter.use_auth == "yes" %}, **protected{% endif %})
{%- if cookiecutter.use_dashboard == "yes" %}
        app.mount(DASHBOARD_PATH, create_dashboard(app.state, settings), name=DASHBOARD_NAME)
{%- endif %}
    app.include_router(system.router{% if cookiecutter.use_auth == "yes" %}, **protected{% endif %})
    app.include_router(system.probes)
{%- if cookiecutter.use_metrics == "yes" %}
    service_metrics.instrument_app(app)
{%- endif %}
    return app
{%- if cookiecutter.use_auth == "yes" %}


def api_key_protection(settings: Settings) -> dict[str, Any]:
    """What `include_router` adds to every route but the probes{% if cookiecutter.use_metrics == "yes" %} and /metrics{% endif %}: one of
    API_KEYS is needed when it names any."""
    if not settings.api_keys:
        if settings.start_http:
            logger.warning(
                "API_KEYS is not set: anyone who can reach this service can submit, cancel"
                " and read its jobs"
            )
        return {}
    return {
        "dependencies": [Security(RequireApiKey(settings.api_keys))],
        "responses": error_responses(401, 403),
    }
{%- endif %}


def start_chores(
    store: JobStore, registry: TaskRegistry, settings: Settings, clock: Clock, events: EventBus
) -> list[asyncio.Task[None]]:
    """What the processes that run workers do besides: enqueue the schedules' jobs, delete
    jobs past their retention. HTTP-only processes leave both to them."""
    chores = []
    if registry.schedules:
        scheduler = Scheduler(
            store,
            list(registry.schedules.values()),
            clock,
            events,
            catch_up=timedelta(seconds=settings.cron_catch_up_seconds),
        )
        chores.append(asyncio.create_task(scheduler.run()))
    if settings.retention:
        chores.append(
            asyncio.create_task(
                keep_deleting_expired_jobs(
                    store, settings.retention, clock, settings.retention_interval
                )
            )
        )
    return chores


def settings_for_process() -> Settings:
    """Settings from the environment with logging set up; a bad one exits with one line."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        sys.exit(f"error: {exc}")
    configure_logging(settings.log_level, settings.log_format)
    return settings
