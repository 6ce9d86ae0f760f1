"""Retention: finished jobs are deleted once they are older than their status is kept for."""

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import timedelta

from .clock import Clock
from .model import JobStatus
from .store.base import JobStore, StoreUnavailable

logger = logging.getLogger(__name__)

# Rows per delete statement: each is a short transaction, so claims and inserts go on
# between them however many jobs have expired.
BATCH_SIZE = 2_000


async def delete_expired_jobs(
    store: JobStore, retention: Mapping[JobStatus, timedelta], clock: Clock
) -> int:
    """Delete every job that finished longer ago than `retention` keeps its status; return
    how many. Stops early when another instance is deleting (the store then deletes none)."""
    deleted = 0
    for status, kept_for in retention.items():
        finished_before = clock.now() - kept_for
        while True:
            started = time.monotonic()
            batch = await store.delete_finished_jobs(status, finished_before, BATCH_SIZE)
            deleted += batch
            if batch < BATCH_SIZE:
                break
            # Wait as long as the batch took: catching up on a backlog takes at most half of
            # the store's time, and of the event loop's where the store works on it (a bare
            # yield let such deletes starve the engine).
            await asyncio.sleep(time.monotonic() - started)
    return deleted


async def keep_deleting_expired_jobs(
    store: JobStore, retention: Mapping[JobStatus, timedelta], clock: Clock, interval: float
) -> None:
    """Run `delete_expired_jobs` every `interval` seconds, until cancelled."""
    while True:
        try:
            if deleted := await delete_expired_jobs(store, retention, clock):
                logger.info("Deleted %d finished jobs past their retention", deleted)
        except StoreUnavailable as exc:
            logger.warning("Could not delete finished jobs past their retention: %s", exc)
        await asyncio.sleep(interval)
