"""verdicts.explanation_uri and explain_ms: class-activation heatmaps beside the verdict

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("verdicts", sa.Column("explanation_uri", sa.Text, nullable=True))
    op.add_column("verdicts", sa.Column("explain_ms", sa.Float, nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("verdicts", "explain_ms")
    op.drop_column("verdicts", "explanation_uri")
