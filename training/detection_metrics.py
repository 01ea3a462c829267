"""Detection metrics in DeepPCB's protocol (pure functions, numpy only).

A detection is a true positive when its IoU with a not yet matched ground-truth box *of the
same type* is above 0.33; detections are matched in order of decreasing confidence (VOC
style), so a second detection of one defect is a false positive. AP per class is VOC's
all-point interpolated area under the precision/recall curve; mAP is its mean over the six
defect types. Precision, recall and F-score count every detection given (the detector's
own decision: a region the classifier calls "none" is not a detection).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from schemas.events import Box, DefectType, GroundTruth

IOU_THRESHOLD = 0.33
Detection = tuple[Box, float, DefectType]


@dataclass(frozen=True)
class ImageResult:
    detections: Sequence[Detection]
    truths: Sequence[GroundTruth]


def match_image(
    detections: Sequence[Detection], truths: Sequence[GroundTruth], iou: float = IOU_THRESHOLD
) -> list[bool]:
    """True/false positive per detection (in the given order), matched greedily by
    decreasing confidence to the best same-type truth above ``iou`` not yet taken."""
    order = sorted(range(len(detections)), key=lambda i: -detections[i][1])
    taken = [False] * len(truths)
    hit = [False] * len(detections)
    for i in order:
        box, _, kind = detections[i]
        best, best_j = iou, -1
        for j, t in enumerate(truths):
            if t.defect_type != kind:
                continue
            o = box.iou(t.box)
            if o > best:
                best, best_j = o, j
        if best_j >= 0 and not taken[best_j]:
            taken[best_j] = True
            hit[i] = True
    return hit


def average_precision(confidences: np.ndarray, hits: np.ndarray, n_truths: int) -> float:
    """VOC all-point AP from each detection's confidence and TP flag; NaN without truths."""
    if n_truths == 0:
        return float("nan")
    if len(confidences) == 0:
        return 0.0
    order = np.argsort(-np.asarray(confidences, np.float64), kind="stable")
    tp = np.asarray(hits, np.float64)[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(1.0 - tp)
    recall = ctp / n_truths
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _f(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def detection_metrics(
    results: Sequence[ImageResult], iou: float = IOU_THRESHOLD
) -> dict[str, object]:
    """precision, recall, f_score, map, and per class: ap, precision, recall, truths."""
    conf: dict[DefectType, list[float]] = {t: [] for t in DefectType}
    hits: dict[DefectType, list[bool]] = {t: [] for t in DefectType}
    n_truth = dict.fromkeys(DefectType, 0)
    for r in results:
        for d, h in zip(r.detections, match_image(r.detections, r.truths, iou), strict=True):
            conf[d[2]].append(d[1])
            hits[d[2]].append(h)
        for truth in r.truths:
            n_truth[truth.defect_type] += 1
    per_class: dict[str, dict[str, float | int]] = {}
    aps = []
    for t in DefectType:
        tp, n_det = int(sum(hits[t])), len(hits[t])
        ap = average_precision(np.asarray(conf[t]), np.asarray(hits[t], bool), n_truth[t])
        if not np.isnan(ap):
            aps.append(ap)
        per_class[t.value] = {
            "ap": ap,
            "precision": tp / n_det if n_det else 0.0,
            "recall": tp / n_truth[t] if n_truth[t] else float("nan"),
            "detections": n_det,
            "truths": n_truth[t],
        }
    tp = sum(sum(h) for h in hits.values())
    n_det = sum(len(h) for h in hits.values())
    n_gt = sum(n_truth.values())
    precision = tp / n_det if n_det else 0.0
    recall = tp / n_gt if n_gt else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f_score": _f(precision, recall),
        "map": float(np.mean(aps)) if aps else float("nan"),
        "true_positives": tp,
        "detections": n_det,
        "truths": n_gt,
        "per_class": per_class,
    }


def roi_recall(
    candidates: Sequence[Sequence[Box]],
    truths: Sequence[Sequence[GroundTruth]],
    iou: float = IOU_THRESHOLD,
) -> float:
    """Share of truth boxes with at least one candidate box above ``iou`` (type-blind)."""
    found = total = 0
    for boxes, ts in zip(candidates, truths, strict=True):
        for t in ts:
            total += 1
            found += any(b.iou(t.box) > iou for b in boxes)
    return found / total if total else float("nan")
