"""Which function runs a job: handlers are looked up by the job's `payload["task"]`.

A task registered with `cron=` also has a schedule: the scheduler (jobs/scheduler.py)
enqueues its job at every tick.
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .clock import SystemClock, isoformat_z
from .cron import Schedule
from .model import DEFAULT_QUEUE, Job, NewJob

Handler = Callable[[Job], Any]


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    handler: Handler
    # Seconds an attempt may take before it counts as failed; None means no limit.
    timeout: float | None = None
    # Found once: the engine asks for every job, and inspect answers through three calls.
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.handler))


async def complete_any_job(job: Job) -> dict[str, Any]:
    """The handler for jobs whose task has no handler of its own: it simply completes them."""
    return {
        "status": "completed",
        "job_id": job.id,
        "processed_at": isoformat_z(SystemClock().now()),
    }


class TaskRegistry:
    """Handlers by task name, plus the default handler for every other job."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self.default = Task("default", complete_any_job)
        # By task name, in the order they were registered.
        self.schedules: dict[str, Schedule] = {}

    def task(
        self,
        name: str,
        *,
        timeout: float | None = None,
        cron: str | None = None,
        timezone: str = "UTC",
        payload: dict[str, Any] | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function (sync or async, taking the Job) for task `name`.

        With `cron`, a job of this task (`payload` plus its name as "task", in `queue` at
        `priority`) is also enqueued at every tick of the expression, read in `timezone`.
        """
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout of task {name!r} must be positive, got {timeout}")
        schedule = None
        if cron is not None:
            job = NewJob(payload={**(payload or {}), "task": name}, queue=queue, priority=priority)
            schedule = Schedule(name, cron, job, timezone)
        elif payload is not None or queue != DEFAULT_QUEUE or priority or timezone != "UTC":
            raise ValueError(f"task {name!r}: payload, queue, priority and timezone need cron")

        def register(handler: Handler) -> Handler:
            if name in self._tasks:
                raise ValueError(f"task {name!r} is already registered")
            self._tasks[name] = Task(name, handler, timeout)
            if schedule is not None:
                self.schedules[name] = schedule
            return handler

        return register

    def resolve(self, job: Job) -> Task:
        """The task that runs `job`: its own, or the default one."""
        name = job.task_name
        return self._tasks.get(name, self.default) if name is not None else self.default
