"""Liveness and overview: `/`, `/health`, `/stats`."""

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from ..jobs.model import JobStatus
from ..jobs.store import StoreUnavailable
from .deps import engine_of, store_of
from .errors import FastJSONResponse

router = APIRouter(tags=["system"])


@router.get("/", response_class=PlainTextResponse)
async def root() -> str:
    return "Server is running"


@router.get("/health")
async def health(request: Request) -> FastJSONResponse:
    """OK when the store answers and, if this process runs workers, the engine is running."""
    problems = {}
    engine = engine_of(request)
    if engine is not None and not engine.is_running:
        problems["engine"] = "not running"
    try:
        await store_of(request).ping()
    except StoreUnavailable as exc:
        problems["store"] = f"unreachable: {exc}"
    if problems:
        return FastJSONResponse({"status": "DEGRADED", **problems}, status_code=503)
    return FastJSONResponse({"status": "OK"})


@router.get("/stats")
async def stats(request: Request) -> FastJSONResponse:
    counts = await store_of(request).count_jobs()
    by_status = {status.value: counts.get(status, 0) for status in JobStatus}
    return FastJSONResponse({**by_status, "total": sum(by_status.values())})
