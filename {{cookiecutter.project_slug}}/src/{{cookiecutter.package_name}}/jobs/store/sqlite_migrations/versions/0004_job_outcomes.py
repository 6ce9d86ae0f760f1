"""The attempts that ended per minute: `job_outcomes`, for the dashboard's chart.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

A new table only: every job is kept as it is. It starts empty: the chart shows what ends
from the upgrade on.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As jobs/model.py declares it.
UPGRADE = """CREATE TABLE job_outcomes (
    minute DATETIME NOT NULL,
    outcome VARCHAR(16) NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (minute, outcome)
)"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP TABLE job_outcomes")
