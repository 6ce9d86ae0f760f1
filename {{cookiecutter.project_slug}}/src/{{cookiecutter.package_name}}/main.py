"""Builds the application: routes, error handling, and the lifespan that runs the engine."""

import gc
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from .about import DESCRIPTION, TITLE
{%- if cookiecutter.use_metrics == "yes" %}
from .api import jobs, metrics, system
{%- else %}
from .api import jobs, system
{%- endif %}
from .api.errors import FastJSONResponse, install_error_handlers
from .api.request_events import RequestEventsMiddleware
from .events import EventBus
from .jobs.clock import Clock, SystemClock
from .jobs.engine import Engine
from .jobs.registry import TaskRegistry
from .jobs.store import make_store
from .jobs.tasks import registry as default_registry
from .logs import configure_logging, log_job_events
{%- if cookiecutter.use_metrics == "yes" %}
from .metrics import ServiceMetrics
{%- endif %}
from .settings import Settings, SettingsError, load_settings
from .subscribers import subscribe

YOUNG_OBJECTS_BEFORE_COLLECTION = 10_000


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
            pool_size=settings.worker_pool_size,
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
        try:
            if engine is not None:
                await engine.start()
            # What is alive now lives as long as the process. Moving it out of the garbage
            # collector's sight keeps each full collection from walking all of FastAPI, pydantic
            # and SQLAlchemy: measured, those took ~50 ms and were most of POST /jobs' p99.
            gc.freeze()
            # A young collection runs each time 700 more objects have been made than freed.
            # Requests waiting on a commit hold more than that between them, so POST /jobs paid
            # a collection every ~11 requests (measured: 17-23 us a request), where a request
            # that frees what it made before the next one arrives paid almost none. Past this
            # count, only garbage that is really piling up triggers one.
            gc.set_threshold(YOUNG_OBJECTS_BEFORE_COLLECTION)
            yield
            if engine is not None:
                await engine.stop(settings.shutdown_grace)
        finally:
            await store.close()
{%- if cookiecutter.use_metrics == "yes" %}
            service_metrics.close()
{%- endif %}

    app = FastAPI(
        title=TITLE,
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=FastJSONResponse,
        # FastAPI's own OpenTelemetry asks on every request whether providers are configured:
        # measured, 32,000 instructions, 8% of the benchmark's bare request, for spans and
        # metrics that nothing collects here. Turn these on once you set up an OpenTelemetry SDK.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.store = store
    app.state.engine = engine
    app.state.registry = registry
    app.state.events = events
{%- if cookiecutter.use_metrics == "yes" %}
    app.state.metrics = service_metrics
{%- endif %}
    app.add_middleware(RequestEventsMiddleware, events=events)
    install_error_handlers(app)
    # Requests try routes in order: the jobs API, the busiest, comes first.
{%- if cookiecutter.use_metrics == "yes" %}
    # A worker-only process serves the other two alone: for Prometheus and probes.
    routers = [jobs.router] if settings.start_http else []
    add_routes(app, *routers, system.router, metrics.router)
{%- else %}
    add_routes(app, jobs.router, system.router)
{%- endif %}
    return app


def add_routes(app: FastAPI, *routers: APIRouter) -> None:
    """Serve the routers' routes from the app's own list, in order, ahead of FastAPI's docs.

    `app.include_router` keeps a router as a layer of its own, which every request matches
    through: measured in-process, each router tried cost a request about 3.5 us, where the
    benchmark's bare endpoint costs 50 us in all. FastAPI adds its four docs routes when the
    app is made; behind them, every request to the API tried those four first.
    """
    app.router.routes[:0] = [route for router in routers for route in router.routes]


def settings_for_process() -> Settings:
    """Settings from the environment with logging set up; a bad one exits with one line."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        sys.exit(f"error: {exc}")
    configure_logging(settings.log_level, settings.log_format)
    return settings


def create_app_from_environment() -> FastAPI:
    """The app as `uvicorn <package>.main:app` runs it."""
    return create_app(settings_for_process())


def __getattr__(name: str) -> FastAPI:
    # `uvicorn <package>.main:app` asks for `app`; building it only then keeps
    # a plain import of this module (by tests, `python -m`, the benchmarks) free of side
    # effects such as reading the environment and configuring logging.
    if name == "app":
        app = create_app_from_environment()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
