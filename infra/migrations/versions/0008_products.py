"""products: the product registry, how each product is inspected (reference against its
templates, a learned locator without templates, or an anomaly model of good images) and
its default template. Products already in the audit store are registered as `reference`,
so that a line upgraded to 0008 keeps inspecting what it inspected.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("product", sa.Text, primary_key=True),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("template_id", sa.Text),
        sa.Column("changed_by", sa.Text, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.CheckConstraint(
            "mode IN ('reference', 'locator', 'anomaly')", name="product_mode_known"
        ),
    )
    op.execute(
        "INSERT INTO products (product, mode, changed_by, changed_at, note) "
        "SELECT DISTINCT product, 'reference', 'migration 0008', now(), "
        "'registered by migration 0008: inspected before the registry existed' FROM verdicts"
    )


def downgrade() -> None:
    op.drop_table("products")
