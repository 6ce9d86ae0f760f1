"""Backoff before a retry: exponential, capped, jittered downwards only."""

import random
from datetime import timedelta

import pytest

from {{ cookiecutter.package_name }}.jobs.backoff import backoff_seconds, next_attempt_at

from .conftest import START


@pytest.fixture
def no_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "random", lambda: 0.0)


@pytest.fixture
def most_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "random", lambda: 0.999999)


@pytest.mark.usefixtures("no_jitter")
@pytest.mark.parametrize(("attempt", "expected"), [(1, 2.0), (2, 4.0), (3, 8.0), (8, 256.0)])
def test_backoff_doubles_with_each_attempt(attempt: int, expected: float) -> None:
    assert backoff_seconds(attempt, base=2.0, cap=1000.0) == expected


@pytest.mark.usefixtures("no_jitter")
@pytest.mark.parametrize("attempt", [10, 11, 64, 65, 1000, 10**9])
def test_backoff_never_exceeds_the_cap(attempt: int) -> None:
    assert backoff_seconds(attempt, base=1.0, cap=300.0) == 300.0


@pytest.mark.usefixtures("most_jitter")
def test_jitter_takes_at_most_its_share_off_the_delay() -> None:
    assert backoff_seconds(3, base=1.0, cap=300.0) == pytest.approx(4 * 0.9, rel=1e-5)
    assert backoff_seconds(3, base=1.0, cap=300.0, jitter=0.5) == pytest.approx(2.0, rel=1e-5)
    assert backoff_seconds(50, base=1.0, cap=300.0) == pytest.approx(270.0, rel=1e-5)


def test_jittered_backoff_stays_within_its_bounds() -> None:
    for attempt in range(1, 12):
        delay = min(0.5 * 2 ** (attempt - 1), 100.0)
        for _ in range(50):
            assert delay * 0.9 <= backoff_seconds(attempt, base=0.5, cap=100.0) <= delay


def test_jitter_spreads_retries_of_jobs_that_failed_together() -> None:
    delays = {backoff_seconds(4, base=1.0, cap=300.0) for _ in range(20)}
    assert len(delays) > 1


@pytest.mark.usefixtures("no_jitter")
def test_next_attempt_at_is_now_plus_the_backoff() -> None:
    assert next_attempt_at(START, 1, 10.0, 300.0, max_attempts=3) == START + timedelta(seconds=10)
    assert next_attempt_at(START, 2, 10.0, 300.0, max_attempts=3) == START + timedelta(seconds=20)


@pytest.mark.parametrize(("attempt", "max_attempts"), [(3, 3), (1, 1), (5, 3)])
def test_next_attempt_at_is_none_when_the_attempts_are_spent(
    attempt: int, max_attempts: int
) -> None:
    assert next_attempt_at(START, attempt, 10.0, 300.0, max_attempts) is None
