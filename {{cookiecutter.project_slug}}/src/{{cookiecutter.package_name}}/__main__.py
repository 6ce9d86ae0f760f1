"""`python -m <package>`: serve the API and run the engine, as the settings say."""

import asyncio
import logging
import signal
import sys

import uvicorn
{%- if cookiecutter.use_metrics == "no" %}
from fastapi import FastAPI
{%- endif %}

{% if cookiecutter.use_metrics == "no" -%}
from . import event_loop
{% endif -%}
from .jobs.clock import SystemClock
from .jobs.store import StoreUnavailable, make_store
from .main import create_app, settings_for_process
from .settings import Settings

logger = logging.getLogger(__name__)


def main() -> None:
    settings = settings_for_process()
    # Reach the store before serving: an unreachable one is one clear line, not a traceback.
    try:
        asyncio.run(check_store(settings))
    except StoreUnavailable as exc:
        sys.exit(f"error: job store unavailable: {exc}")
    app = create_app(settings)
{%- if cookiecutter.use_metrics == "yes" %}
    if settings.start_http:
        logger.info("Starting server on port %d", settings.port)
    else:
        # Still listening, for Prometheus and health probes; the jobs API is not served.
        logger.info("Workers only (START_HTTP=false): /metrics and /health on %d", settings.port)
{%- else %}
    if not settings.start_http:
        # The engine on the loop uvicorn would give it: with asyncio's own, a worker-only
        # process ran measurably fewer jobs than one that also serves HTTP.
        event_loop.run(run_workers_only(app))
        return
    logger.info("Starting server on port %d", settings.port)
{%- endif %}
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
    )


async def check_store(settings: Settings) -> None:
    """Open and close the store once; raises StoreUnavailable when it cannot be reached."""
    store = make_store(settings, SystemClock())
    await store.open()
    await store.close()
{%- if cookiecutter.use_metrics == "no" %}


async def run_workers_only(app: FastAPI) -> None:
    """Run the engine without HTTP until SIGTERM or SIGINT, then drain like the server does."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with app.router.lifespan_context(app):
        logger.info("Running workers only (START_HTTP=false)")
        await stop.wait()
        logger.info("Shutting down")
{%- endif %}


if __name__ == "__main__":
    main()
