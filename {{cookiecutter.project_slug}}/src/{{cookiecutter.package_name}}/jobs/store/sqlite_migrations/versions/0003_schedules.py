"""Schedules: `schedules` (paused, active since) and `schedule_ticks`, one row per tick.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

New tables only: every job is kept as it is.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As jobs/model.py declares them.
UPGRADE = [
    """CREATE TABLE schedules (
        name VARCHAR NOT NULL,
        paused BOOLEAN NOT NULL,
        active_since DATETIME NOT NULL,
        PRIMARY KEY (name)
    )""",
    """CREATE TABLE schedule_ticks (
        schedule VARCHAR NOT NULL,
        tick DATETIME NOT NULL,
        job_id INTEGER NOT NULL,
        PRIMARY KEY (schedule, tick)
    )""",
]
DOWNGRADE = ["DROP TABLE schedule_ticks", "DROP TABLE schedules"]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
