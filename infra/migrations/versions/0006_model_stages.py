"""model_stages and model_stage_history: which model version is candidate, shadow, active
or retired for each product ('*': every product without its own), and who changed it when

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_stages",
        sa.Column("product", sa.Text, primary_key=True),
        sa.Column("model_version", sa.Text, primary_key=True),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("changed_by", sa.Text, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "stage IN ('candidate', 'shadow', 'active', 'retired')", name="model_stage_known"
        ),
    )
    # exactly one active model per product, whoever promotes at the same moment
    op.create_index(
        "one_active_model_per_product",
        "model_stages",
        ["product"],
        unique=True,
        postgresql_where=sa.text("stage = 'active'"),
    )
    op.create_table(
        "model_stage_history",
        sa.Column("change_id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("product", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("from_stage", sa.Text),
        sa.Column("to_stage", sa.Text, nullable=False),
        sa.Column("changed_by", sa.Text, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_table("model_stage_history")
    op.drop_index("one_active_model_per_product", table_name="model_stages")
    op.drop_table("model_stages")
