"""Board verdict rules and threshold calibration (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from inspection.model.registry import Thresholds
from inspection.verdict import board_score, decide, region_verdicts
from schemas.events import Box, DefectType, VerdictLabel
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
