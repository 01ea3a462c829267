"""What an operator station asks the audit store: the boards awaiting a person, and the
line and serial of an audited event (for `linecheck review` and `review-queue`)."""

from __future__ import annotations

import sqlalchemy as sa

from infra.db import make_engine, review_outcomes, verdicts


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


def review_queue(url: str, limit: int = 50, line: str | None = None) -> list[dict[str, object]]:
    """Boards awaiting a person, oldest first: sent to review, or in the audit sample, and
    without a review outcome yet."""
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
