"""From class probabilities to region verdicts and a board verdict (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inspection.model.registry import Thresholds
from schemas.events import Box, DefectType, RegionVerdict, VerdictLabel

# Classifier output order: index 0 is "no defect", 1..6 follow DefectType's order.
DEFECT_TYPES: tuple[DefectType, ...] = tuple(DefectType)
# Regions of one type whose boxes (10 px margins included) share this much of the smaller
# box are pieces of one defect: a long open or a hairy spur whose pieces lie further apart
# than the ROI stage's merge_px. Merely touching boxes are not merged: on dense boards two
# defects of one type often sit side by side (benchmarks/merge_regions.py).
PIECE_OVERLAP = 0.2


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


def overlap_of_smaller(a: Box, b: Box) -> float:
    """The area the two boxes share, as a fraction of the smaller box (0 when disjoint)."""
    return a.intersection(b) / max(1, min(a.area, b.area))


def split_groups(
    boxes: Sequence[Box], kinds: Sequence[DefectType | None], min_overlap: float | None
) -> list[list[int]]:
    """Indices of regions that are pieces of one defect: the same type (not None) and boxes
    sharing at least ``min_overlap`` of the smaller one, transitively; every other region
    is a group of its own. Groups in order of their first member; None merges nothing."""
    if min_overlap is not None and not 0.0 < min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in (0, 1] or None, got {min_overlap}")
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if min_overlap is not None:
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                same = kinds[i] is not None and kinds[i] == kinds[j]
                if same and overlap_of_smaller(boxes[i], boxes[j]) >= min_overlap:
                    parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(boxes)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def union_box(boxes: Sequence[Box]) -> Box:
    return Box(
        x1=min(b.x1 for b in boxes),
        y1=min(b.y1 for b in boxes),
        x2=max(b.x2 for b in boxes),
        y2=max(b.y2 for b in boxes),
    )


def merge_pieces(
    regions: Sequence[RegionVerdict], min_overlap: float | None = PIECE_OVERLAP
) -> list[RegionVerdict]:
    """The regions with each defect's pieces (:func:`split_groups`) made one region: the
    union of their boxes, the highest score and type score. The board's score (the highest
    region score) is unchanged."""
    groups = split_groups([r.box for r in regions], [r.defect_type for r in regions], min_overlap)
    return [
        regions[g[0]]
        if len(g) == 1
        else regions[g[0]].model_copy(
            update={
                "box": union_box([regions[i].box for i in g]),
                "score": max(regions[i].score for i in g),
                "type_score": max(regions[i].type_score for i in g),
            }
        )
        for g in groups
    ]
