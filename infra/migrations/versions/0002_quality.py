"""quality loop: audit sampling, review outcomes (current + history), dead letters, drift
references, alerts, and Wilson interval SQL functions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)

# Wilson score interval for k successes in n trials (k, n may be weighted: effective counts).
_WILSON = """
CREATE OR REPLACE FUNCTION wilson_{side}(k double precision, n double precision,
                                        z double precision DEFAULT 1.96)
RETURNS double precision LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN n IS NULL OR n <= 0 THEN NULL ELSE
    GREATEST(0.0, LEAST(1.0,
      ((k / n) + z * z / (2 * n) {sign} z * sqrt(GREATEST(0.0, (k / n) * (1 - k / n) / n
        + z * z / (4 * n * n)))) / (1 + z * z / n)))
  END
$$
"""


def upgrade() -> None:
    op.add_column(
        "verdicts",
        sa.Column("audit_sampled", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.add_column("verdicts", sa.Column("audit_rate", sa.Float, nullable=False, server_default="0"))
    op.create_index("ix_verdicts_decided", "verdicts", ["decided_at"])

    outcome_columns = lambda: [  # noqa: E731
        sa.Column("line", sa.Text, nullable=False),
        sa.Column("board_serial", sa.Text, nullable=False),
        sa.Column("defective", sa.Boolean, nullable=False),
        sa.Column("defect_types", JSONB, nullable=False),
        sa.Column("regions", JSONB, nullable=False),
        sa.Column("reviewer", sa.Text, nullable=False),
        sa.Column("reviewed_at", _TS, nullable=False),
        sa.Column("received_at", _TS, nullable=False, server_default=sa.func.now()),
    ]
    op.create_table(
        "review_outcome_history",
        sa.Column("outcome_id", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, nullable=False),
        *outcome_columns(),
    )
    op.create_index("ix_outcome_history_event", "review_outcome_history", ["event_id"])
    op.create_table(
        "review_outcomes",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("outcome_id", sa.Text, nullable=False, unique=True),
        *outcome_columns(),
        sa.Column("n_outcomes", sa.Integer, nullable=False, server_default="1"),
        sa.Column("contradicted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "deadletters",
        sa.Column("source_topic", sa.Text, primary_key=True),
        sa.Column("dl_partition", sa.Integer, primary_key=True),
        sa.Column("dl_offset", sa.BigInteger, primary_key=True),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text),
        sa.Column("worker", sa.Text, nullable=False),
        sa.Column("failed_at", _TS, nullable=False),
    )
    op.create_index("ix_deadletters_failed", "deadletters", ["failed_at"])
    op.create_table(
        "drift_references",
        sa.Column("line", sa.Text, primary_key=True),
        sa.Column("metric", sa.Text, primary_key=True),
        sa.Column("model_version", sa.Text),
        sa.Column("boards", sa.Integer, nullable=False),
        sa.Column("reference", JSONB, nullable=False),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "alerts",
        sa.Column("alert_id", sa.Text, primary_key=True),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("line", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("baseline", sa.Float, nullable=False),
        sa.Column("limit_value", sa.Float, nullable=False),
        sa.Column("lower", sa.Float),
        sa.Column("upper", sa.Float),
        sa.Column("window_boards", sa.Integer, nullable=False),
        sa.Column("since", _TS, nullable=False),
        sa.Column("trigger_event_id", sa.Text),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("raised_at", _TS, nullable=False),
    )
    op.create_index("ix_alerts_raised", "alerts", ["raised_at"])
    op.execute(_WILSON.format(side="lower", sign="-"))
    op.execute(_WILSON.format(side="upper", sign="+"))


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION IF EXISTS wilson_lower(double precision, double precision, double precision)"
    )
    op.execute(
        "DROP FUNCTION IF EXISTS wilson_upper(double precision, double precision, double precision)"
    )
    for table in (
        "alerts",
        "drift_references",
        "deadletters",
        "review_outcomes",
        "review_outcome_history",
    ):
        op.drop_table(table)
    op.drop_index("ix_verdicts_decided", "verdicts")
    op.drop_column("verdicts", "audit_rate")
    op.drop_column("verdicts", "audit_sampled")
