"""From class probabilities to region verdicts and a board verdict (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inspection.model.registry import Thresholds
from schemas.events import Box, DefectType, RegionVerdict, VerdictLabel

# Classifier output order: index 0 is "no defect", 1..6 follow DefectType's order.
DEFECT_TYPES: tuple[DefectType, ...] = tuple(DefectType)


def decide(thresholds: Thresholds, board_score: float) -> VerdictLabel:
    """score < pass_below → pass; score ≥ fail_at_or_above → fail; between → review."""
    if board_score < thresholds.pass_below:
        return VerdictLabel.PASS
    if board_score >= thresholds.fail_at_or_above:
        return VerdictLabel.FAIL
    return VerdictLabel.REVIEW


def region_verdicts(boxes: Sequence[Box], probs: np.ndarray) -> list[RegionVerdict]:
    """One RegionVerdict per box; score = P(defective) = 1 − P(no defect)."""
    if probs.shape != (len(boxes), len(DEFECT_TYPES) + 1):
        raise ValueError(f"expected probabilities of shape ({len(boxes)}, 7), got {probs.shape}")
    out: list[RegionVerdict] = []
    for box, p in zip(boxes, probs, strict=True):
        score = float(np.clip(1.0 - p[0], 0.0, 1.0))
        best = int(np.argmax(p[1:])) + 1
        if p[best] > p[0]:
            out.append(
                RegionVerdict(
                    box=box,
                    defect_type=DEFECT_TYPES[best - 1],
                    score=score,
                    type_score=float(np.clip(p[best], 0.0, 1.0)),
                )
            )
        else:
            out.append(
                RegionVerdict(
                    box=box,
                    defect_type=None,
                    score=score,
                    type_score=float(np.clip(p[0], 0.0, 1.0)),
                )
            )
    return out


def board_score(regions: Sequence[RegionVerdict]) -> float:
    """A board is as defective as its most defective region; no candidates → 0."""
    return max((r.score for r in regions), default=0.0)
