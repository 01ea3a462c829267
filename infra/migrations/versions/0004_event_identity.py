"""verdicts.event_sha256 and verdict_json: the event a verdict decided, and the verdict as
published, so that a redelivered event gets the same verdict and a reused event id with
another payload is recognised as a conflict

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("verdicts", sa.Column("event_sha256", sa.Text, nullable=True))
    op.add_column("verdicts", sa.Column("verdict_json", JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("verdicts", "verdict_json")
    op.drop_column("verdicts", "event_sha256")
