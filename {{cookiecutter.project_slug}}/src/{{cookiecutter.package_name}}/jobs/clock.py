"""The one source of time for the engine and the stores, so tests can control it."""

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


def isoformat_z(moment: datetime) -> str:
    """Render a UTC moment as ISO 8601 with microseconds and a trailing `Z`."""
    # isoformat, not strftime: it always writes four year digits (strftime writes the year 1
    # as "1"). "+00:00" becomes "Z".
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"
