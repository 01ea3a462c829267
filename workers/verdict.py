"""From class probabilities to region verdicts and a board verdict (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from schemas.events import Box, DefectType, RegionVerdict, VerdictLabel

# Classifier output order: index 0 is "no defect", 1..6 follow DefectType's order.
DEFECT_TYPES: tuple[DefectType, ...] = tuple(DefectType)


@dataclass(frozen=True)
class Thresholds:
    """Board score < pass_below → pass; ≥ fail_at_or_above → fail; between → review."""

    pass_below: float
    fail_at_or_above: float
    version: str

    def __post_init__(self) -> None:
        if not 0.0 <= self.pass_below <= self.fail_at_or_above <= 1.0:
            raise ValueError(
                f"thresholds must satisfy 0 <= pass_below ({self.pass_below}) <= "
                f"fail_at_or_above ({self.fail_at_or_above}) <= 1"
            )

    def label(self, board_score: float) -> VerdictLabel:
        if board_score < self.pass_below:
            return VerdictLabel.PASS
        if board_score >= self.fail_at_or_above:
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
            out.append(RegionVerdict(box=box, defect_type=DEFECT_TYPES[best - 1], score=score,
                                     type_score=float(np.clip(p[best], 0.0, 1.0))))
        else:
            out.append(RegionVerdict(box=box, defect_type=None, score=score,
                                     type_score=float(np.clip(p[0], 0.0, 1.0))))
    return out


def board_score(regions: Sequence[RegionVerdict]) -> float:
    """A board is as defective as its most defective region; no candidates → 0."""
    return max((r.score for r in regions), default=0.0)
