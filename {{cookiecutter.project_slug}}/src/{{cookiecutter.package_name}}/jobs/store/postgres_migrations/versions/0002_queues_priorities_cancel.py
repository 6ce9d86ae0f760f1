"""Queues, priorities, unique keys and cancel.

Their columns and indexes, the queues table, and finished jobs counted per queue, cancelled
ones too.

Every existing job keeps its fields and gets the defaults: queue `default`, priority 0, no
unique key, no cancel asked for.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A column added with a constant default costs no rewrite of the table, however many jobs
# it holds: existing rows read the default from the catalog. Dropping the default then
# leaves those rows as they are, and new rows get their values from the store, as the
# model declares. claim_at only matters while a job is queued, so the finished jobs keep
# -infinity and only queued and running ones (a few, on any table) are written.
UPGRADE = (
    "ALTER TABLE jobs"
    " ADD COLUMN queue VARCHAR(64) NOT NULL DEFAULT 'default',"
    " ADD COLUMN priority INTEGER NOT NULL DEFAULT 0,"
    " ADD COLUMN unique_key VARCHAR(200),"
    " ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false,"
    " ADD COLUMN claim_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT '-infinity'",
    "ALTER TABLE jobs"
    " ALTER COLUMN queue DROP DEFAULT,"
    " ALTER COLUMN priority DROP DEFAULT,"
    " ALTER COLUMN cancel_requested DROP DEFAULT,"
    " ALTER COLUMN claim_at DROP DEFAULT",
    "UPDATE jobs SET claim_at = run_at WHERE status IN ('queued', 'running')",
    # Claims now go in claim_at order, in every queue or in one.
    "DROP INDEX ix_jobs_due",
    "CREATE INDEX ix_jobs_due ON jobs (claim_at, id) WHERE status = 'queued'",
    "CREATE INDEX ix_jobs_queue_due ON jobs (queue, claim_at, id) WHERE status = 'queued'",
    "CREATE UNIQUE INDEX ix_jobs_unique_key ON jobs (unique_key)"
    " WHERE unique_key IS NOT NULL AND status IN ('queued', 'running')",
    "CREATE INDEX ix_jobs_queue_newest ON jobs (queue, inserted_at, id)",
    # The task gets a column: PostgreSQL's JSON operators fail on a payload holding "\u0000",
    # so rows with one are left NULL (CASE decides before any operator reads the payload).
    "ALTER TABLE jobs ADD COLUMN task VARCHAR",
    "UPDATE jobs SET task = CASE WHEN strpos(payload::text, '\\u0000') = 0"
    " AND json_typeof(payload -> 'task') = 'string' THEN payload ->> 'task' END"
    " WHERE strpos(payload::text, '\\u0000') = 0",
    "CREATE INDEX ix_jobs_task_newest ON jobs (task, inserted_at, id)",
    "CREATE TABLE queues (name VARCHAR(64) NOT NULL, paused BOOLEAN NOT NULL, PRIMARY KEY (name))",
    # The finished jobs counted so far were all in the default queue.
    "ALTER TABLE job_counts ADD COLUMN queue VARCHAR(64) NOT NULL DEFAULT 'default'",
    "ALTER TABLE job_counts ALTER COLUMN queue DROP DEFAULT",
)
DOWNGRADE = (
    # Cancelled jobs had no status before; they are counted as failed ones were.
    "UPDATE jobs SET status = 'failed' WHERE status = 'cancelled'",
    "UPDATE job_counts SET status = 'failed' WHERE status = 'cancelled'",
    "ALTER TABLE job_counts DROP COLUMN queue",
    "DROP TABLE queues",
    "DROP INDEX ix_jobs_task_newest",
    "DROP INDEX ix_jobs_queue_newest",
    "DROP INDEX ix_jobs_unique_key",
    "DROP INDEX ix_jobs_queue_due",
    "DROP INDEX ix_jobs_due",
    "CREATE INDEX ix_jobs_due ON jobs (run_at, id) WHERE status = 'queued'",
    "ALTER TABLE jobs DROP COLUMN queue, DROP COLUMN priority, DROP COLUMN unique_key,"
    " DROP COLUMN cancel_requested, DROP COLUMN claim_at, DROP COLUMN task",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
