"""Baseline: the schema of the last release before migrations, and its start-up fixes.

Databases that release made have these tables and no `alembic_version`: every statement
here leaves them as they are (IF NOT EXISTS), apart from the fixes that release made by
hand at every start, kept here: ids widened to 64 bits, job_counts made and filled.

Revision ID: 0001
Revises:
"""

import logging
from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

logger = logging.getLogger(__name__)

# As that release's model compiled, written out: a migration never changes once released.
CREATE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs ("
    " id BIGSERIAL NOT NULL,"
    " payload JSON NOT NULL,"
    " status VARCHAR(16) NOT NULL,"
    " attempt INTEGER NOT NULL,"
    " max_attempts INTEGER NOT NULL,"
    " run_at TIMESTAMP WITH TIME ZONE NOT NULL,"
    " inserted_at TIMESTAMP WITH TIME ZONE NOT NULL,"
    " started_at TIMESTAMP WITH TIME ZONE,"
    " finished_at TIMESTAMP WITH TIME ZONE,"
    " result JSON,"
    " errors JSON NOT NULL,"
    " locked_by VARCHAR,"
    " lease_expires_at TIMESTAMP WITH TIME ZONE,"
    " PRIMARY KEY (id))",
    "CREATE INDEX IF NOT EXISTS ix_jobs_due ON jobs (run_at, id) WHERE status = 'queued'",
    "CREATE INDEX IF NOT EXISTS ix_jobs_leases ON jobs (lease_expires_at) WHERE status = 'running'",
    "CREATE INDEX IF NOT EXISTS ix_jobs_newest ON jobs (inserted_at, id)",
    "CREATE INDEX IF NOT EXISTS ix_jobs_status_newest ON jobs (status, inserted_at, id)",
)
# Tables made before ids were 64 bits hold integer ones, which run out at 2,147,483,647.
ID_TYPE = (
    "SELECT atttypid::regtype::text FROM pg_attribute"
    " WHERE attrelid = 'jobs'::regclass AND attname = 'id'"
)
ID_SEQUENCE = "SELECT pg_get_serial_sequence('jobs', 'id')"
# Finished jobs counted apart, so that counting never reads the jobs table (see the store).
COUNTS_TABLE = "CREATE TABLE job_counts (status text NOT NULL, n bigint NOT NULL)"
COUNT_EXISTING_FINISHED_JOBS = (
    "INSERT INTO job_counts (status, n) SELECT status, count(*) FROM jobs"
    " WHERE status IN ('done', 'failed') GROUP BY status"
)


def upgrade() -> None:
    for statement in CREATE_SCHEMA:
        op.execute(statement)
    connection = op.get_bind()
    if connection.scalar(text(ID_TYPE)) == "integer":
        widen_ids()
    if connection.scalar(text("SELECT to_regclass('job_counts')")) is None:
        op.execute(COUNTS_TABLE)
        op.execute(COUNT_EXISTING_FINISHED_JOBS)


def widen_ids() -> None:
    """Make a table's ids 64 bits: it is rewritten once, and other instances wait meanwhile."""
    connection = op.get_bind()
    rows = connection.scalar(text("SELECT count(*) FROM jobs"))
    logger.warning("Widening the jobs table's ids to 64 bits (%d jobs, done once)", rows)
    op.execute("ALTER TABLE jobs ALTER COLUMN id TYPE bigint")
    # The name comes from the database itself, quoted as SQL needs it; none if someone gave
    # the column another default, whose range is theirs to mind.
    sequence = connection.scalar(text(ID_SEQUENCE))
    if sequence is not None:
        op.execute(f"ALTER SEQUENCE {sequence} AS bigint")


def downgrade() -> None:
    # Before the baseline there is no schema to go back to, only every job to lose.
    raise NotImplementedError("the baseline is not undone: it would drop every job")
