"""The PostgreSQL store's schema as Alembic migrations: versions/ holds one file per change.

The store runs them when it opens (`upgrade`), and the version reached is kept in the
database's `alembic_version` table. To write a new revision against a database, with
this directory's alembic.ini:

    export DATABASE_URL=postgresql://...
    alembic -c src/{{ cookiecutter.package_name }}/jobs/store/postgres_migrations/alembic.ini \\
        revision --autogenerate --rev-id 0003 -m "what changes"

Connections are made by asyncpg from the service's own DATABASE_URL, exactly as the store
makes its own, and handed to SQLAlchemy's asyncio engine: its asyncpg dialect would pass a
URL's query parameters (`?search_path=...`) to asyncpg as keyword arguments, which asyncpg
refuses, where asyncpg parsing the URL itself takes them as server settings.
"""

from collections.abc import Callable
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

SCRIPT_LOCATION = Path(__file__).resolve().parent
# Any fixed number: instances starting together take turns migrating; the ones that wait
# find the work done.
SCHEMA_LOCK = 7_310_114_420


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for these migrations, on `connection` when one is given."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revisions() -> set[str]:
    """The newest revision(s) the migrations lead to."""
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


async def upgrade(dsn: str) -> None:
    """Bring the database to the newest revision, holding the schema lock meanwhile."""
    await run_locked(dsn, lambda connection: command.upgrade(alembic_config(connection), "head"))


async def run_locked(dsn: str, run: Callable[[Connection], None]) -> None:
    """Call `run` with a connection whose transaction holds the schema lock; commit after.

    One transaction for all of it: PostgreSQL's DDL is transactional, so a migration that
    fails leaves the schema and `alembic_version` as they were.
    """
    engine = create_async_engine(
        "postgresql+asyncpg://",
        async_creator=lambda: asyncpg.connect(dsn),
        poolclass=pool.NullPool,
    )
    try:
        async with engine.connect() as connection:
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK}
            )
            await connection.run_sync(run)
            await connection.commit()
    finally:
        await engine.dispose()
