"""Schedules: `schedules` (paused, active since) and `schedule_ticks`, one row per tick.

The primary key of `schedule_ticks` is what lets instances racing for a tick insert one
job. New tables only: every job is kept as it is.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As jobs/model.py declares them.
UPGRADE = (
    "CREATE TABLE schedules (name VARCHAR NOT NULL, paused BOOLEAN NOT NULL,"
    " active_since TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY (name))",
    "CREATE TABLE schedule_ticks (schedule VARCHAR NOT NULL,"
    " tick TIMESTAMP WITH TIME ZONE NOT NULL, job_id BIGINT NOT NULL,"
    " PRIMARY KEY (schedule, tick))",
)
DOWNGRADE = ("DROP TABLE schedule_ticks", "DROP TABLE schedules")


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
