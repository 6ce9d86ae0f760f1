"""Baseline: the schema releases before versioned migrations made at start-up.

Revision ID: 0001
Revises:
Create Date: 2026-12-03

Databases those releases made already have it, with no alembic_version: every statement is
written to be harmless then (IF NOT EXISTS), so they are stamped at this revision with their
jobs untouched. Older ones still lacked job_counts: it is made and filled from the jobs, as
those releases did at start-up.
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOBS = [
    """CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER NOT NULL,
        payload JSON NOT NULL,
        status VARCHAR(16) NOT NULL,
        attempt INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        run_at DATETIME NOT NULL,
        inserted_at DATETIME NOT NULL,
        started_at DATETIME,
        finished_at DATETIME,
        result JSON,
        errors JSON NOT NULL,
        PRIMARY KEY (id)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_jobs_due ON jobs (run_at, id) WHERE status = 'queued'",
    "CREATE INDEX IF NOT EXISTS ix_jobs_newest ON jobs (inserted_at, id)",
    "CREATE INDEX IF NOT EXISTS ix_jobs_status_newest ON jobs (status, inserted_at, id)",
]
# Triggers keep the counts exact, so /stats stays instant at millions of jobs.
COUNTS = [
    "CREATE TABLE job_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    "INSERT INTO job_counts VALUES ('queued', 0), ('running', 0), ('done', 0), ('failed', 0)",
    "UPDATE job_counts SET n = (SELECT count(*) FROM jobs WHERE jobs.status = job_counts.status)",
    """CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
        UPDATE job_counts SET n = n + 1 WHERE status = NEW.status; END""",
    """CREATE TRIGGER jobs_count_update AFTER UPDATE OF status ON jobs
        WHEN OLD.status <> NEW.status BEGIN
        UPDATE job_counts SET n = n - 1 WHERE status = OLD.status;
        UPDATE job_counts SET n = n + 1 WHERE status = NEW.status; END""",
    """CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_counts SET n = n - 1 WHERE status = OLD.status; END""",
]
HAS_COUNTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'job_counts'"


def upgrade() -> None:
    for statement in JOBS:
        op.execute(statement)
    if op.get_bind().execute(text(HAS_COUNTS)).first() is None:
        for statement in COUNTS:
            op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the baseline is where this store's history starts")
