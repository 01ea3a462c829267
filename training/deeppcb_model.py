"""``linecheck train --data DIR`` on DeepPCB's layout: crops of the training groups' pairs
(``training.crop_table``), the CNN trained with the best epoch kept by validation loss,
the model registered, board-level thresholds calibrated on the held-out groups (each pair's
template, misregistered and scanned, stands in for a good board), the INT8 IR made with
NNCF, and the validation metrics written in the model card."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from infra.progress import progress_bar
from inspection.crops import CROP_MIN_SIDE, CROP_SIZE
from training.evaluation import card_metrics_row, evaluation_metrics
from training.scoring import board_arrays, score_pairs
from training.splits import samples_of, split_deeppcb

if TYPE_CHECKING:
    from inspection.model.nets import Arch


def train_deeppcb(
    models_dir: Path,
    data: Path,
    split_file: Path | None = None,
    *,
    arch: Arch = "small",
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    threads: int | None = None,
    version: str | None = None,
    target_fnr: float = 0.001,
    int8: bool = True,
    cache_dir: Path | None = Path(".linecheck/cache"),
    exclude_groups: tuple[str, ...] = (),
    topology: bool = True,
    crop_min_side: int = CROP_MIN_SIDE,
    console: Console | None = None,
) -> Path:
    """Train on the training groups, keep the best epoch by validation loss, register the
    model, calibrate its thresholds on the validation groups (board level), quantize to INT8,
    and record validation metrics in the card. ``exclude_groups``: board groups left out
    altogether (the fold being measured, in cross-validation). ``topology``: count the
    topology prior on the training crops (:mod:`inspection.model.topology`).
    ``crop_min_side``: the smallest square a crop is cut from (recorded in the card, so
    serving cuts the same). Returns the model folder."""
    import torch

    from inspection.backends import load_classifier
    from inspection.model.labels import CLASSES
    from inspection.model.registry import ModelCard, data_hash, save_model, update_card
    from inspection.model.topology import as_rows, likelihood_bias, signatures
    from training.calibration import calibrate_thresholds
    from training.crop_table import build_table
    from training.trainer import train_with_progress

    console = console or Console(stderr=True)
    started = time.monotonic()
    every = samples_of(data)
    samples = [s for s in every if s.group not in exclude_groups]  # e.g. a CV fold's test group
    train_s, val_s = split_deeppcb(samples, data, split_file)
    # crops of every pair, cached once: each fold of a cross-validation selects from them
    with progress_bar(console, "cropping DeepPCB pairs", len(every)) as step:
        table = build_table(
            data, every, CROP_SIZE, seed, cache_dir, lambda i, n: step(), crop_min_side
        )
    train_t = table.select(table.in_images([s.image_id for s in train_s]))
    val_t = table.select(table.in_images([s.image_id for s in val_s]))
    val_groups = sorted({s.group for s in val_s})
    console.log(
        f"{len(train_s)} training pairs ({len(train_t.labels)} crops), {len(val_s)} validation "
        f"pairs in {', '.join(val_groups)} ({len(val_t.labels)} crops)"
    )
    result = train_with_progress(
        console,
        train_t.crops,
        train_t.labels,
        val_t.crops,
        val_t.labels,
        arch=arch,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        threads=threads,
    )
    bias = None
    if topology:
        with console.status("topology signatures of the training crops"):
            bias = likelihood_bias(signatures(train_t.crops), train_t.labels, len(CLASSES))
    version = version or time.strftime(f"deeppcb-{arch}-%Y%m%d-%H%M%S", time.gmtime())
    card = ModelCard(
        version=version,
        arch=arch,
        input_size=CROP_SIZE,
        crop_min_side=crop_min_side,
        metrics={
            "region_val": result.metrics,
            "data": str(data),
            "train_groups": sorted({s.group for s in train_s}),
            "val_groups": val_groups,
            "train_pairs": len(train_s),
            "val_pairs": len(val_s),
        },
        topology_bias=as_rows(bias),
        training_data_hash=data_hash(f"deeppcb:{s.group}/{s.image_id}" for s in train_s),
        torch_version=torch.__version__,
    )
    model_dir = save_model(result.module, card, models_dir)
    classifier = load_classifier(model_dir, backend="openvino", threads=threads)
    results = score_pairs(val_s, classifier, console, seed=seed)
    thresholds = calibrate_thresholds(*board_arrays(results), target_fnr=target_fnr)
    metrics = evaluation_metrics(results, thresholds)
    card_metrics: dict[str, Any] = {**card.metrics, "val": card_metrics_row(metrics)}
    if int8:
        from training.quantize import quantize_int8

        quantize_int8(model_dir, train_t.crops, seed=seed, validation=(val_t.crops, val_t.labels))
        q = load_classifier(model_dir, backend="openvino", threads=threads, variant="int8")
        card_metrics["val_int8"] = card_metrics_row(
            evaluation_metrics(score_pairs(val_s, q, console, seed=seed), thresholds)
        )
    card_metrics["train_seconds"] = round(time.monotonic() - started, 1)
    update_card(
        model_dir, card.model_copy(update={"thresholds": thresholds, "metrics": card_metrics})
    )
    console.log(
        f"model {version} in {model_dir} · val F {metrics['f_score']:.4f} mAP "
        f"{metrics['map']:.4f} · thresholds pass<{thresholds.pass_below:.4f} "
        f"fail≥{thresholds.fail_at_or_above:.4f} · {time.monotonic() - started:.0f}s"
    )
    return model_dir
