"""The job-store protocol: every state transition of a job is one verb-named operation.

Nothing outside a store knows how jobs are kept, so stores are swappable and one contract test
suite (tests/test_store_contract.py) holds every store to the same behaviour.
"""

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from ..model import Job, JobStatus, NewJob


class StoreUnavailable(Exception):
    """The store cannot be reached or cannot do its work right now."""


class JobStore(Protocol):
    async def open(self) -> None:
        """Connect and create the schema if needed; safe to call on an existing store."""

    async def close(self) -> None:
        """Finish pending writes and release connections."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    def subscribe(self, on_new_jobs: Callable[[], None]) -> None:
        """Call `on_new_jobs` (from the event loop) whenever inserted jobs may have become due."""

    async def insert_job(self, new_job: NewJob) -> Job:
        """Insert one queued job, durably, and return it with its id."""

    async def insert_all_jobs(self, new_jobs: Sequence[NewJob]) -> list[Job]:
        """Insert many queued jobs in one transaction, in order."""

    async def fetch_jobs(self, limit: int) -> list[Job]:
        """Claim up to `limit` due jobs, oldest run_at (then id) first: queued -> running."""

    async def complete_job(self, job: Job, result: Any) -> None:
        """Record a successful attempt: running -> done, with its result."""

    async def error_job(self, job: Job, error: str, retry_at: datetime | None) -> None:
        """Record a failed attempt: back to queued at `retry_at`, or failed when it is None."""

    async def release_jobs(self, jobs: Sequence[Job]) -> None:
        """Return running jobs to queued without spending their attempt (graceful shutdown)."""

    async def rescue_orphaned_jobs(self) -> int:
        """Requeue (or fail, when out of attempts) jobs whose worker died; return how many."""

    async def next_run_at(self) -> datetime | None:
        """The earliest run_at among queued jobs, or None when nothing is queued."""

    async def get_job(self, job_id: int) -> Job | None:
        """One job by id."""

    async def list_jobs(self, status: JobStatus | None, limit: int, offset: int) -> list[Job]:
        """Jobs newest first (inserted_at, then id, descending), optionally of one status."""

    async def count_jobs(self) -> dict[JobStatus, int]:
        """How many jobs there are in each status."""
