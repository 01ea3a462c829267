"""shadow_verdicts: what a shadow model decided on the boards the active model decided
(same event id), stored for comparison and never published

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shadow_verdicts",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("model_version", sa.Text, primary_key=True),
        sa.Column("threshold_version", sa.Text, nullable=False),
        sa.Column("verdict", sa.Text, nullable=False),
        sa.Column("board_score", sa.Float, nullable=False),
        sa.Column("n_regions", sa.Integer, nullable=False),
        sa.Column("regions", JSONB, nullable=False),
        sa.Column("classify_ms", sa.Float, nullable=False),
        sa.Column("worker", sa.Text, nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("shadow_verdicts_by_model", "shadow_verdicts", ["model_version", "decided_at"])


def downgrade() -> None:
    op.drop_table("shadow_verdicts")
