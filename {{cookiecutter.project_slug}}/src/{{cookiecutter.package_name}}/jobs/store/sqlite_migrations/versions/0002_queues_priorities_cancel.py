"""Queues, priorities, unique keys and cancel: new columns, indexes, `queues`, counts per queue.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

Every job is kept with every field: existing jobs are in the default queue at priority 0,
with no unique key and no cancel asked for. ADD COLUMN with a constant default rewrites no
row, so at a million jobs the new indexes are most of the time this takes.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = [
    "ALTER TABLE jobs ADD COLUMN queue VARCHAR(64) NOT NULL DEFAULT 'default'",
    "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN unique_key VARCHAR(200)",
    "ALTER TABLE jobs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT 0",
    # SQLite adds a NOT NULL column only with a constant default. claim_at matters only
    # while a job is queued, and the store sets it whenever a job becomes queued, so only
    # queued and running jobs need theirs now: run_at, since they all have priority 0.
    "ALTER TABLE jobs ADD COLUMN claim_at DATETIME NOT NULL DEFAULT '1970-01-01 00:00:00.000000'",
    "UPDATE jobs SET claim_at = run_at WHERE status IN ('queued', 'running')",
]
# As jobs/model.py declares them: the claims index replaces the one by run_at, and the
# listing by queue and status the one by status.
INDEXES = [
    "DROP INDEX ix_jobs_due",
    "DROP INDEX ix_jobs_status_newest",
    "CREATE INDEX ix_jobs_queue_due ON jobs (queue, priority, claim_at, id)"
    " WHERE status = 'queued'",
    "CREATE UNIQUE INDEX ix_jobs_unique_key ON jobs (unique_key)"
    " WHERE unique_key IS NOT NULL AND status IN ('queued', 'running')",
    "CREATE INDEX ix_jobs_queue_newest ON jobs (queue, status, inserted_at, id)",
    "CREATE INDEX ix_jobs_task_newest ON jobs"
    " (json_extract(payload, '$.task'), queue, inserted_at, id)",
]
QUEUES = [
    """CREATE TABLE queues (
        name VARCHAR(64) NOT NULL,
        paused BOOLEAN NOT NULL,
        PRIMARY KEY (name)
    )""",
]
# Counts per queue, status and priority, kept by triggers: /stats and /queues sum a few
# rows however many jobs there are, and claims read which queues and priorities have
# queued jobs from here. The old counts are exact and every job is in the default queue
# at priority 0, so they carry over as they are.
COUNTS = [
    "DROP TRIGGER jobs_count_insert",
    "DROP TRIGGER jobs_count_update",
    "DROP TRIGGER jobs_count_delete",
    "ALTER TABLE job_counts RENAME TO job_counts_0001",
    """CREATE TABLE job_counts (
        queue VARCHAR(64) NOT NULL,
        status VARCHAR(16) NOT NULL,
        priority INTEGER NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (queue, status, priority)
    ) WITHOUT ROWID""",
    "INSERT INTO job_counts SELECT 'default', status, 0, n FROM job_counts_0001 WHERE n <> 0",
    "DROP TABLE job_counts_0001",
    """CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_counts VALUES (NEW.queue, NEW.status, NEW.priority, 1)
            ON CONFLICT (queue, status, priority) DO UPDATE SET n = n + 1; END""",
    """CREATE TRIGGER jobs_count_update AFTER UPDATE OF status, queue, priority ON jobs
        WHEN OLD.status <> NEW.status OR OLD.queue <> NEW.queue OR OLD.priority <> NEW.priority
        BEGIN
        UPDATE job_counts SET n = n - 1
            WHERE queue = OLD.queue AND status = OLD.status AND priority = OLD.priority;
        INSERT INTO job_counts VALUES (NEW.queue, NEW.status, NEW.priority, 1)
            ON CONFLICT (queue, status, priority) DO UPDATE SET n = n + 1; END""",
    """CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_counts SET n = n - 1
            WHERE queue = OLD.queue AND status = OLD.status AND priority = OLD.priority; END""",
]


def upgrade() -> None:
    for statement in [*COLUMNS, *INDEXES, *QUEUES, *COUNTS]:
        op.execute(statement)


def downgrade() -> None:
    # The previous schema has no place for cancelled jobs, queues or priorities.
    raise NotImplementedError("restore a backup taken before the upgrade instead")
