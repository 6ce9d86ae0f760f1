"""What routes need from the running app, resolved from `app.state` set up in main.py."""

from fastapi import Request

from ..events import EventBus
from ..jobs.engine import Engine
from ..jobs.registry import TaskRegistry
from ..jobs.store import JobStore
from ..settings import Settings


def store_of(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


def engine_of(request: Request) -> Engine | None:
    """The job engine, or None in a process started with START_WORKERS=false."""
    engine: Engine | None = request.app.state.engine
    return engine


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def events_of(request: Request) -> EventBus:
    events: EventBus = request.app.state.events
    return events


def registry_of(request: Request) -> TaskRegistry:
    registry: TaskRegistry = request.app.state.registry
    return registry
