"""A PostgreSQL database of its own for each render's test suite.

The template tests run in parallel (pytest-xdist), so two PostgreSQL renders may run their
suites at once. Schemas keep their tables apart, but not what is database-wide: NOTIFY
channels and the LISTENing connections the suites count and terminate. A database each
keeps those apart too.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

# Where a render's suite looks when neither variable is set (its tests/conftest.py).
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# What reaching the server can raise: refused connections, timeouts, server errors.
UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresError)


@contextmanager
def suite_environment(job_store: str) -> Iterator[dict[str, str]]:
    """What a render's suite adds to its environment: for PostgreSQL, a database of its own."""
    if job_store != "postgres":
        yield {}
        return
    server_url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    with database_of_its_own(server_url or DEFAULT_URL) as database_url:
        yield {"TEST_DATABASE_URL": database_url}


@contextmanager
def database_of_its_own(server_url: str) -> Iterator[str]:
    """The URL of a new database on `server_url`'s server, dropped afterwards.

    When the server cannot be reached, `server_url` itself: the suite then skips its
    PostgreSQL tests with its own loud reason (or fails them under REQUIRE_POSTGRES=1).
    """
    name = f"render_suite_{uuid.uuid4().hex[:12]}"
    try:
        run_sql(server_url, f"CREATE DATABASE {name}")
    except UNREACHABLE:
        created = False
    else:
        created = True
    if not created:
        yield server_url
        return
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        # FORCE: a service process the suite started and a failure left running may hold on.
        run_sql(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run_sql(url: str, statement: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())
