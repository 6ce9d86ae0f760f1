"""Liveness and overview: the probes `/` and `/health`, and `/stats`."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from ..jobs.model import JobStatus
from ..jobs.store import StoreUnavailable
from .deps import EngineDep, StoreDep
from .schemas import Health, Stats, error_responses

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
    """OK when the store answers and, if this process runs workers, the engine is running."""
    problems = {}
    if engine is not None and not engine.is_running:
        problems["engine"] = "not running"
    try:
        await store.ping()
    except StoreUnavailable as exc:
        problems["store"] = f"unreachable: {exc}"
    if problems:
        return JSONResponse({"status": "DEGRADED", **problems}, status_code=503)
    return Health(status="OK")


@router.get("/stats", responses=error_responses(503))
async def stats(store: StoreDep) -> Stats:
    """How many jobs there are in each status."""
    counts = await store.count_jobs()
    by_status = {status.value: counts.get(status, 0) for status in JobStatus}
    return Stats(**by_status, total=sum(by_status.values()))
