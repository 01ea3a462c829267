"""``linecheck evaluate --data DIR`` on a folder of class-labelled images (NEU-DET) with a
multi-class model: accuracy, per-class precision / recall / F1, the confusion matrix
(``metrics.json``) and every image's scores (``scores.csv``)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from board_data.image_folder import labelled_images, load_labelled_images


def classification_metrics(
    truth: np.ndarray, predicted: np.ndarray, classes: tuple[str, ...]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support (None where undefined), confusion."""
    k = len(classes)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    per_class: dict[str, dict[str, float | int | None]] = {}
    for i, name in enumerate(classes):
        tp = int(confusion[i, i])
        called, support = int(confusion[:, i].sum()), int(confusion[i].sum())
        precision = tp / called if called else None
        recall = tp / support if support else None
        f1 = (
            2 * precision * recall / (precision + recall)
            if precision is not None and recall is not None and precision + recall > 0
            else None
        )
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    f1s = [r["f1"] for r in per_class.values() if r["f1"] is not None]
    return {
        "images": len(truth),
        "accuracy": float((truth == predicted).mean()) if len(truth) else None,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "per_class": per_class,
        "classes": list(classes),
        "confusion": confusion.tolist(),  # rows: true class, columns: predicted
    }


def evaluate_classifier(
    model_dir: Path,
    data: Path,
    out: Path,
    *,
    indices: np.ndarray | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Score the images of ``data`` (or those at ``indices`` of its sorted list)."""
    from inspection.backends import load_classifier
    from inspection.model.registry import load_card

    card = load_card(model_dir)
    items = labelled_images(data)
    if not items:
        raise ValueError(f"no <class>_<n>.<ext> images in {data}")
    unknown = sorted({c for _, c in items} - set(card.classes))
    if unknown:
        raise ValueError(f"classes {unknown} in {data} are not the model's {list(card.classes)}")
    if indices is not None:
        items = [items[i] for i in indices]
    truth = np.asarray([card.classes.index(c) for _, c in items], np.int64)
    x = load_labelled_images(items, card.input_size)
    classifier = load_classifier(model_dir, backend="openvino", threads=threads)
    t0 = time.perf_counter()
    probs = classifier.predict_proba(x)
    seconds = time.perf_counter() - t0
    predicted = probs.argmax(1)
    metrics = classification_metrics(truth, predicted, card.classes)
    metrics.update(
        {"model": card.version, "data": str(data), "images_per_s": len(x) / max(seconds, 1e-9)}
    )
    out.mkdir(parents=True, exist_ok=True)
    with (out / "scores.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "true", "predicted", *(f"p_{c}" for c in card.classes)])
        for (path, cls), row, p in zip(items, probs, predicted, strict=True):
            writer.writerow([path.name, cls, card.classes[p], *(f"{v:.6f}" for v in row)])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return metrics
