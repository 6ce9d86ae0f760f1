"""Liveness and overview: the probes `/` and `/health`, `/stats` and `/stats/throughput`."""

import asyncio
from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ..jobs.model import JobStatus
from ..jobs.store import StoreFull, StoreUnavailable
from ..jobs.store.base import minute_of
from .deps import EngineDep, StoreDep
from .schemas import Health, MinuteThroughput, Stats, Throughput, error_responses

CHART_MINUTES = 60
# /health answers within a second: a probe that times out sees the process as down.
HEALTH_STORE_TIMEOUT = 0.8

# Open to anyone, always: load balancers and orchestrators probe without credentials.
probes = APIRouter(tags=["system"])
router = APIRouter(tags=["system"])


@probes.get("/", response_class=PlainTextResponse)
async def root() -> str:
    """Answers while the server runs."""
    return "Server is running"


@probes.get(
    "/health",
    response_model=Health,
    response_model_exclude_none=True,
    responses={503: {"model": Health, "description": "Something this process needs is down."}},
)
async def health(store: StoreDep, engine: EngineDep) -> Health | JSONResponse:
    """OK when the store answers and, if this process runs workers, the engine is running;
    answered within a second whatever the store does."""
    problems = {}
    if engine is not None and not engine.is_running:
        problems["engine"] = "restarting" if engine.is_supervised else "not running"
    # Not wait_for: a cancelled ping may itself wait for the store while it cleans up.
    ping = asyncio.ensure_future(store.ping())
    await asyncio.wait({ping}, timeout=HEALTH_STORE_TIMEOUT)
    if not ping.done():
        ping.add_done_callback(_forget)
        problems["store"] = f"timed out after {HEALTH_STORE_TIMEOUT:g} s"
    elif isinstance(error := ping.exception(), StoreFull):
        problems["store"] = f"full: {error}"
    elif isinstance(error, StoreUnavailable):
        problems["store"] = f"unreachable: {error}"
    elif error is not None:
        raise error
    if problems:
        return JSONResponse({"status": "DEGRADED", **problems}, status_code=503)
    return Health(status="OK")


def _forget(ping: "asyncio.Future[None]") -> None:
    """Take a late ping's outcome, so that asyncio does not log it as never retrieved."""
    if not ping.cancelled():
        ping.exception()


@router.get("/stats", responses=error_responses(503))
async def stats(store: StoreDep) -> Stats:
    """How many jobs there are in each status."""
    counts = await store.count_jobs()
    by_status = {status.value: counts.get(status, 0) for status in JobStatus}
    return Stats(**by_status, total=sum(by_status.values()))


@router.get("/stats/throughput", responses=error_responses(503))
async def throughput(store: StoreDep, request: Request) -> Throughput:
    """The attempts that ended in each of the last 60 minutes: completed and failed."""
    now_minute = minute_of(request.app.state.clock.now())
    first = now_minute - timedelta(minutes=CHART_MINUTES - 1)
    counted = {minute.minute: minute for minute in await store.recent_outcomes(first)}
    minutes = []
    for n in range(CHART_MINUTES):
        minute = first + timedelta(minutes=n)
        found = counted.get(minute)
        completed, failed = (found.completed, found.failed) if found else (0, 0)
        minutes.append(MinuteThroughput(minute=minute, completed=completed, failed=failed))
    return Throughput(minutes=minutes)
