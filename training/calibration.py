"""Board-level thresholds from validation scores: a target FNR first, then the least review."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from inspection.model.registry import Thresholds


def calibrate_thresholds(
    scores: np.ndarray,
    defective: np.ndarray,
    target_fnr: float = 0.001,
    target_fpr: float = 0.01,
    margin: float = 0.02,
) -> Thresholds:
    """Choose (pass_below, fail_at_or_above) on labelled board scores.

    pass_below: the highest threshold whose escape rate (defective boards scoring below it)
    stays ≤ target_fnr, less a safety margin. fail_at_or_above: the lowest threshold whose
    false-call rate (good boards scoring at or above it) stays ≤ target_fpr, plus the margin.
    Boards between the two go to review; when the classes separate, the band closes.
    """
    scores = np.asarray(scores, dtype=np.float64)
    defective = np.asarray(defective, dtype=bool)
    if scores.shape != defective.shape or scores.ndim != 1:
        raise ValueError(
            f"scores {scores.shape} and labels {defective.shape} must be equal 1-D shapes"
        )
    pos, neg = np.sort(scores[defective]), np.sort(scores[~defective])
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"calibration needs defective and good boards ({len(pos)} / {len(neg)})")
    # Allow floor(target_fnr * n) escapes: pass_below sits at the next defective score.
    allowed_fn = int(np.floor(target_fnr * len(pos)))
    pass_below = float(np.clip(pos[allowed_fn] - margin, 0.0, 1.0))
    allowed_fp = int(np.floor(target_fpr * len(neg)))
    fail_at = float(np.clip(neg[len(neg) - 1 - allowed_fp] + margin, 0.0, 1.0))
    if fail_at < pass_below:  # separated: one cut in the middle of the gap, no review band
        pass_below = fail_at = (pass_below + fail_at) / 2
    fail_at = max(fail_at, pass_below)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Thresholds(
        pass_below=pass_below,
        fail_at_or_above=fail_at,
        threshold_version=f"cal-{stamp}",
        target_fnr=target_fnr,
    )
