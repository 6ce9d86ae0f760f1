"""`python -m {{ cookiecutter.package_name }}`: serve the app with uvicorn, as the settings say."""

import asyncio
import gc
import logging
import signal
import sys

import uvicorn

from .app import create_app, settings_for_process
from .jobs.clock import SystemClock
from .jobs.store import StoreUnavailable, make_store
from .settings import Settings

logger = logging.getLogger(__name__)

# A young collection runs each time this many more objects have been made than freed
# (Python's default is 700). Requests waiting on a commit hold more than 700 between them,
# so the default made POST /jobs pay a collection every few requests; past this count only
# garbage that really piles up triggers one.
YOUNG_OBJECTS_BEFORE_COLLECTION = 10_000


def main() -> None:
    settings = settings_for_process()
    # Reach the store before serving: an unreachable one is one clear line, not a traceback.
    try:
        asyncio.run(check_store(settings))
    except StoreUnavailable as exc:
        sys.exit(f"error: job store unavailable: {exc}")
    app = create_app(settings)
    if settings.start_http:
        logger.info("Starting server on port %d", settings.port)
    else:
        logger.info("Workers only (START_HTTP=false): probes{% if cookiecutter.use_metrics == "yes" %} and metrics{% endif %} on port %d", settings.port)
    tune_garbage_collector()
    # uvicorn re-raises SIGTERM once it has shut down gracefully; a drained shutdown is
    # a success, so exit 0 then.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        # One line per request would drown the job events; a proxy can log requests.
        access_log=False,
        timeout_keep_alive=settings.http_keep_alive_seconds,
        limit_concurrency=settings.http_concurrency_limit,
        backlog=settings.http_backlog,
    )


def tune_garbage_collector() -> None:
    """Call once the app is built, before serving."""
    # What is alive now (FastAPI, pydantic, SQLAlchemy and the app) lives as long as the
    # process: out of the collector's sight, full collections no longer walk all of it.
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS_BEFORE_COLLECTION)


async def check_store(settings: Settings) -> None:
    """Open and close the store once; raises StoreUnavailable when it cannot be reached."""
    store = make_store(settings, SystemClock())
    await store.open()
    await store.close()


if __name__ == "__main__":
    main()
