"""DeepPCB's detection protocol: matching, F-score and VOC AP on hand-made detections."""

from __future__ import annotations

import math

import numpy as np
import pytest

from schemas.events import Box, DefectType, GroundTruth
from training.detection_metrics import (
    ImageResult,
    average_precision,
    detection_metrics,
    match_image,
    roi_recall,
)

OPEN, SHORT = DefectType.OPEN, DefectType.SHORT


def B(x1: int, y1: int, x2: int, y2: int) -> Box:
    return Box(x1=x1, y1=y1, x2=x2, y2=y2)


def GT(box: Box, kind: DefectType) -> GroundTruth:
    return GroundTruth(box, kind)


def test_match_needs_same_type_and_iou_above_one_third() -> None:
    truths = [GT(B(0, 0, 10, 10), OPEN)]
    # IoU 0.5 same type: hit; same box other type: miss
    assert match_image([(B(0, 0, 10, 20), 0.9, OPEN)], truths) == [True]
    assert match_image([(B(0, 0, 10, 10), 0.9, SHORT)], truths) == [False]
    # the threshold is IoU > 0.33: 100/310 = 0.323 misses, 100/300 = 0.333 hits
    assert match_image([(B(0, 0, 10, 31), 0.9, OPEN)], truths) == [False]
    assert match_image([(B(0, 0, 10, 30), 0.9, OPEN)], truths) == [True]


def test_a_second_detection_of_one_defect_is_a_false_positive() -> None:
    truths = [GT(B(0, 0, 10, 10), OPEN)]
    dets = [(B(0, 0, 10, 12), 0.6, OPEN), (B(0, 0, 10, 10), 0.9, OPEN)]
    assert match_image(dets, truths) == [False, True]  # the more confident one wins


def test_f_score_and_map_on_known_answers() -> None:
    # image 1: two opens found, one false short; image 2: one short found, one short missed
    r1 = ImageResult(
        [
            (B(0, 0, 10, 10), 0.9, OPEN),
            (B(50, 50, 60, 60), 0.8, OPEN),
            (B(100, 100, 110, 110), 0.7, SHORT),
        ],
        [GT(B(0, 0, 10, 10), OPEN), GT(B(50, 50, 60, 60), OPEN)],
    )
    r2 = ImageResult(
        [(B(0, 0, 10, 10), 0.95, SHORT)],
        [GT(B(0, 0, 10, 10), SHORT), GT(B(200, 200, 220, 220), SHORT)],
    )
    m = detection_metrics([r1, r2])
    assert m["true_positives"] == 3 and m["detections"] == 4 and m["truths"] == 4
    assert m["precision"] == pytest.approx(0.75) and m["recall"] == pytest.approx(0.75)
    assert m["f_score"] == pytest.approx(0.75)
    per = m["per_class"]
    assert isinstance(per, dict)
    assert per["open"]["ap"] == pytest.approx(1.0)
    # short: ranked hit (0.95), false (0.7); recall 0.5 at precision 1 -> AP 0.5
    assert per["short"]["ap"] == pytest.approx(0.5)
    assert per["short"]["precision"] == pytest.approx(0.5)
    assert per["short"]["recall"] == pytest.approx(0.5)
    assert math.isnan(per["spur"]["ap"])  # no truths: left out of the mean
    assert m["map"] == pytest.approx(0.75)


def test_average_precision_is_voc_all_point() -> None:
    # hits at ranks 1 and 3 of 3 detections, 2 truths: AP = 0.5*1 + 0.5*(2/3)
    ap = average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2)
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(np.array([]), np.array([], bool), 3) == 0.0
    assert math.isnan(average_precision(np.array([0.5]), np.array([False]), 0))
    # the order comes from the confidences, not from the input order
    ap2 = average_precision(np.array([0.7, 0.8, 0.9]), np.array([True, False, True]), 2)
    assert ap2 == pytest.approx(ap)


def test_roi_recall_is_type_blind() -> None:
    truths = [[GT(B(0, 0, 10, 10), OPEN), GT(B(40, 40, 50, 50), SHORT)], [GT(B(0, 0, 8, 8), OPEN)]]
    candidates = [[B(0, 0, 10, 12), B(100, 100, 120, 120)], [B(0, 0, 8, 8)]]
    assert roi_recall(candidates, truths) == pytest.approx(2 / 3)
