"""How long a failed job waits before its next attempt."""

import random
from datetime import datetime, timedelta


def backoff_seconds(attempt: int, base: float, cap: float, jitter: float = 0.1) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based): min(base * 2^(attempt-1), cap).

    Up to `jitter` of the delay (10% by default) is randomised, so jobs that failed together
    do not retry together; the result never exceeds `cap`.
    """
    delay = min(base * 2.0 ** min(attempt - 1, 64), cap)
    return delay * (1 - jitter * random.random())


def next_attempt_at(
    now: datetime, attempt: int, base: float, cap: float, max_attempts: int
) -> datetime | None:
    """When the job may run again after failed attempt `attempt`; None when out of attempts."""
    if attempt >= max_attempts:
        return None
    return now + timedelta(seconds=backoff_seconds(attempt, base, cap))
