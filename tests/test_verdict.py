"""Board verdict rules and threshold calibration (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from inspection.model.registry import Thresholds
from inspection.verdict import (
    board_score,
    decide,
    merge_pieces,
    overlap_of_smaller,
    region_verdicts,
)
from schemas.events import Box, DefectType, GroundTruth, RegionVerdict, VerdictLabel
from training.calibration import calibrate_thresholds

T = Thresholds(pass_below=0.2, fail_at_or_above=0.8, threshold_version="t", target_fnr=0.001)


def test_decide_uses_both_thresholds() -> None:
    assert decide(T, 0.0) is VerdictLabel.PASS
    assert decide(T, 0.1999) is VerdictLabel.PASS
    assert decide(T, 0.2) is VerdictLabel.REVIEW
    assert decide(T, 0.7999) is VerdictLabel.REVIEW
    assert decide(T, 0.8) is VerdictLabel.FAIL


def test_region_verdicts_name_the_most_likely_defect_and_score_p_defective() -> None:
    boxes = [Box(x1=0, y1=0, x2=10, y2=10), Box(x1=20, y1=20, x2=30, y2=30)]
    probs = np.array(
        [
            [0.1, 0.0, 0.7, 0.1, 0.1, 0.0, 0.0],  # short
            [0.9, 0.02, 0.02, 0.02, 0.02, 0.01, 0.01],  # no defect
        ],
        dtype=np.float32,
    )
    first, second = region_verdicts(boxes, probs)
    assert first.defect_type is DefectType.SHORT and first.score == pytest.approx(0.9)
    assert first.type_score == pytest.approx(0.7)
    assert second.defect_type is None and second.score == pytest.approx(0.1)
    assert board_score([first, second]) == pytest.approx(0.9)
    assert board_score([]) == 0.0
    with pytest.raises(ValueError, match="shape"):
        region_verdicts(boxes, probs[:1])


def test_calibration_keeps_the_target_fnr_and_review_band_between_the_classes() -> None:
    rng = np.random.default_rng(0)
    good = rng.uniform(0.0, 0.5, 500)
    bad = rng.uniform(0.3, 1.0, 500)
    scores = np.concatenate([good, bad])
    defective = np.concatenate([np.zeros(500, bool), np.ones(500, bool)])
    t = calibrate_thresholds(scores, defective, target_fnr=0.001, target_fpr=0.01)
    escapes = np.sum(bad < t.pass_below)
    false_calls = np.sum(good >= t.fail_at_or_above)
    assert escapes <= 0.001 * 500
    assert false_calls <= 0.01 * 500
    assert t.pass_below < t.fail_at_or_above  # overlapping classes leave a review band
    assert t.target_fnr == 0.001


def test_calibration_closes_the_band_when_the_classes_separate() -> None:
    scores = np.array([0.01, 0.05, 0.1, 0.9, 0.95, 0.99])
    defective = np.array([False, False, False, True, True, True])
    t = calibrate_thresholds(scores, defective)
    assert t.pass_below == t.fail_at_or_above
    assert 0.1 < t.pass_below < 0.9


def test_calibration_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="defective and good"):
        calibrate_thresholds(np.array([0.5, 0.6]), np.array([True, True]))


def _region(box: tuple[int, int, int, int], kind: DefectType | None, score: float) -> RegionVerdict:
    x1, y1, x2, y2 = box
    return RegionVerdict(
        box=Box(x1=x1, y1=y1, x2=x2, y2=y2), defect_type=kind, score=score, type_score=score
    )


def test_pieces_of_one_defect_become_one_region_and_other_regions_stay() -> None:
    spur, open_ = DefectType.SPUR, DefectType.OPEN
    regions = [
        _region((127, 91, 184, 149), spur, 0.99),  # two pieces of one hairy spur (DeepPCB)
        _region((147, 104, 202, 157), spur, 0.9),
        _region((202, 91, 240, 149), spur, 0.8),  # touches the union: another spur
        _region((150, 140, 180, 170), open_, 0.95),  # overlaps the spur but another type
        _region((130, 95, 150, 115), None, 0.1),  # inside, but no defect: kept as it is
        _region((300, 300, 330, 330), spur, 0.7),  # a chain of three pieces
        _region((310, 310, 340, 340), spur, 0.6),
        _region((320, 320, 350, 350), spur, 0.75),
        _region((400, 400, 430, 430), spur, 0.7),  # corners overlapping by 4 %: two spurs
        _region((424, 424, 454, 454), spur, 0.7),
    ]
    merged = merge_pieces(regions, min_overlap=0.2)
    assert [(r.box.x1, r.box.y1, r.box.x2, r.box.y2) for r in merged] == [
        (127, 91, 202, 157), (202, 91, 240, 149), (150, 140, 180, 170), (130, 95, 150, 115),
        (300, 300, 350, 350), (400, 400, 430, 430), (424, 424, 454, 454),
    ]  # fmt: skip
    assert [r.defect_type for r in merged] == [spur, spur, open_, None, spur, spur, spur]
    assert merged[0].score == 0.99 and merged[4].score == 0.75
    assert board_score(merged) == board_score(regions)
    assert len(merge_pieces(regions, min_overlap=0.01)) == 6  # now the corners count too
    assert merge_pieces(regions, min_overlap=None) == regions
    with pytest.raises(ValueError, match="min_overlap"):
        merge_pieces(regions, min_overlap=0.0)  # would merge every region of a type


def test_overlap_of_smaller_is_the_shared_part_of_the_smaller_box() -> None:
    a = Box(x1=0, y1=0, x2=10, y2=10)
    assert overlap_of_smaller(a, Box(x1=10, y1=0, x2=20, y2=10)) == 0.0  # touching
    assert overlap_of_smaller(a, Box(x1=5, y1=0, x2=30, y2=10)) == 0.5
    assert overlap_of_smaller(a, Box(x1=2, y1=2, x2=4, y2=4)) == 1.0  # inside
    assert overlap_of_smaller(a, Box(x1=20, y1=20, x2=30, y2=30)) == 0.0


def test_evaluation_counts_a_split_defect_once_as_the_worker_reports_it() -> None:
    from training.detection_metrics import match_image
    from training.scoring import detections_of

    boxes = [Box(x1=396, y1=180, x2=448, y2=209), Box(x1=430, y1=181, x2=484, y2=206)]
    probs = np.zeros((2, 7), np.float32)
    probs[:, 1] = 0.9  # both pieces called opens
    probs[:, 0] = 0.1
    truth = GroundTruth(box=Box(x1=396, y1=180, x2=484, y2=205), defect_type=DefectType.OPEN)
    dets = detections_of(boxes, probs)
    assert [(d[0].x1, d[0].x2, d[2]) for d in dets] == [(396, 484, DefectType.OPEN)]
    assert match_image(dets, [truth]) == [True]  # unmerged: one hit and one false positive
