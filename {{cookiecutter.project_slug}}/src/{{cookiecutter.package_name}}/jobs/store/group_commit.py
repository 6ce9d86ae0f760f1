"""Group commit: the writes that queue up while one transaction commits share the next one.

A burst of requests then costs one commit instead of one each. Callers queue an item for a
batch function; a group runs every batch function once, with the items of all its callers,
inside one transaction, and each caller gets back the result for its own item.
"""

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

# Batch function -> the items queued for it; the commit returns one result per item.
Group = dict[Hashable, list[Any]]


class GroupCommitter:
    """Queues writes and hands them to `commit` in groups, one group at a time."""

    def __init__(self, commit: Callable[[Group], Awaitable[Group]]) -> None:
        self._commit = commit
        self._pending: dict[Hashable, list[tuple[Any, asyncio.Future[Any]]]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self.commits = 0

    async def write(self, batch: Hashable, item: Any) -> Any:
        """Queue `item` for `batch`; return its result once its transaction has committed."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(batch, []).append((item, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_until_idle())
        return await future

    async def drain(self) -> None:
        """Wait until every queued write has been committed (or has failed)."""
        if self._flusher is not None:
            await self._flusher

    async def _flush_until_idle(self) -> None:
        try:
            while self._pending:
                # Let every task that is ready to run queue its write first: they share a commit.
                await asyncio.sleep(0)
                waiting, self._pending = self._pending, {}
                group = {batch: [item for item, _ in queued] for batch, queued in waiting.items()}
                try:
                    results = await self._commit(group)
                except Exception as exc:
                    for queued in waiting.values():
                        for _, future in queued:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                self.commits += 1
                for batch, queued in waiting.items():
                    for (_, future), result in zip(queued, results[batch], strict=True):
                        if not future.done():
                            future.set_result(result)
        finally:
            self._flusher = None
