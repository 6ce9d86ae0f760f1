"""Alembic's environment: how migrations reach the database.

The store passes the connection it migrates on (Alembic's "sharing a connection" recipe),
already in a transaction that holds the schema lock. From the alembic command line, the
database is DATABASE_URL's, reached the same way under the same lock.
"""

import asyncio
import logging
import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from {{ cookiecutter.package_name }}.jobs import model  # noqa: F401  (declares the tables)
from {{ cookiecutter.package_name }}.jobs.store.postgres_migrations import run_locked

# Tables of the store's own that no model declares: autogenerate must not drop them.
UNMODELLED_TABLES = frozenset({"job_counts"})


def include_name(name: str | None, type_: str, _parents: object) -> bool:
    return not (type_ == "table" and name in UNMODELLED_TABLES)


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        include_name=include_name,
        compare_server_default=True,
    )
    # Inside the caller's transaction, this begins nothing.
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    if context.is_offline_mode():
        raise SystemExit("these migrations run against a database; --sql is not supported")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dsn = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://", 1)
    asyncio.run(run_locked(dsn, run_migrations))


main()
