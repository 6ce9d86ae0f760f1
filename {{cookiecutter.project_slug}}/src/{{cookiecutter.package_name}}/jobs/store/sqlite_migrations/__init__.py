"""The SQLite job store's schema, as Alembic migrations (versions/, oldest first).

The store brings a database up to date when it opens (`upgrade`), on its own connection and
inside a transaction that holds the file's write lock, so processes starting together take
turns and the second finds nothing left to do. Alembic records the version in
`alembic_version`. A change to the tables in jobs/model.py needs a new revision here:
`tests/test_sqlite_store.py` checks that the migrated schema is what the model declares.
"""

import sqlite3
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

SCRIPT_LOCATION = Path(__file__).parent
# Tables the migrations keep that the model does not declare, because only SQL uses them.
UNMODELLED_TABLES = frozenset({"job_counts"})


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """What autogenerate compares with the model: all but the tables only SQL uses."""
    return not (type_ == "table" and name in UNMODELLED_TABLES)


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for these migrations, run on `connection` when given."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@cache
def head() -> str:
    """The newest revision."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None, "sqlite_migrations/versions holds no revision"
    return revision


def is_up_to_date(conn: sqlite3.Connection) -> bool:
    """Whether the database is at the newest revision; a plain read, no lock taken."""
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:  # no such table: never migrated
        return False
    return row is not None and row[0] == head()


def upgrade(connection: Connection) -> None:
    """Run every migration the database lacks, inside `connection`'s open transaction."""
    command.upgrade(alembic_config(connection), "head")
