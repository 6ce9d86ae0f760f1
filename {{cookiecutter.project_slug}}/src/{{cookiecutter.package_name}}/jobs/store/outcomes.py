"""Counting the attempts that end, per minute, for recent_outcomes (the dashboard's chart).

A store counts in memory as outcomes are stored and, if it keeps jobs elsewhere, writes the
counts out every second or so: one small write a second, where a row per outcome would add
to the cost of every job.
"""

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta

from .base import MinuteOutcomes, StoreUnavailable, minute_of

COMPLETED = "completed"
FAILED = "failed"
# Seconds between writes of what was counted (by the stores that write them out).
WRITE_INTERVAL = 1.0
MINUTE = timedelta(minutes=1)

# (minute, outcome, how many): as counted, and as the tables keep them.
OutcomeCount = tuple[datetime, str, int]


class OutcomeTally:
    """Outcomes counted per minute and outcome."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[datetime, str]] = Counter()
        # The minute the latest outcome fell in: most fall in the same one as the last.
        self._minute = self._minute_end = datetime.min.replace(tzinfo=UTC)

    def add(self, at: datetime, outcome: str, n: int = 1) -> None:
        if not self._minute <= at < self._minute_end:
            self._minute = minute_of(at)
            self._minute_end = self._minute + MINUTE
        self._counts[self._minute, outcome] += n

    def take(self) -> list[OutcomeCount]:
        """Everything counted so far, which the tally then forgets."""
        taken = [(minute, outcome, n) for (minute, outcome), n in self._counts.items()]
        self._counts.clear()
        return taken

    def put_back(self, taken: Iterable[OutcomeCount]) -> None:
        """Count again what `take` returned and could not be written: the next write has it."""
        for minute, outcome, n in taken:
            self._counts[minute, outcome] += n

    async def write_out(self, write: Callable[[list[OutcomeCount]], Awaitable[None]]) -> None:
        """Hand what was counted to `write`, if anything; kept for the next time if the store
        cannot take it (StoreUnavailable, raised on)."""
        counted = self.take()
        if not counted:
            return
        try:
            await write(counted)
        except StoreUnavailable:
            self.put_back(counted)
            raise

    def since(self, start: datetime) -> list[MinuteOutcomes]:
        """What was counted from `start`'s minute on, as recent_outcomes returns it."""
        first = minute_of(start)
        return by_minute(
            (minute, outcome, n) for (minute, outcome), n in self._counts.items() if minute >= first
        )

    def forget_before(self, moment: datetime) -> None:
        for minute, outcome in [key for key in self._counts if key[0] < moment]:
            del self._counts[minute, outcome]


def by_minute(counts: Iterable[OutcomeCount]) -> list[MinuteOutcomes]:
    """Counts by minute and outcome as one MinuteOutcomes per minute, oldest first."""
    minutes: dict[datetime, dict[str, int]] = {}
    for minute, outcome, n in counts:
        of_minute = minutes.setdefault(minute, {COMPLETED: 0, FAILED: 0})
        of_minute[outcome] = of_minute.get(outcome, 0) + n
    return [
        MinuteOutcomes(minute, of_minute[COMPLETED], of_minute[FAILED])
        for minute, of_minute in sorted(minutes.items())
    ]
