"""Schedules: the tasks declared with `cron=`, their next and last runs, pausing them."""

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from ..jobs import cron
from ..jobs.registry import TaskRegistry
from ..jobs.store import JobStore, ScheduleState
from .deps import StoreDep
from .schemas import ErrorBody, Schedule, error_responses

router = APIRouter(prefix="/schedules", tags=["schedules"], responses=error_responses(503))

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No task has a schedule by this name."}
}


@router.get("")
async def list_schedules(store: StoreDep, request: Request) -> list[Schedule]:
    """Every schedule the tasks declare, by name."""
    states = {state.name: state for state in await store.list_schedules()}
    registry: TaskRegistry = request.app.state.registry
    return [
        _describe(schedule, states.get(name), request)
        for name, schedule in sorted(registry.schedules.items())
    ]


@router.post("/{name}/pause", responses=NOT_FOUND)
async def pause_schedule(name: str, store: StoreDep, request: Request) -> Schedule:
    """Stop every instance from enqueuing this schedule's jobs, until it is resumed; kept
    across restarts. Jobs already enqueued still run."""
    schedule = _declared(name, request)
    await store.pause_schedule(name)
    return await _schedule(schedule, store, request)


@router.post("/{name}/resume", responses=NOT_FOUND)
async def resume_schedule(name: str, store: StoreDep, request: Request) -> Schedule:
    """Enqueue this schedule's jobs again from its next tick; ticks missed while it was
    paused are not caught up."""
    schedule = _declared(name, request)
    await store.resume_schedule(name)
    return await _schedule(schedule, store, request)


def _declared(name: str, request: Request) -> cron.Schedule:
    registry: TaskRegistry = request.app.state.registry
    schedule = registry.schedules.get(name)
    if schedule is None:
        raise HTTPException(404, f"No schedule named {name!r}")
    return schedule


async def _schedule(schedule: cron.Schedule, store: JobStore, request: Request) -> Schedule:
    states = await store.list_schedules()
    state = next((state for state in states if state.name == schedule.name), None)
    return _describe(schedule, state, request)


def _describe(schedule: cron.Schedule, state: ScheduleState | None, request: Request) -> Schedule:
    paused = state is not None and state.paused
    return Schedule(
        name=schedule.name,
        cron=schedule.cron,
        timezone=schedule.timezone,
        payload=schedule.job.payload,
        queue=schedule.job.queue,
        priority=schedule.job.priority,
        paused=paused,
        next_run_at=None if paused else schedule.next_tick(request.app.state.clock.now()),
        last_run_at=state.last_tick if state else None,
        last_job_id=state.last_job_id if state else None,
    )
