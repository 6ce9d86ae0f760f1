"""Your tasks live here.

A job runs the handler registered under its `payload["task"]`; jobs whose task has no handler
are completed by the default handler. A handler takes the Job (use `job.payload`, `job.id`,
`job.attempt`) and returns a JSON-serialisable result, which is stored on the job. Raise to
fail the attempt: the job is retried with exponential backoff until `max_attempts` is spent.
Async handlers run on the event loop; plain functions run in a thread of their own, so they
may block. A cancel (POST /jobs/{id}/cancel) cancels an async handler; a long plain function
should look at `job.cancel_requested` now and then and return early.

    @registry.task("send_email", timeout=30)
    def send_email(job: Job) -> dict[str, str]:
        smtp.send(job.payload["recipient"], ...)
        return {"sent_to": job.payload["recipient"]}

With `cron=`, the task also gets a job at every tick (README, "Recurring jobs"); `job.run_at`
is the tick:

    @registry.task("nightly_report", cron="0 3 * * *", timezone="Europe/Paris")
    async def nightly_report(job: Job) -> None:
        await build_report(for_day=job.run_at.date())

The two demo tasks below show the shape; delete them when you no longer need them.
"""

import asyncio
from typing import Any

from .model import Job
from .registry import TaskRegistry

registry = TaskRegistry()


@registry.task("sleep")
async def sleep(job: Job) -> dict[str, Any]:
    """Wait `payload["seconds"]` (default 1), then complete."""
    seconds = job.payload.get("seconds", 1)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise ValueError(f"'seconds' must be a non-negative number, got {seconds!r}")
    await asyncio.sleep(seconds)
    return {"status": "completed", "slept_seconds": seconds}


@registry.task("fail")
def fail(_job: Job) -> None:
    """Always fail, to show retries and backoff."""
    raise RuntimeError("task 'fail' always fails")
