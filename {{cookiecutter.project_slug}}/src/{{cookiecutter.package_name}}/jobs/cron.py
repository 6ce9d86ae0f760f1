"""Schedules: a task declared with `cron=` gets one job at every tick of its expression.

Expressions are croniter's: five fields (minute hour day month weekday), six with seconds
first (`*/10 * * * * *`, as in Quartz and Spring), or an alias such as `@daily`. Ticks are
read in the schedule's time zone (UTC unless one is given) and kept as UTC moments.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from .model import NewJob

# croniter's precision: a moment this much later than a tick is past it.
RESOLUTION = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Schedule:
    """Task `name`'s recurring job: `job` at every tick of `cron`, read in `timezone`."""

    name: str
    cron: str
    job: NewJob
    timezone: str = "UTC"
    _zone: tzinfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = self.cron.split()
        aliased = len(fields) == 1 and fields[0].startswith("@")
        if not (aliased or len(fields) in (5, 6)) or not croniter.is_valid(
            self.cron, second_at_beginning=True
        ):
            raise ValueError(
                f"cron of task {self.name!r}: {self.cron!r} is not a cron expression"
                " (5 fields, 6 with seconds first, or an alias such as @daily)"
            )
        try:
            zone = UTC if self.timezone == "UTC" else ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"timezone of task {self.name!r}: {self.timezone!r} is not a time zone name"
            ) from None
        object.__setattr__(self, "_zone", zone)
        try:
            self.next_tick(datetime.now(UTC))
        except CroniterError:
            raise ValueError(f"cron of task {self.name!r}: {self.cron!r} never ticks") from None

    def next_tick(self, after: datetime) -> datetime:
        """The first tick later than `after`."""
        return self._ticks(after).get_next(datetime).astimezone(UTC)

    def latest_tick(self, at: datetime) -> datetime:
        """The last tick at or before `at`."""
        return self._ticks(at + RESOLUTION).get_prev(datetime).astimezone(UTC)

    def ticks_between(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """Every tick later than `after` and no later than `until`, in order."""
        tick = self.next_tick(after)
        while tick <= until:
            yield tick
            tick = self.next_tick(tick)

    def job_at(self, tick: datetime) -> NewJob:
        """The job for `tick`: due at the tick itself."""
        return self.job.model_copy(update={"run_at": tick})

    def _ticks(self, start: datetime) -> croniter:
        return croniter(self.cron, start.astimezone(self._zone), second_at_beginning=True)
