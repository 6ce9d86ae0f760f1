"""Queued and running jobs counted in job_counts, as finished ones already were.

A row of job_counts may now also name the status its jobs left (`left_status`), whose count
it takes n from: a claim is one row, not two. The queued and running jobs there are now are
counted once, here; from then on the store appends their changes as it does the others'.

An instance of an earlier release still running after this migration appends nothing for
the jobs it inserts, claims or requeues: its changes are missing from the queued and running
counts until it stops and the counts are made again (downgrade and upgrade).

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A nullable column without a default rewrites no row; the rows there keep their meaning.
# The jobs are counted through the partial indexes of queued and running jobs, in one
# statement: one snapshot, so a job claimed meanwhile is counted once.
UPGRADE = (
    "ALTER TABLE job_counts ADD COLUMN left_status text",
    "INSERT INTO job_counts (queue, status, n)"
    " SELECT queue, 'queued', count(*) FROM jobs WHERE status = 'queued' GROUP BY queue"
    " UNION ALL"
    " SELECT queue, 'running', count(*) FROM jobs WHERE status = 'running' GROUP BY queue",
)
# Back to finished jobs only, each row one status's change.
DOWNGRADE = (
    "WITH folded AS (DELETE FROM job_counts RETURNING queue, status, left_status, n)"
    " INSERT INTO job_counts (queue, status, n) SELECT queue, counted_status, sum(delta)"
    " FROM folded, LATERAL (VALUES (status, n), (left_status, -n)) AS change(counted_status, delta)"
    " WHERE counted_status IN ('done', 'failed', 'cancelled')"
    " GROUP BY queue, counted_status HAVING sum(delta) <> 0",
    "ALTER TABLE job_counts DROP COLUMN left_status",
)


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
