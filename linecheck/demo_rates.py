"""What the demo reads back from the audit store: the boards' verdicts against the truth
the simulator knows (FNR, FPR, review rate), per model and per product."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from infra.db import verdicts
from producers.simulator import PublishedBoard


def count_rows(engine: sa.Engine, event_ids: list[str]) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(verdicts)
                .where(verdicts.c.event_id.in_(event_ids))
            ).scalar_one()
        )


def board_error_rates(
    engine: sa.Engine, boards: list[PublishedBoard]
) -> tuple[float | None, float | None, float, dict[str, int]]:
    """FNR = defective boards passed / defective boards; FPR = good boards failed / good boards;
    a board sent to review is decided by a person, so it is neither an escape nor a false call."""
    truth = {b.event_id: b.defective for b in boards}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(verdicts.c.event_id, verdicts.c.verdict).where(
                verdicts.c.event_id.in_(list(truth))
            )
        ).all()
    counts = {"pass": 0, "fail": 0, "review": 0}
    fn = fp = positives = negatives = 0
    for event_id, verdict in rows:
        counts[verdict] += 1
        if truth[event_id]:
            positives += 1
            fn += verdict == "pass"
        else:
            negatives += 1
            fp += verdict == "fail"
    fnr = fn / positives if positives else None
    fpr = fp / negatives if negatives else None
    review_rate = counts["review"] / len(rows) if rows else 0.0
    return fnr, fpr, review_rate, counts


def verdicts_per_model(engine: sa.Engine, boards: list[PublishedBoard]) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(verdicts.c.model_version, sa.func.count())
            .where(verdicts.c.event_id.in_([b.event_id for b in boards]))
            .group_by(verdicts.c.model_version)
        ).all()
    return {str(v): int(n) for v, n in rows}


def rates_per_product(
    engine: sa.Engine, boards: list[PublishedBoard], modes: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Each product's mode, boards, FNR, FPR and review rate (as the demo's overall ones), and
    how its boards were inspected (the verdicts' ``roi_method``)."""
    with engine.connect() as conn:
        methods = conn.execute(
            sa.select(verdicts.c.product, verdicts.c.roi_method, sa.func.count())
            .where(verdicts.c.event_id.in_([b.event_id for b in boards]))
            .group_by(verdicts.c.product, verdicts.c.roi_method)
        ).all()
    out: dict[str, dict[str, Any]] = {}
    for product in sorted({b.product for b in boards}):
        mine = [b for b in boards if b.product == product]
        fnr, fpr, review_rate, counts = board_error_rates(engine, mine)
        out[product] = {
            "mode": modes.get(product, "reference"),
            "boards": len(mine),
            "defective": sum(b.defective for b in mine),
            "fnr": fnr,
            "fpr": fpr,
            "review_rate": review_rate,
            "counts": counts,
            "roi_methods": {str(m): int(n) for p, m, n in methods if p == product},
        }
    return out
