"""What routes need from the running app, as `Annotated` dependencies (set up in app.py).

They are `async def` although they never wait: FastAPI runs a plain function dependency in
its thread pool, a thread hop per dependency per request.
"""

from typing import Annotated

from fastapi import Depends, Request

from ..jobs.engine import Engine
from ..jobs.store import JobStore


async def get_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.store
    return store


async def get_engine(request: Request) -> Engine | None:
    """The job engine, or None in a process started with START_WORKERS=false."""
    engine: Engine | None = request.app.state.engine
    return engine


StoreDep = Annotated[JobStore, Depends(get_store)]
EngineDep = Annotated[Engine | None, Depends(get_engine)]
