"""Claims check whether a job is due inside the index they walk.

ix_jobs_due and ix_jobs_queue_due end with run_at: a claim walks them in claim order and
skips jobs not yet due without reading their rows. Without it, on a table the planner has
no statistics for yet (a new database filling faster than autovacuum analyzes it), it
sorted every queued job for each claim instead of walking the index.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The indexes hold queued jobs only: a few on any table, so rebuilding them is quick.
UPGRADE = (
    "DROP INDEX ix_jobs_due",
    "CREATE INDEX ix_jobs_due ON jobs (claim_at, id, run_at) WHERE status = 'queued'",
    "DROP INDEX ix_jobs_queue_due",
    "CREATE INDEX ix_jobs_queue_due ON jobs (queue, claim_at, id, run_at) WHERE status = 'queued'",
)
DOWNGRADE = (
    "DROP INDEX ix_jobs_due",
    "CREATE INDEX ix_jobs_due ON jobs (claim_at, id) WHERE status = 'queued'",
    "DROP INDEX ix_jobs_queue_due",
    "CREATE INDEX ix_jobs_queue_due ON jobs (queue, claim_at, id) WHERE status = 'queued'",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
