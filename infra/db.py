"""The audit store: tables (SQLAlchemy Core), engine, and Alembic-driven schema upgrades."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine

metadata = sa.MetaData()

verdicts = sa.Table(
    "verdicts",
    metadata,
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
    sa.Column("explain_ms", sa.Float, nullable=False, server_default="0"),  # 0003
    sa.Column("explanation_uri", sa.Text),  # 0003
    sa.Column("worker", sa.Text, nullable=False),
    sa.Column("source_partition", sa.Integer),
    sa.Column("source_offset", sa.BigInteger),
    sa.Column("inspected_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column(
        "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("audit_sampled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("audit_rate", sa.Float, nullable=False, server_default="0"),
    sa.Column("event_sha256", sa.Text),  # 0004: the decided event's canonical JSON, hashed
    sa.Column("verdict_json", JSONB),  # 0004: the verdict as published
)

_TS = sa.DateTime(timezone=True)


def _outcome_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("line", sa.Text, nullable=False),
        sa.Column("board_serial", sa.Text, nullable=False),
        sa.Column("defective", sa.Boolean, nullable=False),
        sa.Column("defect_types", JSONB, nullable=False),
        sa.Column("regions", JSONB, nullable=False),
        sa.Column("reviewer", sa.Text, nullable=False),
        sa.Column("reviewed_at", _TS, nullable=False),
        sa.Column("received_at", _TS, nullable=False, server_default=sa.func.now()),
    ]


# Every review outcome ever accepted (idempotent on outcome_id): the history.
review_outcome_history = sa.Table(
    "review_outcome_history",
    metadata,
    sa.Column("outcome_id", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, nullable=False),
    *_outcome_columns(),
)

# The current outcome per board: the one with the latest reviewed_at (ties: higher outcome_id).
review_outcomes = sa.Table(
    "review_outcomes",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("outcome_id", sa.Text, nullable=False, unique=True),
    *_outcome_columns(),
    sa.Column("n_outcomes", sa.Integer, nullable=False, server_default="1"),
    sa.Column("contradicted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
)

deadletters = sa.Table(
    "deadletters",
    metadata,
    sa.Column("source_topic", sa.Text, primary_key=True),
    sa.Column("dl_partition", sa.Integer, primary_key=True),
    sa.Column("dl_offset", sa.BigInteger, primary_key=True),
    sa.Column("stage", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text),
    sa.Column("worker", sa.Text, nullable=False),
    sa.Column("failed_at", _TS, nullable=False),
)

drift_references = sa.Table(
    "drift_references",
    metadata,
    sa.Column("line", sa.Text, primary_key=True),
    sa.Column("metric", sa.Text, primary_key=True),
    sa.Column("model_version", sa.Text),
    sa.Column("boards", sa.Integer, nullable=False),
    sa.Column("reference", JSONB, nullable=False),
    sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
)

alerts = sa.Table(
    "alerts",
    metadata,
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

# Operators of the review station (0005); `linecheck users add` writes, the station reads.
users = sa.Table(
    "users",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
)

# Model stages per product ('*': the default for every product), and every change (0006).
MODEL_STAGES = ("candidate", "shadow", "active", "retired")
model_stages = sa.Table(
    "model_stages",
    metadata,
    sa.Column("product", sa.Text, primary_key=True),
    sa.Column("model_version", sa.Text, primary_key=True),
    sa.Column("stage", sa.Text, nullable=False),
    sa.Column("changed_by", sa.Text, nullable=False),
    sa.Column("changed_at", _TS, nullable=False),
)
model_stage_history = sa.Table(
    "model_stage_history",
    metadata,
    sa.Column("change_id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("product", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("from_stage", sa.Text),
    sa.Column("to_stage", sa.Text, nullable=False),
    sa.Column("changed_by", sa.Text, nullable=False),
    sa.Column("changed_at", _TS, nullable=False),
    sa.Column("note", sa.Text, nullable=False, server_default=""),
)

# A shadow model's decisions on the boards the active model decided (0007): never published.
shadow_verdicts = sa.Table(
    "shadow_verdicts",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("model_version", sa.Text, primary_key=True),
    sa.Column("threshold_version", sa.Text, nullable=False),
    sa.Column("verdict", sa.Text, nullable=False),
    sa.Column("board_score", sa.Float, nullable=False),
    sa.Column("n_regions", sa.Integer, nullable=False),
    sa.Column("regions", JSONB, nullable=False),
    sa.Column("classify_ms", sa.Float, nullable=False),
    sa.Column("worker", sa.Text, nullable=False),
    sa.Column("decided_at", _TS, nullable=False),
)

# The product registry (0008): how each product is inspected. A product without a row (and
# without a '*' row) is not inspected: its boards are dead letters that say so.
INSPECTION_MODES = ("reference", "locator", "anomaly")
products = sa.Table(
    "products",
    metadata,
    sa.Column("product", sa.Text, primary_key=True),
    sa.Column("mode", sa.Text, nullable=False),
    sa.Column("template_id", sa.Text),
    sa.Column("changed_by", sa.Text, nullable=False),
    sa.Column("changed_at", _TS, nullable=False),
    sa.Column("note", sa.Text, nullable=False, server_default=""),
)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Serialises concurrent upgrades (several workers starting at once) on one database.
_MIGRATION_LOCK_ID = 0x11EC4EC


def make_engine(
    url: str,
    connect_timeout_s: int = 10,
    statement_timeout_ms: int | None = None,
    pre_ping: bool = True,
) -> Engine:
    """An engine whose connections give up after ``connect_timeout_s`` and whose statements
    are cancelled after ``statement_timeout_ms`` when given (a hung server must not hold a
    worker past Kafka's poll interval). ``pre_ping``: test each pooled connection with a
    round trip before handing it out (a caller that retries a failed call anyway can save
    that round trip: a dead connection then fails one call and the pool is renewed)."""
    connect_args: dict[str, object] = {"connect_timeout": connect_timeout_s}
    if statement_timeout_ms is not None:
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout_ms)}"
    return sa.create_engine(
        url, pool_pre_ping=pre_ping, pool_size=2, max_overflow=2, connect_args=connect_args
    )


def alembic_config(url: str) -> alembic.config.Config:  # type: ignore[name-defined]  # noqa: F821
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database to `revision` under an advisory lock (safe to call from every worker)."""
    from alembic import command

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            try:
                config = alembic_config(url)
                config.attributes["connection"] = conn
                command.upgrade(config, revision)
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK_ID})
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    """The newest migration of this code."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()
    assert head is not None
    return head


def prepare(url: str, migrate: bool) -> None:
    """Apply the migrations when ``migrate`` (needs the owner's rights), else check that the
    database is already at this code's head and say how to get it there when it is not."""
    if migrate:
        upgrade(url)
        return
    current, head = current_revision(url), head_revision()
    if current != head:
        raise RuntimeError(
            f"the audit store is at migration {current or 'none'}, this code needs {head}: "
            "run `linecheck db upgrade` (or set worker.migrate = true)"
        )
