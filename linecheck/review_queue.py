"""Small I/O helpers of the quality loop shared by the CLI and the demo."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from infra.db import make_engine, verdicts
from infra.settings import Settings
from schemas.events import ReviewOutcome


def lookup_board(url: str, event_id: str) -> tuple[str, str] | None:
    """(line, board serial) of an audited event, None when it has no audit row."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(verdicts.c.line, verdicts.c.board_serial).where(
                    verdicts.c.event_id == event_id
                )
            ).first()
        return (str(row[0]), str(row[1])) if row is not None else None
    finally:
        engine.dispose()


def publish_outcomes(settings: Settings, outcomes: Iterable[ReviewOutcome]) -> int:
    """Publish outcomes to boards.reviews (idempotent producer, keyed by line:serial)."""
    from confluent_kafka import Producer

    from producers.publisher import PublishError, producer_config

    producer = Producer(producer_config(settings.kafka.bootstrap_servers))
    errors: list[str] = []

    def on_delivery(error: object, _msg: object) -> None:
        if error is not None:
            errors.append(str(error))

    n = 0
    for outcome in outcomes:
        producer.produce(
            settings.topics.reviews,
            value=outcome.model_dump_json().encode(),
            key=f"{outcome.line}:{outcome.board_serial}".encode(),
            on_delivery=on_delivery,
        )
        producer.poll(0)
        n += 1
    remaining = producer.flush(30)
    if remaining or errors:
        raise PublishError(f"{remaining} outcome(s) unacknowledged; errors: {errors[:3]}")
    return n


def review_queue(url: str, limit: int = 50, line: str | None = None) -> list[dict[str, object]]:
    """Boards awaiting a person, oldest first: sent to review, or in the audit sample, and
    without a review outcome yet."""
    from infra.db import review_outcomes

    query = (
        sa.select(
            verdicts.c.event_id,
            verdicts.c.line,
            verdicts.c.board_serial,
            verdicts.c.product,
            verdicts.c.verdict,
            verdicts.c.board_score,
            verdicts.c.decided_at,
            sa.case((verdicts.c.verdict == "review", "review"), else_="audit").label("why"),
        )
        .outerjoin(review_outcomes, review_outcomes.c.event_id == verdicts.c.event_id)
        .where(
            review_outcomes.c.event_id.is_(None),
            sa.or_(verdicts.c.verdict == "review", verdicts.c.audit_sampled),
        )
        .order_by(verdicts.c.decided_at)
        .limit(limit)
    )
    if line is not None:
        query = query.where(verdicts.c.line == line)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]
    finally:
        engine.dispose()
