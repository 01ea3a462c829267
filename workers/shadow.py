"""Shadow mode: a shadow model scores every board the active model scores, on the same
candidate regions; its decisions go to ``shadow_verdicts`` (same event id) and never to the
MES. A shadow that fails is logged and skipped: it can never cost the line a verdict."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from infra.db import shadow_verdicts
from inspection.verdict import board_score, decide, region_verdicts
from schemas.events import Box, RegionVerdict, VerdictLabel
from workers.inspector import ServedModel

log = logging.getLogger("linecheck.worker.shadow")


@dataclass(frozen=True)
class ShadowDecision:
    event_id: str
    model_version: str
    threshold_version: str
    verdict: VerdictLabel
    board_score: float
    regions: list[RegionVerdict]
    classify_ms: float
    worker: str
    decided_at: datetime


def score_shadows(
    event_id: str,
    worker: str,
    shadows: Sequence[ServedModel],
    image: np.ndarray,
    template: np.ndarray | None,
    boxes: list[Box],
    crops: np.ndarray,
    crop_sides: tuple[int, ...] = (0,),
    crop_reference: str = "template",
) -> list[ShadowDecision]:
    """Each shadow's decision on the regions the active model saw (``crops``, cut from
    ``crop_sides``, one per view, against ``crop_reference``: "template" for crops cut as
    :func:`inspection.crops.crops_for` cuts them, else a locator's ``crop_reference``;
    remade only for a shadow whose model cuts them otherwise)."""
    out = []
    for model in shadows:
        t0 = time.perf_counter()
        try:
            classifier = model.require_classifier()  # an anomaly shadow cannot type regions
            same = (classifier.input_size, classifier.crop_sides, model.crop_reference) == (
                crops.shape[-1],
                crop_sides,
                crop_reference,
            )
            own = crops if same else model.crops(image, template, boxes)
            regions = region_verdicts(boxes, classifier.predict_proba(own))
        except Exception as exc:  # never the line's problem
            log.warning("shadow %s failed on %s: %s", model.version, event_id, exc)
            continue
        score = board_score(regions)
        out.append(
            ShadowDecision(
                event_id=event_id,
                model_version=model.version,
                threshold_version=model.thresholds.threshold_version,
                verdict=decide(model.thresholds, score),
                board_score=score,
                regions=regions,
                classify_ms=(time.perf_counter() - t0) * 1e3,
                worker=worker,
                decided_at=datetime.now(UTC),
            )
        )
    return out


def record_shadows(engine: sa.Engine, decisions: Sequence[ShadowDecision]) -> int:
    """Store the decisions (idempotent: a redelivered board keeps its first); rows written.
    Errors are logged, not raised: the active verdicts are what the line needs."""
    if not decisions:
        return 0
    rows = [
        {
            "event_id": d.event_id,
            "model_version": d.model_version,
            "threshold_version": d.threshold_version,
            "verdict": d.verdict.value,
            "board_score": d.board_score,
            "n_regions": len(d.regions),
            "regions": [r.model_dump(mode="json") for r in d.regions],
            "classify_ms": d.classify_ms,
            "worker": d.worker,
            "decided_at": d.decided_at,
        }
        for d in decisions
    ]
    try:
        with engine.begin() as conn:
            result = conn.execute(insert(shadow_verdicts).values(rows).on_conflict_do_nothing())
            return int(result.rowcount or 0)
    except sa.exc.SQLAlchemyError as exc:
        log.warning("%d shadow decision(s) not stored: %s", len(rows), exc)
        return 0
