"""Review outcomes joined with verdicts in PostgreSQL (plain, synchronous code).

Every accepted outcome goes to `review_outcome_history` (idempotent on its outcome id); the
board's current truth in `review_outcomes` is the outcome with the latest `reviewed_at`
(ties: the higher outcome id), so a late outcome never overwrites a newer one and a
contradicting one is kept, counted and flagged. A message that cannot be trusted raises
`ReviewRejected` and goes to the dead-letter topic with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection, Engine

from infra.db import (
    alerts,
    deadletters,
    drift_references,
    make_engine,
    review_outcome_history,
    review_outcomes,
    verdicts,
)
from schemas.events import Alert, DeadLetter, ReviewOutcome


class ReviewRejected(ValueError):
    """An outcome that must not be applied (dead-lettered with this reason)."""


OutcomeStatus = Literal["new", "superseded", "late", "duplicate"]


@dataclass(frozen=True)
class OutcomeResult:
    status: OutcomeStatus
    """new: first outcome of the board; superseded: newer than the current one, now current;
    late: older than the current one, history only; duplicate: this outcome id was seen."""
    contradicts: bool = False
    """it disagrees (defective or not) with the outcome that was current before it"""
    verdict: dict[str, object] | None = None
    """the board's audit row (verdict, audit sample, line, decided_at…), None when unknown"""


def _row(outcome: ReviewOutcome) -> dict[str, object]:
    return {
        "outcome_id": outcome.outcome_id,
        "event_id": outcome.event_id,
        "line": outcome.line,
        "board_serial": outcome.board_serial,
        "defective": outcome.defective,
        "defect_types": [t.value for t in outcome.defect_types],
        "regions": [b.model_dump(mode="json") for b in outcome.regions],
        "reviewer": outcome.reviewer,
        "reviewed_at": outcome.reviewed_at,
    }


_SAME = ("event_id", "line", "board_serial", "defective", "defect_types", "regions", "reviewer")


