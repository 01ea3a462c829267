"""What the review station (and `linecheck review`, `review-queue`) asks the audit store:
the boards awaiting a person, one board with its verdict and outcome, and the summary."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from infra.db import alerts, deadletters, review_outcome_history, review_outcomes, verdicts

_AWAITING = sa.or_(verdicts.c.verdict == "review", verdicts.c.audit_sampled)


def lookup_board(engine: sa.Engine, event_id: str) -> tuple[str, str] | None:
    """(line, board serial) of an audited event, None when it has no audit row."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(verdicts.c.line, verdicts.c.board_serial).where(
                verdicts.c.event_id == event_id
            )
        ).first()
    return (str(row[0]), str(row[1])) if row is not None else None


def review_queue(
    engine: sa.Engine,
    limit: int = 50,
    line: str | None = None,
    exclude: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Boards awaiting a person, oldest first: sent to review, or in the audit sample, and
    without a review outcome yet (``exclude``: decided here, outcome still on its way)."""
    query = (
        sa.select(
            verdicts.c.event_id,
            verdicts.c.line,
            verdicts.c.board_serial,
            verdicts.c.product,
            verdicts.c.verdict,
            verdicts.c.board_score,
            verdicts.c.n_regions,
            verdicts.c.decided_at,
            sa.case((verdicts.c.verdict == "review", "review"), else_="audit").label("why"),
        )
        .outerjoin(review_outcomes, review_outcomes.c.event_id == verdicts.c.event_id)
        .where(review_outcomes.c.event_id.is_(None), _AWAITING)
        .order_by(verdicts.c.decided_at, verdicts.c.event_id)
        .limit(limit + len(exclude))
    )
    if line:
        query = query.where(verdicts.c.line == line)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    return [r for r in rows if r["event_id"] not in exclude][:limit]


def lines(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(verdicts.c.line).distinct().order_by(verdicts.c.line))
        return [str(v) for (v,) in rows]


def board(engine: sa.Engine, event_id: str) -> dict[str, Any] | None:
    """One audited board: its verdict as published (regions, scores, image and heatmap
    locations), why a person sees it, and its current review outcome if any."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(
                verdicts.c.verdict_json,
                verdicts.c.regions,
                verdicts.c.line,
                verdicts.c.machine,
                verdicts.c.product,
                verdicts.c.board_serial,
                verdicts.c.verdict,
                verdicts.c.board_score,
                verdicts.c.model_version,
                verdicts.c.explanation_uri,
                verdicts.c.decided_at,
                verdicts.c.audit_sampled,
            ).where(verdicts.c.event_id == event_id)
        ).first()
        if row is None:
            return None
        outcome = conn.execute(
            sa.select(
                review_outcomes.c.outcome_id,
                review_outcomes.c.defective,
                review_outcomes.c.defect_types,
                review_outcomes.c.reviewer,
                review_outcomes.c.reviewed_at,
            ).where(review_outcomes.c.event_id == event_id)
        ).first()
    published: dict[str, Any] = dict(row.verdict_json or {})
    return {
        "event_id": event_id,
        "line": row.line,
        "machine": row.machine,
        "product": row.product,
        "board_serial": row.board_serial,
        "verdict": row.verdict,
        "board_score": row.board_score,
        "model_version": row.model_version,
        "decided_at": row.decided_at,
        "why": "review" if row.verdict == "review" else ("audit" if row.audit_sampled else None),
        "regions": published.get("regions", row.regions),
        "pass_below": published.get("pass_below"),
        "fail_at_or_above": published.get("fail_at_or_above"),
        "template_id": published.get("template_id"),
        "roi_method": published.get("roi_method"),
        "image_uri": published.get("image_uri"),
        "explanation_uri": row.explanation_uri,
        "outcome": dict(outcome._mapping) if outcome is not None else None,
    }


def outcome_stored(engine: sa.Engine, outcome_id: str) -> bool:
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(review_outcome_history.c.outcome_id).where(
                review_outcome_history.c.outcome_id == outcome_id
            )
        ).first()
    return found is not None


def decided(engine: sa.Engine, event_ids: list[str]) -> set[str]:
    """Which of these boards have a review outcome stored."""
    if not event_ids:
        return set()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(review_outcomes.c.event_id).where(review_outcomes.c.event_id.in_(event_ids))
        )
        return {str(v) for (v,) in rows}


def summary(engine: sa.Engine, since: datetime) -> dict[str, Any]:
    """Since ``since``: verdicts by label, dead letters by stage, outcomes, alerts."""
    with engine.connect() as conn:
        by_label: dict[str, int] = dict(
            conn.execute(
                sa.select(verdicts.c.verdict, sa.func.count())
                .where(verdicts.c.decided_at >= since)
                .group_by(verdicts.c.verdict)
            ).all()
        )
        by_stage: dict[str, int] = dict(
            conn.execute(
                sa.select(deadletters.c.stage, sa.func.count())
                .where(deadletters.c.failed_at >= since)
                .group_by(deadletters.c.stage)
            ).all()
        )
        outcomes = conn.execute(
            sa.select(sa.func.count())
            .select_from(review_outcome_history)
            .where(review_outcome_history.c.received_at >= since)
        ).scalar_one()
        raised = conn.execute(
            sa.select(alerts.c.metric, alerts.c.line, alerts.c.message, alerts.c.raised_at)
            .where(alerts.c.raised_at >= since)
            .order_by(alerts.c.raised_at)
        ).all()
        awaiting = conn.execute(
            sa.select(sa.func.count())
            .select_from(verdicts)
            .outerjoin(review_outcomes, review_outcomes.c.event_id == verdicts.c.event_id)
            .where(review_outcomes.c.event_id.is_(None), _AWAITING)
        ).scalar_one()
    return {
        "since": since.isoformat(),
        "verdicts": {label: int(by_label.get(label, 0)) for label in ("pass", "fail", "review")},
        "deadletters": {str(k): int(v) for k, v in by_stage.items()},
        "outcomes": int(outcomes),
        "awaiting_review": int(awaiting),
        "alerts": [
            {"metric": m, "line": ln, "message": msg, "raised_at": t.isoformat()}
            for m, ln, msg, t in raised
        ],
    }
