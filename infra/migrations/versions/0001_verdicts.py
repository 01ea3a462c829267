"""verdicts: one audit row per flagged-board event

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "verdicts",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("line", sa.Text, nullable=False),
        sa.Column("machine", sa.Text, nullable=False),
        sa.Column("product", sa.Text, nullable=False),
        sa.Column("board_serial", sa.Text, nullable=False),
        sa.Column("verdict", sa.Text, nullable=False),
        sa.Column("board_score", sa.Float, nullable=False),
        sa.Column("n_regions", sa.Integer, nullable=False),
        sa.Column("regions", JSONB, nullable=False),
        sa.Column("roi_method", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("threshold_version", sa.Text, nullable=False),
        sa.Column("decode_ms", sa.Float, nullable=False),
        sa.Column("roi_ms", sa.Float, nullable=False),
        sa.Column("classify_ms", sa.Float, nullable=False),
        sa.Column("total_ms", sa.Float, nullable=False),
        sa.Column("worker", sa.Text, nullable=False),
        sa.Column("source_partition", sa.Integer),
        sa.Column("source_offset", sa.BigInteger),
        sa.Column("inspected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("verdict IN ('pass', 'fail', 'review')", name="verdict_label"),
    )
    op.create_index("ix_verdicts_line_decided", "verdicts", ["line", "decided_at"])
    op.create_index("ix_verdicts_product_decided", "verdicts", ["product", "decided_at"])


def downgrade() -> None:
    op.drop_table("verdicts")
