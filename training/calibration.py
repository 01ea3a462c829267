"""Board-level thresholds from validation scores: a target FNR first, then the least review
(``calibrate_thresholds``); ``calibrate_model`` re-chooses a registered model's thresholds on
labelled DeepPCB-layout data (``linecheck calibrate``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

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


def calibrate_model(
    model_dir: Path,
    data: Path,
    split_file: Path | None = None,
    *,
    target_fnr: float = 0.001,
    seed: int = 0,
    threads: int | None = None,
    console: Console | None = None,
) -> tuple[Thresholds, dict[str, Any]]:
    """Re-choose a registered model's thresholds on labelled DeepPCB-layout data and store
    them in its card (never in the graph). Returns the thresholds and the rates they give."""
    from inspection.backends import load_classifier
    from inspection.model.registry import load_card, update_card
    from training.scoring import board_arrays, board_rates, score_pairs
    from training.splits import eval_samples, model_val_groups

    console = console or Console(stderr=True)
    samples = eval_samples(data, split_file, model_val_groups(load_card(model_dir)))
    classifier = load_classifier(model_dir, backend="openvino", threads=threads)
    results = score_pairs(samples, classifier, console, seed=seed)
    scores, defective = board_arrays(results)
    thresholds = calibrate_thresholds(scores, defective, target_fnr=target_fnr)
    rates = board_rates(scores, defective, thresholds)
    card = load_card(model_dir)
    metrics = {
        **card.metrics,
        "calibration": {"data": str(data), "pairs": len(samples), **rates},
    }
    update_card(model_dir, card.model_copy(update={"thresholds": thresholds, "metrics": metrics}))
    return thresholds, rates
