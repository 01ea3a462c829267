"""Board verdict rules and threshold calibration (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from inspection.model.registry import Thresholds
from inspection.verdict import board_score, box_gap, decide, merge_pieces, region_verdicts
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
        _region((102, 58, 131, 95), spur, 0.9),  # two halves of one hairy spur, touching
        _region((71, 63, 101, 95), spur, 0.99),
        _region((140, 58, 170, 95), spur, 0.8),  # 9 px further: another spur
        _region((100, 96, 130, 120), open_, 0.95),  # touches the spur but is another type
        _region((60, 60, 80, 80), None, 0.1),  # overlaps, but no defect: kept as it is
        _region((300, 300, 330, 330), spur, 0.7),  # a third piece chain: 3 overlapping
        _region((320, 320, 350, 350), spur, 0.6),
        _region((340, 340, 370, 370), spur, 0.75),
    ]
    merged = merge_pieces(regions, gap_px=2)
    assert [(r.box.x1, r.box.y1, r.box.x2, r.box.y2) for r in merged] == [
        (71, 58, 131, 95), (140, 58, 170, 95), (100, 96, 130, 120), (60, 60, 80, 80),
        (300, 300, 370, 370),
    ]  # fmt: skip
    assert [r.defect_type for r in merged] == [spur, spur, open_, None, spur]
    assert merged[0].score == 0.99 and merged[-1].score == 0.75
    assert board_score(merged) == board_score(regions)
    assert len(merge_pieces(regions, gap_px=10)) == 4  # 9 px apart: now the same defect
    assert merge_pieces(regions, gap_px=-1) == regions


def test_box_gap_is_zero_when_touching_and_negative_when_overlapping() -> None:
    a = Box(x1=0, y1=0, x2=10, y2=10)
    assert box_gap(a, Box(x1=10, y1=0, x2=20, y2=10)) == 0
    assert box_gap(a, Box(x1=13, y1=5, x2=20, y2=10)) == 3
    assert box_gap(a, Box(x1=5, y1=5, x2=20, y2=20)) == -1
    assert box_gap(a, Box(x1=12, y1=15, x2=20, y2=20)) == 5  # diagonal: the larger gap


def test_evaluation_counts_a_split_defect_once_as_the_worker_reports_it() -> None:
    from training.detection_metrics import match_image
    from training.scoring import detections_of

    boxes = [Box(x1=396, y1=180, x2=438, y2=209), Box(x1=438, y1=181, x2=484, y2=206)]
    probs = np.zeros((2, 7), np.float32)
    probs[:, 1] = 0.9  # both pieces called opens
    probs[:, 0] = 0.1
    truth = GroundTruth(box=Box(x1=396, y1=180, x2=484, y2=205), defect_type=DefectType.OPEN)
    dets = detections_of(boxes, probs)
    assert [(d[0].x1, d[0].x2, d[2]) for d in dets] == [(396, 484, DefectType.OPEN)]
    assert match_image(dets, [truth]) == [True]  # unmerged: one hit and one false positive
