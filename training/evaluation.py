"""How good a model is on labelled DeepPCB pairs: DeepPCB's detection protocol (IoU > 0.33,
same type), ROI recall, board-level FNR/FPR/review rate (also calibrated on all validation
groups but one and measured on that one), speed, and ``linecheck evaluate``'s files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from board_data.deeppcb import write_detections
from inspection.backends import load_classifier
from inspection.model.registry import Thresholds, load_card
from inspection.verdict import region_verdicts
from training.calibration import calibrate_thresholds
from training.detection_metrics import ImageResult, detection_metrics, roi_recall
from training.scoring import PairResult, board_arrays, board_rates, makes_twins, score_pairs
from training.splits import eval_samples, model_val_groups

# The evaluation figures worth a line in a model card or a table, in reading order.
HEADLINE_METRICS = (
    "precision",
    "recall",
    "f_score",
    "map",
    "roi_recall",
    "candidates_per_board",
    "board_fnr",
    "board_fpr",
    "review_rate",
    "boards",
)


def card_metrics_row(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in HEADLINE_METRICS if k in m}


def evaluation_metrics(
    results: Sequence[PairResult], thresholds: Thresholds | None
) -> dict[str, Any]:
    """Detection metrics (DeepPCB protocol), ROI recall, board-level rates, speed, and the
    same per validation group."""

    def block(rs: Sequence[PairResult]) -> dict[str, Any]:
        det = detection_metrics([ImageResult(r.detections(), r.sample.truths) for r in rs])
        det["roi_recall"] = roi_recall([r.boxes for r in rs], [r.sample.truths for r in rs])
        det["candidates_per_board"] = float(np.mean([len(r.boxes) for r in rs]))
        det["boards"] = len(rs)
        if thresholds is not None:
            det.update(board_rates(*board_arrays(rs), thresholds))
        return det

    out = block(results)
    seconds = sum(r.seconds for r in results)
    out["images_per_s"] = len(results) / seconds if seconds > 0 else float("nan")
    groups = sorted({r.sample.group for r in results})
    out["per_group"] = {
        g: {
            k: v
            for k, v in block([r for r in results if r.sample.group == g]).items()
            if k != "per_class"
        }
        for g in groups
    }
    return out


def cross_group_board_rates(
    results: Sequence[PairResult], target_fnr: float = 0.001
) -> dict[str, dict[str, float | None]]:
    """Honest board-level rates: calibrate on every validation group but one, measure on that
    one (needs ≥ 2 groups). Keyed by the group measured."""
    groups = sorted({r.sample.group for r in results})
    out: dict[str, dict[str, float | None]] = {}
    if len(groups) < 2:
        return out
    for g in groups:
        fit = [r for r in results if r.sample.group != g]
        test = [r for r in results if r.sample.group == g]
        th = calibrate_thresholds(*board_arrays(fit), target_fnr=target_fnr)
        out[g] = board_rates(*board_arrays(test), th)
    return out


def evaluate_model(
    model_dir: Path,
    data: Path,
    split_file: Path | None,
    out: Path,
    *,
    variant: str = "fp32",
    draw: int = 0,
    seed: int = 0,
    threads: int | None = None,
    console: Console | None = None,
    roi: str | None = None,
    repeat_px: int | None = None,
) -> dict[str, Any]:
    """Write ``out/detections/<image id>.txt`` and ``out/metrics.json``; with ``draw`` N,
    pictures of N boards (boxes, types, CAM heatmaps of failed/doubtful regions) in
    ``out/boards/``. ``roi``: "reference" (against each pair's template) or "locator" (the
    model folder's learned locator, no template; templates only make the good twins, and
    without them there are no board-level rates); default: the card's mode. ``repeat_px``:
    instead of the locator's own repeat veto (:mod:`inspection.self_reference`; 0: off).
    Returns the metrics."""
    console = console or Console(stderr=True)
    card = load_card(model_dir)
    samples = eval_samples(data, split_file, model_val_groups(card))
    classifier = load_classifier(
        model_dir,
        backend="openvino",
        threads=threads,
        variant=variant,  # type: ignore[arg-type]
    )
    # spread the drawn boards over the set (several groups), worst-looking first is not needed
    drawn = (
        set(np.linspace(0, len(samples) - 1, draw).round().astype(int).tolist()) if draw else set()
    )
    roi = roi or ("locator" if card.mode == "locator" else "reference")
    locator = None
    if roi == "locator":
        from inspection.locator import Locator

        locator = Locator(model_dir, threads=threads)
        if repeat_px is not None:
            locator.params = replace(locator.params, repeat_px=repeat_px)
    twins = makes_twins(samples, locator)
    results = score_pairs(
        samples, classifier, console, seed=seed, keep=lambda i: i in drawn, locator=locator
    )
    det_dir = Path(out) / "detections"
    det_dir.mkdir(parents=True, exist_ok=True)
    for r in results:
        write_detections(det_dir / f"{r.sample.image_id}.txt", r.detections())
    metrics = evaluation_metrics(results, card.thresholds if twins else None)
    metrics["board_rates_cross_group"] = (
        cross_group_board_rates(results, card.thresholds.target_fnr if card.thresholds else 0.001)
        if twins
        else {}
    )
    metrics.update(
        {
            "model": card.version,
            "roi": roi,
            "repeat_px": locator.params.repeat_px if locator is not None else None,
            "variant": variant,
            "data": str(data),
            "split": str(split_file) if split_file else None,
            "groups": sorted({s.group for s in samples}),
            "thresholds": card.thresholds.model_dump() if card.thresholds else None,
        }
    )
    if drawn:
        _draw(model_dir, [r for r in results if r.crops is not None], Path(out) / "boards", card)
    (Path(out) / "metrics.json").write_text(
        json.dumps(json_ready(metrics), indent=2, allow_nan=False) + "\n"
    )
    return metrics


def json_ready(value: Any) -> Any:
    """NaN (a class without truths) becomes null; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _draw(model_dir: Path, results: Sequence[PairResult], folder: Path, card: Any) -> None:
    from inspection.explain import Explainer, save_explanation

    explainer = Explainer(model_dir)  # a model of views: its first view
    for r in results:
        assert r.image is not None and r.crops is not None
        regions = region_verdicts(r.boxes, r.probs)
        save_explanation(
            folder / f"{r.sample.image_id}.png",
            r.image,
            r.crops,
            regions,
            explainer.cam,
            card.thresholds,
            truths=[(t.box, t.defect_type.value) for t in r.sample.truths],
            title=f"{r.sample.group}/{r.sample.image_id} score {r.score:.3f} "
            f"green: truth, red: defect called",
            min_side=card.crop_min_side,
        )
