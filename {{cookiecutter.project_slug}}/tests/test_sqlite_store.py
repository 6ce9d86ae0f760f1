"""The SQLite file shared with another connection: writes wait their turn, the loop never does."""

import asyncio
import sqlite3
import threading
import time

import pytest

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.jobs.store import sqlite as sqlite_store
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import serve

HOLD_SECONDS = 2.0


class WriteLockHolder(threading.Thread):
    """Another connection to the same file that holds its write lock for a while."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.locked = threading.Event()
        self.released_at: float | None = None

    def run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            self.locked.set()
            time.sleep(HOLD_SECONDS)
            self.released_at = time.monotonic()
            conn.execute("COMMIT")
        finally:
            conn.close()


async def test_health_answers_while_another_connection_holds_the_write_lock(
    settings: Settings,
) -> None:
    app = create_app(settings)
    async with serve(app) as client:
        holder = WriteLockHolder(settings.database_url.removeprefix("sqlite:///"))
        holder.start()
        assert await asyncio.to_thread(holder.locked.wait, 5)
        posts = [
            asyncio.create_task(client.post("/jobs", json={"payload": {"n": n}})) for n in range(20)
        ]
        await asyncio.sleep(0.05)  # the inserts are waiting for the lock by now

        health = await client.get("/health")
        answered_at = time.monotonic()

        # Had the waiting inserts blocked the event loop, nothing could answer before the
        # lock was released.
        assert health.status_code == 200, health.text
        assert holder.released_at is None or answered_at < holder.released_at
        responses = await asyncio.gather(*posts)
        await asyncio.to_thread(holder.join)
        assert [response.status_code for response in responses] == [202] * len(posts)
        for response in responses:
            job = await client.get(f"/jobs/{response.json()['job_id']}")
            assert job.status_code == 200
        stats = (await client.get("/stats")).json()
        assert stats["total"] == len(posts)


async def test_a_write_lock_held_past_the_timeout_is_a_503_not_a_hang(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shorter than the lock is held: the insert gives up, and says so.
    monkeypatch.setattr(sqlite_store, "LOCK_TIMEOUT", 0.2)
    app = create_app(settings)
    async with serve(app) as client:
        await app.state.engine.stop(0)
        holder = WriteLockHolder(settings.database_url.removeprefix("sqlite:///"))
        holder.start()
        assert await asyncio.to_thread(holder.locked.wait, 5)

        response = await client.post("/jobs", json={"payload": {}})
        await asyncio.to_thread(holder.join)

        assert response.status_code == 503
        assert response.json() == {"error": "Job store unavailable"}
        assert (await client.get("/stats")).json()["total"] == 0
