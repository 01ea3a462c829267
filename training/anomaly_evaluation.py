"""``linecheck evaluate --data DIR`` with an anomaly model on a class-folder set: image AUROC,
pixel AUROC (over the images with masks), per-class detection rates at the calibrated
thresholds, board FNR / FPR, images/s (``metrics.json``) and one row per image
(``scores.csv``: ``path,score,label``, label 1 = defective) to recompute the AUROC from."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from board_data.class_folders import ClassImage, class_images, split_anomaly_set
from infra.progress import progress_bar


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count one half); None without both classes."""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(positive, bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # average 1-based rank of each tie group
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def anomaly_items(data: Path, good_class: str, *, held_out: bool, seed: int) -> list[ClassImage]:
    """The images to evaluate: all of ``data``, or with ``held_out`` only the test part of
    the split training made (same good class and seed)."""
    items = class_images(data)
    if not items:
        raise ValueError(f"no class subfolders with images in {data}")
    if held_out:
        return split_anomaly_set(items, good_class, seed=seed)["test"]
    return items


def evaluate_anomaly(
    model_dir: Path,
    data: Path,
    out: Path,
    *,
    held_out: bool = False,
    draw: int = 0,
    threads: int | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Score every image with the served model (OpenVINO); write ``OUT/metrics.json``,
    ``OUT/scores.csv`` and, with ``draw``, the first N defective images' maps in
    ``OUT/maps/``. Returns the metrics."""
    import cv2

    from inspection.anomaly import AnomalyDetector, overlay

    console = console or Console(stderr=True)
    detector = AnomalyDetector(model_dir, threads=threads)
    card, th = detector.card, detector.thresholds
    good_class = str(card.metrics.get("good_class", ""))
    seed = int(card.metrics.get("split_seed", 0))
    items = anomaly_items(data, good_class, held_out=held_out, seed=seed)
    if good_class not in {i.cls for i in items}:
        console.log(f"[yellow]no images of the good class {good_class!r} in {data}[/yellow]")
    out.mkdir(parents=True, exist_ok=True)
    if draw:
        (out / "maps").mkdir(exist_ok=True)
    scores: list[float] = []
    pixel_scores: list[np.ndarray] = []
    pixel_truth: list[np.ndarray] = []
    drawn, seconds = 0, 0.0
    with progress_bar(console, f"scoring {len(items)} images", len(items)) as step:
        for item in items:
            image = item.load()
            t0 = time.perf_counter()
            result = detector.score(image)
            seconds += time.perf_counter() - t0
            scores.append(result.score)
            mask = item.load_mask(image.shape)
            if mask is not None:
                pixel_scores.append(result.amap.ravel())
                pixel_truth.append(mask.ravel())
            if draw and drawn < draw and item.cls != good_class:
                picture = overlay(image, result.amap)
                for b in result.regions:
                    cv2.rectangle(picture, (b.x1, b.y1), (b.x2 - 1, b.y2 - 1), (255, 255, 255))
                cv2.imwrite(str(out / "maps" / f"{item.cls}_{item.path.stem}.jpg"), picture)
                drawn += 1
            step()
    s = np.asarray(scores)
    defective = np.asarray([i.cls != good_class for i in items], bool)
    passed, failed = s < th.pass_below, s >= th.fail_at_or_above
    per_class: dict[str, dict[str, Any]] = {}
    for cls in sorted({i.cls for i in items}):
        sel = np.asarray([i.cls == cls for i in items], bool)
        n = int(sel.sum())
        per_class[cls] = {
            "images": n,
            "detection_rate": _rate(int((~passed & sel).sum()), n),  # failed or to review
            "fail_rate": _rate(int((failed & sel).sum()), n),
            "image_auroc": auroc(s[sel | ~defective], defective[sel | ~defective])
            if cls != good_class
            else None,
        }
    metrics: dict[str, Any] = {
        "model": card.version,
        "data": str(data),
        "held_out": held_out,
        "images": len(items),
        "defective_images": int(defective.sum()),
        "image_auroc": auroc(s, defective),
        "pixel_auroc": (
            auroc(np.concatenate(pixel_scores), np.concatenate(pixel_truth))
            if pixel_scores
            else None
        ),
        "per_class": per_class,
        "board_fnr": _rate(int((passed & defective).sum()), int(defective.sum())),
        "board_fpr": _rate(int((failed & ~defective).sum()), int((~defective).sum())),
        "review_rate": _rate(int((~passed & ~failed).sum()), len(items)),
        "thresholds": th.model_dump(),
        "images_per_s": len(items) / max(seconds, 1e-9),
    }
    write_scores(out / "scores.csv", [i.path.relative_to(data) for i in items], s, defective)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return metrics


def write_scores(
    path: Path, names: Sequence[Path], scores: np.ndarray, defective: np.ndarray
) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "score", "label"])
        for name, score, label in zip(names, scores, defective, strict=True):
            writer.writerow([name.as_posix(), f"{score:.8f}", int(label)])
