"""Instances that hold a liveness lock, and each job's attempts lost in a row.

A job running on an instance of the previous release keeps its lease; that instance is
not in `instances`, so its jobs come back when their leases expire, as they did.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As jobs/model.py declares them. A constant default rewrites no row.
UPGRADE = (
    "ALTER TABLE jobs ADD COLUMN lost_in_a_row INTEGER NOT NULL DEFAULT 0",
    "CREATE TABLE instances (id VARCHAR NOT NULL,"
    " started_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY (id))",
)
DOWNGRADE = ("DROP TABLE instances", "ALTER TABLE jobs DROP COLUMN lost_in_a_row")


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
