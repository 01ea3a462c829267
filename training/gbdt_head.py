"""``linecheck train --data DIR --head gbdt``: a gradient-boosted tree (LightGBM) on a trained
CNN's pooled penultimate features, registered as its own model version (``<cnn>-gbdt``:
the CNN's IR for the features, ``gbdt.txt`` for the decision), then calibrated and measured
exactly like a CNN head, so the two can be compared, shadowed and promoted."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from infra.progress import progress_bar
from inspection.crops import CROP_SIZE
from training.evaluation import card_metrics_row, evaluation_metrics
from training.scoring import board_arrays, score_pairs
from training.splits import samples_of, split_deeppcb

GBDT_PARAMS: dict[str, Any] = {
    "objective": "multiclass",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbosity": -1,
}


def region_auc(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """AUC of P(defective) = 1 − P(no defect) for defective vs defect-free regions."""
    from scipy.stats import mannwhitneyu

    score = 1.0 - probs[:, 0]
    pos, neg = score[labels != 0], score[labels == 0]
    if not len(pos) or not len(neg):
        return None
    u = mannwhitneyu(pos, neg, alternative="two-sided").statistic
    return float(u / (len(pos) * len(neg)))


def train_gbdt_head(
    cnn_dir: Path,
    data: Path,
    split_file: Path | None = None,
    *,
    seed: int = 0,
    threads: int | None = None,
    rounds: int = 600,
    target_fnr: float = 0.001,
    cache_dir: Path | None = Path(".linecheck/cache"),
    console: Console | None = None,
) -> Path:
    """Fit the head on the training groups' crops (early stopping on the validation groups'),
    register ``<cnn>-gbdt``, calibrate its board thresholds and record the same validation
    metrics as the CNN's, plus region AUC and speed for both. Returns the model folder."""
    import lightgbm

    from inspection.backends import load_classifier
    from inspection.backends.gbdt_backend import FeatureExtractor
    from inspection.model.registry import GBDT_FILE, clone_model, load_card, update_card
    from training.calibration import calibrate_thresholds
    from training.crop_table import build_table

    console = console or Console(stderr=True)
    started = time.monotonic()
    cnn_card = load_card(cnn_dir)
    if cnn_card.views:
        raise ValueError(f"model {cnn_card.version} is of {len(cnn_card.views)} views; a "
                         "boosted-tree head learns on one network's features")  # fmt: skip
    samples = samples_of(data)
    train_s, val_s = split_deeppcb(samples, data, split_file)
    with progress_bar(console, "cropping DeepPCB pairs", len(samples)) as step:
        table = build_table(
            data, samples, CROP_SIZE, seed, cache_dir, lambda i, n: step(), cnn_card.crop_min_side
        )
    train_t = table.select(table.in_images([s.image_id for s in train_s]))
    val_t = table.select(table.in_images([s.image_id for s in val_s]))
    extractor = FeatureExtractor(cnn_dir, threads=threads)
    with console.status("CNN features of the training and validation crops"):
        x_train, x_val = extractor.features(train_t.crops), extractor.features(val_t.crops)
    params = {**GBDT_PARAMS, "num_class": len(cnn_card.classes), "seed": seed,
              "num_threads": threads or 0}  # fmt: skip
    with progress_bar(console, "boosting rounds", rounds) as step:
        booster = lightgbm.train(
            params,
            lightgbm.Dataset(x_train, train_t.labels),
            num_boost_round=rounds,
            valid_sets=[lightgbm.Dataset(x_val, val_t.labels)],
            callbacks=[lightgbm.early_stopping(40, verbose=False), lambda env: step()],
        )
    model_dir = clone_model(cnn_dir, f"{cnn_card.version}-gbdt")
    booster.save_model(str(model_dir / GBDT_FILE), num_iteration=booster.best_iteration)
    card = load_card(model_dir).model_copy(update={"head": "gbdt", "thresholds": None})
    update_card(model_dir, card)
    heads: dict[str, Any] = {}
    for name, folder in (("cnn", cnn_dir), ("gbdt", model_dir)):
        clf = load_classifier(folder, backend="openvino", threads=threads)
        t0 = time.perf_counter()
        probs = clf.predict_proba(val_t.crops)
        heads[name] = {
            "region_auc": region_auc(probs, val_t.labels),
            "region_accuracy": float((probs.argmax(1) == val_t.labels).mean()),
            "ms_per_crop": (time.perf_counter() - t0) * 1e3 / max(len(val_t.crops), 1),
        }
    classifier = load_classifier(model_dir, backend="openvino", threads=threads)
    results = score_pairs(val_s, classifier, console, seed=seed)
    thresholds = calibrate_thresholds(*board_arrays(results), target_fnr=target_fnr)
    metrics = evaluation_metrics(results, thresholds)
    update_card(
        model_dir,
        card.model_copy(
            update={
                "thresholds": thresholds,
                "metrics": {
                    **cnn_card.metrics,
                    "val": card_metrics_row(metrics),
                    "base_cnn": cnn_card.version,
                    "gbdt": {"best_iteration": booster.best_iteration, "params": params},
                    "heads_val": heads,
                    "train_seconds": round(time.monotonic() - started, 1),
                },
            }
        ),
    )
    console.log(
        f"model {model_dir.name}: val F {metrics['f_score']:.4f} mAP {metrics['map']:.4f} · "
        f"region AUC gbdt {heads['gbdt']['region_auc']} vs cnn {heads['cnn']['region_auc']}"
    )
    return model_dir