class ReviewStore:
    """The review sink's tables: outcomes (current and history), dead letters, and the
    drift monitor's alerts and references (a :class:`workers.drift.ReferenceStore`)."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = make_engine(url)

    def record(self, outcome: ReviewOutcome) -> OutcomeResult:
        """Apply one outcome in one transaction, serialised per board (advisory lock)."""
        if outcome.defective is False and (outcome.defect_types or outcome.regions):
            raise ReviewRejected("a good board (defective=false) cannot have defect types/regions")
        row = _row(outcome)
        with self.engine.begin() as conn:
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:id, 4))"),
                {"id": outcome.event_id},
            )
            seen = (
                conn.execute(
                    sa.select(review_outcome_history).where(
                        review_outcome_history.c.outcome_id == outcome.outcome_id
                    )
                )
                .mappings()
                .first()
            )
            verdict = self._verdict(conn, outcome.event_id)
            if seen is not None:
                same = all(seen[k] == row[k] for k in _SAME) and (
                    seen["reviewed_at"] == outcome.reviewed_at
                )
                if not same:
                    raise ReviewRejected(
                        f"outcome_id {outcome.outcome_id!r} was already used for a different "
                        "outcome; outcome ids must not be reused"
                    )
                return OutcomeResult("duplicate", verdict=verdict)
            if verdict is not None and (verdict["line"], verdict["board_serial"]) != (
                outcome.line,
                outcome.board_serial,
            ):
                raise ReviewRejected(
                    f"event {outcome.event_id!r} is board {verdict['board_serial']!r} on line "
                    f"{verdict['line']!r}, but the outcome names {outcome.board_serial!r} on "
                    f"{outcome.line!r}"
                )
            conn.execute(insert(review_outcome_history).values(row))
            current = (
                conn.execute(
                    sa.select(review_outcomes).where(review_outcomes.c.event_id == outcome.event_id)
                )
                .mappings()
                .first()
            )
            if current is None:
                conn.execute(insert(review_outcomes).values(row))
                return OutcomeResult("new", verdict=verdict)
            contradicts = bool(current["defective"]) != outcome.defective
            newer = (outcome.reviewed_at, outcome.outcome_id) > (
                current["reviewed_at"],
                current["outcome_id"],
            )
            update: dict[str, object] = {
                "n_outcomes": review_outcomes.c.n_outcomes + 1,
                "contradicted": review_outcomes.c.contradicted | contradicts,
                "updated_at": sa.func.now(),
            }
            if newer:
                update.update({k: v for k, v in row.items() if k != "event_id"})
            conn.execute(
                sa.update(review_outcomes)
                .where(review_outcomes.c.event_id == outcome.event_id)
                .values(update)
            )
            return OutcomeResult(
                "superseded" if newer else "late", contradicts=contradicts, verdict=verdict
            )

    @staticmethod
    def _verdict(conn: Connection, event_id: str) -> dict[str, object] | None:
        found = (
            conn.execute(
                sa.select(
                    verdicts.c.line,
                    verdicts.c.board_serial,
                    verdicts.c.verdict,
                    verdicts.c.model_version,
                    verdicts.c.audit_sampled,
                    verdicts.c.audit_rate,
                    verdicts.c.decided_at,
                ).where(verdicts.c.event_id == event_id)
            )
            .mappings()
            .first()
        )
        return dict(found) if found is not None else None

    def record_deadletter(self, dead: DeadLetter, partition: int, offset: int) -> bool:
        """Keep a dead-letter record for the operations dashboard (idempotent on its offset)."""
        stmt = (
            insert(deadletters)
            .values(
                source_topic=dead.source_topic,
                dl_partition=partition,
                dl_offset=offset,
                stage=dead.stage,
                reason=dead.reason[:2000],
                event_id=dead.event_id,
                worker=dead.worker,
                failed_at=dead.failed_at,
            )
            .on_conflict_do_nothing()
            .returning(deadletters.c.dl_offset)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).scalar_one_or_none() is not None

    def current(self, event_id: str) -> dict[str, object] | None:
        with self.engine.connect() as conn:
            found = (
                conn.execute(
                    sa.select(review_outcomes).where(review_outcomes.c.event_id == event_id)
                )
                .mappings()
                .first()
            )
            return dict(found) if found is not None else None

    def history(self, event_id: str) -> list[dict[str, object]]:
        with self.engine.connect() as conn:
            return [
                dict(r)
                for r in conn.execute(
                    sa.select(review_outcome_history)
                    .where(review_outcome_history.c.event_id == event_id)
                    .order_by(review_outcome_history.c.reviewed_at)
                ).mappings()
            ]

    def record_alert(self, alert: Alert) -> bool:
        stmt = (
            insert(alerts)
            .values(
                alert_id=alert.alert_id,
                metric=alert.metric,
                line=alert.line,
                model_version=alert.model_version,
                value=alert.value,
                baseline=alert.baseline,
                limit_value=alert.limit,
                lower=alert.lower,
                upper=alert.upper,
                window_boards=alert.window,
                since=alert.since,
                trigger_event_id=alert.trigger_event_id,
                message=alert.message,
                raised_at=alert.raised_at,
            )
            .on_conflict_do_nothing()
            .returning(alerts.c.alert_id)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).scalar_one_or_none() is not None

    def load(self, line: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(drift_references.c.reference).where(
                    drift_references.c.line == line, drift_references.c.metric == "board"
                )
            ).scalar_one_or_none()
        return dict(found) if found is not None else None

    def save(self, line: str, reference: dict[str, Any]) -> None:
        stmt = insert(drift_references).values(
            line=line,
            metric="board",
            model_version=reference.get("model_version"),
            boards=int(reference["boards"]),
            reference=reference,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["line", "metric"],
            set_={
                "model_version": stmt.excluded.model_version,
                "boards": stmt.excluded.boards,
                "reference": stmt.excluded.reference,
                "created_at": sa.func.now(),
            },
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def close(self) -> None:
        self.engine.dispose()
