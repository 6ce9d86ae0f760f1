"""Shared fixtures: a clock tests control, the job store, settings, and the app over HTTP.

Everything that depends on which job store this project was generated with lives in the
`store_settings` and `service_env` fixtures below; every other test works against any store.
"""

import asyncio
import inspect
import os
import signal
import socket
import subprocess
import time
{%- if cookiecutter.job_store == "postgres" %}
import uuid
{%- endif %}
from collections.abc import AsyncIterator, Awaitable, Callable{% if cookiecutter.job_store == "postgres" %}, Iterator{% endif %}, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

{% if cookiecutter.job_store == "postgres" -%}
import asyncpg
{% endif -%}
import httpx
import pytest
from fastapi import FastAPI

import {{ cookiecutter.package_name }}
from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.jobs.clock import Clock
from {{ cookiecutter.package_name }}.jobs.model import Job
from {{ cookiecutter.package_name }}.jobs.store import JobStore, NewJob, make_store
from {{ cookiecutter.package_name }}.settings import Settings

START = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

SettingsFactory = Callable[..., Settings]
StoreOpener = Callable[[Clock], Awaitable[JobStore]]


class ManualClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, start: datetime = START) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        """Move time forward by `seconds` and return the new moment."""
        self._now += timedelta(seconds=seconds)
        return self._now


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10.0,
    message: str = "condition",
) -> None:
    """Poll `predicate` (sync or async) until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = predicate()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {message}")
        await asyncio.sleep(0.01)


def poll_until(
    predicate: Callable[[], bool], timeout: float = 10.0, message: str = "condition"
) -> None:
    """`wait_until` for tests without an event loop (real processes)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {message}")
        time.sleep(0.02)


def stop(process: "subprocess.Popen[bytes]") -> None:
    """End a child process if it still runs: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def enqueue(store: JobStore, new_job: NewJob) -> Job:
    """Insert a job the store must create, and return it."""
    job, created = await store.insert_job(new_job)
    assert created
    return job


async def enqueue_all(store: JobStore, new_jobs: Sequence[NewJob]) -> list[Job]:
    """Insert jobs the store must all create, in one transaction, and return them."""
    enqueued = await store.insert_all_jobs(new_jobs)
    assert all(created for _, created in enqueued)
    return [job for job, _ in enqueued]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- Store-specific part: where this project's store keeps its jobs during a test. ---


{%- if cookiecutter.job_store == "postgres" %}
# The server the tests use; each test gets a schema of its own in that database.
POSTGRES_URL = (
    os.environ.get("TEST_DATABASE_URL")
    or os.environ.get("DATABASE_URL")
    or "postgresql://postgres@127.0.0.1:5432/postgres"
)


def run_sql(url: str, *statements: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL; skips loudly when it is unreachable, unless REQUIRE_POSTGRES=1."""
    try:
        run_sql(POSTGRES_URL, "SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        reason = f"PostgreSQL unreachable at {POSTGRES_URL} ({exc}); set TEST_DATABASE_URL"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    return POSTGRES_URL


@pytest.fixture
def store_settings(postgres_url: str) -> Iterator[dict[str, Any]]:
    """Settings that point the job store at this test's own, empty schema."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    run_sql(postgres_url, f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in postgres_url else "?"
    yield {
        "database_url": f"{postgres_url}{separator}search_path={schema}",
        "database_connect_timeout": 5.0,
    }
    run_sql(postgres_url, f"DROP SCHEMA {schema} CASCADE")
{%- else %}


@pytest.fixture
def store_settings(tmp_path: Path) -> dict[str, Any]:
    """Settings that point the job store at this test's own, empty location."""
{%- if cookiecutter.job_store == "sqlite" %}
    return {"database_url": f"sqlite:///{tmp_path / 'jobs.db'}"}
{%- else %}
    return {}
{%- endif %}
{%- endif %}


@pytest.fixture
def service_env(store_settings: dict[str, Any]) -> dict[str, str]:
    """Environment for a `python -m` child process: this package importable, an empty store."""
    source_dir = Path({{ cookiecutter.package_name }}.__file__).resolve().parent.parent
    pythonpath = os.pathsep.join(filter(None, [str(source_dir), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PYTHONPATH": pythonpath,
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "info",
{%- if cookiecutter.job_store != "memory" %}
        "DATABASE_URL": store_settings["database_url"],
{%- endif %}
    }


# --- Everything below works the same for every store. ---


@pytest.fixture(autouse=True)
def hermetic_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting exported in the developer's shell leaks into a test or its child processes."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_settings(store_settings: dict[str, Any]) -> SettingsFactory:
    """`make_settings(**overrides)`: fast test settings on this test's store."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "worker_pool_size": 2,
            "retry_backoff_base": 0.01,
            "retry_backoff_max": 0.05,
            "shutdown_grace": 1.0,
            **store_settings,
            **overrides,
        }
        # Nor does a `.env` file in the working directory.
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


@pytest.fixture
async def open_store(settings: Settings) -> AsyncIterator[StoreOpener]:
    """`await open_store(clock)`: another store on this test's location, closed afterwards.

    Stores that outlive their process see each other's jobs; that is how the tests
    play "the process died and a new one started".
    """
    opened: list[JobStore] = []

    async def open_one(clock: Clock) -> JobStore:
        store = make_store(settings, clock)
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in reversed(opened):
        await store.close()


@pytest.fixture
async def store(open_store: StoreOpener, clock: ManualClock) -> JobStore:
    """The store this project was generated with, empty, on the manual clock."""
    return await open_store(clock)


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run `app`'s lifespan (store open, engine started) and talk to it in-process."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        yield client


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as client:
        yield client
