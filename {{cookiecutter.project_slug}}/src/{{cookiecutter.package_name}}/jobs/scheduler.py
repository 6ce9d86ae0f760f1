"""The scheduler: each schedule's job is enqueued at its ticks, once per tick across instances.

Every process that runs workers runs one. No leader is elected: each instance tries every
tick, and the store records a tick with its job in one transaction under a unique key
(schedule, tick), so one instance inserts the job and the others find the tick taken. A
stale leader or two hosts with the same name cannot run a tick twice.

At start-up, and once the store answers again after it did not, the ticks missed while no
instance ran (after the schedule's latest recorded tick, and after it became active) are
caught up: the latest of them, and every earlier one within the catch-up window.
"""

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from ..events import EventBus, JobEnqueued
from .clock import Clock, isoformat_z
from .cron import Schedule
from .store.base import JobStore, StoreUnavailable

logger = logging.getLogger(__name__)

# Seconds between attempts while the store cannot be reached.
RETRY_INTERVAL = 1.0
NEVER = datetime.min.replace(tzinfo=UTC)


class Scheduler:
    """Enqueues the jobs of `schedules` on `store` as their ticks come."""

    def __init__(
        self,
        store: JobStore,
        schedules: Sequence[Schedule],
        clock: Clock,
        events: EventBus,
        *,
        catch_up: timedelta = timedelta(0),
    ) -> None:
        self._store = store
        self._schedules = schedules
        self._clock = clock
        self._events = events
        self._catch_up = catch_up
        # Each schedule's next tick to enqueue, by name.
        self._next: dict[str, datetime] = {}

    async def run(self) -> None:
        """Catch up, then enqueue every tick as it comes, until cancelled."""
        while True:
            try:
                await self.catch_up()
                while True:
                    wait = self.next_tick_at() - self._clock.now()
                    await asyncio.sleep(max(wait.total_seconds(), 0))
                    await self.enqueue_due_ticks()
            except StoreUnavailable as exc:
                logger.warning("Schedules wait for the job store: %s", exc)
            except Exception:
                # Whatever went wrong, the schedules go on: the next round catches up.
                logger.exception("Schedules failed; trying again")
            await asyncio.sleep(RETRY_INTERVAL)

    async def catch_up(self) -> None:
        """Enqueue the ticks missed while no instance ran; plan the next ones from now."""
        now = self._clock.now()
        await self._store.add_schedules([schedule.name for schedule in self._schedules])
        states = {state.name: state for state in await self._store.list_schedules()}
        for schedule in self._schedules:
            state = states.get(schedule.name)
            missed_after = now
            if state is not None:
                missed_after = max(state.active_since, state.last_tick or NEVER)
            latest = schedule.latest_tick(now)
            if latest > missed_after:
                window_start = max(missed_after, now - self._catch_up)
                for tick in list(schedule.ticks_between(window_start, now)) or [latest]:
                    await self._enqueue(schedule, tick)
            self._next[schedule.name] = schedule.next_tick(now)

    async def enqueue_due_ticks(self) -> None:
        """Enqueue every planned tick that is due now (all of them, if several came)."""
        now = self._clock.now()
        for schedule in self._schedules:
            while (tick := self._next[schedule.name]) <= now:
                await self._enqueue(schedule, tick)
                self._next[schedule.name] = schedule.next_tick(tick)

    def next_tick_at(self) -> datetime:
        """When the next planned tick is due."""
        return min(self._next.values())

    async def _enqueue(self, schedule: Schedule, tick: datetime) -> None:
        job = await self._store.enqueue_tick(schedule.name, tick, schedule.job_at(tick))
        if job is not None:
            logger.info(
                "Schedule %s enqueued job %d for %s", schedule.name, job.id, isoformat_z(tick)
            )
            self._events.emit(JobEnqueued(job, schedule.name))
