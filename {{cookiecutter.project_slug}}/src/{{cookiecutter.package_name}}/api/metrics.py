"""`/metrics`: every metric of this process (or of all processes sharing its port)."""

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..metrics import ServiceMetrics
from .deps import store_of

router = APIRouter(tags=["system"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    service_metrics: ServiceMetrics = request.app.state.metrics
    body = await service_metrics.exposition(store_of(request))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
