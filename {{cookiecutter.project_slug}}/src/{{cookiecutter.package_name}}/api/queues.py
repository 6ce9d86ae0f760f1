"""Queues: their jobs by status, their concurrency, and pausing and resuming them."""

from typing import Annotated

from fastapi import APIRouter, Path, Request

from ..jobs.model import DEFAULT_QUEUE, QUEUE_NAME_PATTERN, JobStatus
from ..jobs.store import JobStore, QueueCounts
from .deps import StoreDep
from .schemas import Queue, Stats, error_responses

router = APIRouter(prefix="/queues", tags=["queues"], responses=error_responses(503))

QueueName = Annotated[
    str, Path(pattern=QUEUE_NAME_PATTERN, description="The queue's name.", examples=["emails"])
]


@router.get("")
async def list_queues(store: StoreDep, request: Request) -> list[Queue]:
    """Every queue that has jobs, is configured in QUEUES, or was ever paused, by name."""
    limits: dict[str, int] = request.app.state.settings.queue_limits
    known = {queue.name: queue for queue in await store.list_queues()}
    names = sorted({*known, *limits})
    return [_describe(known.get(name) or QueueCounts(name, {}, False), limits) for name in names]


@router.post("/{name}/pause", responses=error_responses(400))
async def pause_queue(name: QueueName, store: StoreDep, request: Request) -> Queue:
    """Stop every instance from starting this queue's jobs, until it is resumed; its jobs are
    still accepted, running ones finish. Kept across restarts."""
    await store.pause_queue(name)
    return await _queue(store, name, request)


@router.post("/{name}/resume", responses=error_responses(400))
async def resume_queue(name: QueueName, store: StoreDep, request: Request) -> Queue:
    """Let every instance start this queue's jobs again."""
    await store.resume_queue(name)
    return await _queue(store, name, request)


async def _queue(store: JobStore, name: str, request: Request) -> Queue:
    found = next((queue for queue in await store.list_queues() if queue.name == name), None)
    return _describe(found or QueueCounts(name, {}, False), request.app.state.settings.queue_limits)


def _describe(queue: QueueCounts, limits: dict[str, int]) -> Queue:
    counts = {status.value: queue.counts.get(status, 0) for status in JobStatus}
    return Queue(
        name=queue.name,
        paused=queue.paused,
        concurrency=limits.get(queue.name, limits.get(DEFAULT_QUEUE)),
        jobs=Stats(**counts, total=sum(counts.values())),
    )
