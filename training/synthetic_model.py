"""Training on synthetic boards: the model the demo uses when none is registered.

Boards from the generator → ROI candidates (labelled by IoU with the true boxes), the true
boxes themselves, and random defect-free regions → crops → the CNN → thresholds calibrated on
held-out boards at board level → a versioned model folder with OpenVINO IR.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from infra.progress import progress_bar
from infra.settings import Settings
from inspection.crops import CROP_SIZE

if TYPE_CHECKING:
    from board_data.synthetic import BoardGenerator, SyntheticBoard
    from inspection.backends.base import Classifier
    from inspection.model.nets import Arch


@dataclass
class CropSet:
    crops: np.ndarray  # (N, 3, S, S) uint8
    labels: np.ndarray  # (N,) int64


def board_crops(
    board: SyntheticBoard, rng: np.random.Generator, size: int, negatives: int = 4
) -> CropSet:
    from inspection.crops import label_candidates, make_crops
    from inspection.roi import find_regions_aligned
    from training.crop_table import random_boxes

    truths = list(board.defects)
    candidates, aligned = find_regions_aligned(board.image, board.template)
    labels = label_candidates(candidates, truths)
    gt_boxes = [t.box for t in truths]
    negative_boxes = random_boxes(rng, board.image.shape, gt_boxes, negatives, sizes=(10, 60))
    boxes = [*candidates, *gt_boxes, *negative_boxes]
    labels = [
        *labels,
        *(t.defect_type.deeppcb_id for t in truths),
        *([0] * (len(boxes) - len(labels) - len(truths))),
    ]
    crops = make_crops(board.image, aligned, boxes, size=size, aligned=True)
    return CropSet(crops, np.asarray(labels, dtype=np.int64))


def build_crop_set(
    gen: BoardGenerator, indices: range, size: int, seed: int, console: Console, what: str
) -> CropSet:
    rng = np.random.default_rng(seed)
    parts: list[CropSet] = []
    with progress_bar(console, f"cropping {what} boards", len(indices)) as step:
        for i in indices:
            parts.append(board_crops(gen.board(i), rng, size))
            step()
    return CropSet(
        np.concatenate([p.crops for p in parts]), np.concatenate([p.labels for p in parts])
    )


def board_scores(
    gen: BoardGenerator, indices: range, classifier: Classifier, console: Console
) -> tuple[np.ndarray, np.ndarray]:
    """Board scores (max region P(defect)) and truths, through the same path workers use."""
    from inspection.crops import make_crops
    from inspection.roi import find_regions_aligned
    from inspection.verdict import board_score, region_verdicts

    scores, truths = [], []
    with progress_bar(console, "calibrating on held-out boards", len(indices)) as step:
        for i in indices:
            board = gen.board(i)
            boxes, aligned = find_regions_aligned(board.image, board.template)
            probs = classifier.predict_proba(
                make_crops(board.image, aligned, boxes, CROP_SIZE, aligned=True)
            )
            scores.append(board_score(region_verdicts(boxes, probs)))
            truths.append(board.defective)
            step()
    return np.asarray(scores), np.asarray(truths)


def train_synthetic(
    settings: Settings,
    *,
    boards: int = 240,
    arch: Arch = "small",
    epochs: int = 8,
    seed: int = 0,
    version: str | None = None,
    console: Console | None = None,
) -> Path:
    """Train, calibrate and register a model on synthetic boards; return its folder."""
    import torch

    from board_data.synthetic import BoardGenerator
    from inspection.backends.torch_backend import TorchClassifier
    from inspection.model.registry import ModelCard, data_hash, save_model, update_card
    from training.calibration import calibrate_thresholds
    from training.trainer import train_with_progress

    console = console or Console(stderr=True)
    started = time.monotonic()
    gen = BoardGenerator(seed=seed)
    n_val = max(40, boards // 4)
    train_idx, val_idx = range(boards), range(boards, boards + n_val)
    train_set = build_crop_set(gen, train_idx, CROP_SIZE, seed, console, "training")
    val_set = build_crop_set(gen, val_idx, CROP_SIZE, seed + 1, console, "validation")
    console.log(
        f"{len(train_set.labels)} training crops, {len(val_set.labels)} validation crops; "
        f"class counts {np.bincount(train_set.labels, minlength=7).tolist()}"
    )
    result = train_with_progress(
        console,
        train_set.crops,
        train_set.labels,
        val_set.crops,
        val_set.labels,
        arch=arch,
        epochs=epochs,
        seed=seed,
    )
    module = result.module
    version = version or time.strftime("syn-%Y%m%d-%H%M%S", time.gmtime())
    card = ModelCard(
        version=version,
        arch=arch,
        input_size=CROP_SIZE,
        metrics={"region_val": result.metrics, "train_boards": boards, "val_boards": n_val},
        training_data_hash=data_hash(f"synthetic:seed={seed}:board={i}" for i in train_idx),
        torch_version=torch.__version__,
    )
    model_dir = save_model(module, card, settings.model.models_dir)
    # Thresholds come from board scores on held-out boards, through the serving path.
    scores, truths = board_scores(gen, val_idx, TorchClassifier(model_dir), console)
    thresholds = calibrate_thresholds(scores, truths)
    card = card.model_copy(
        update={
            "thresholds": thresholds,
            "metrics": {
                **card.metrics,
                "calibration_boards": len(truths),
                "train_seconds": time.monotonic() - started,
            },
        }
    )
    update_card(model_dir, card)
    console.log(
        f"model {version} in {model_dir} · thresholds pass<{thresholds.pass_below:.3f} "
        f"fail≥{thresholds.fail_at_or_above:.3f} · {time.monotonic() - started:.0f}s"
    )
    return model_dir


def ensure_model(settings: Settings, console: Console | None = None) -> Path:
    """The configured model version; trains one on synthetic boards if none is registered."""
    from inspection.model.registry import resolve_model

    console = console or Console(stderr=True)
    try:
        return resolve_model(settings.model.models_dir, settings.model.version)
    except FileNotFoundError:
        if settings.model.version != "latest":
            raise
    console.log(f"no model in {settings.model.models_dir}: training one on synthetic boards")
    return train_synthetic(settings, console=console)
