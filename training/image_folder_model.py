"""``linecheck train --data DIR`` on a folder of class-labelled images (NEU-DET): a
multi-class classifier through the same trainer, with a stratified held-out split, its
classes recorded in the model card."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from board_data.image_folder import labelled_images, load_labelled_images

if TYPE_CHECKING:
    from inspection.model.nets import Arch


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), ``val_fraction`` of every class held out."""
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(len(idx) * val_fraction))
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


def train_image_folder(
    models_dir: Path,
    data: Path,
    *,
    arch: Arch = "efficientnet_lite0",
    epochs: int = 10,
    size: int = 128,
    val_fraction: float = 0.2,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    threads: int | None = None,
    version: str | None = None,
    console: Console | None = None,
) -> Path:
    """Multi-class classifier on a folder of class-labelled images (class = file-name prefix),
    with a stratified held-out split; registered with its classes in the card."""
    import torch

    from inspection.backends import load_classifier
    from inspection.model.registry import ModelCard, data_hash, save_model, update_card
    from training.trainer import train_with_progress

    console = console or Console(stderr=True)
    started = time.monotonic()
    items = labelled_images(data)
    if not items:
        raise ValueError(f"no <class>_<n>.<ext> images in {data}")
    classes = tuple(sorted({c for _, c in items}))
    y = np.asarray([classes.index(c) for _, c in items], np.int64)
    x = load_labelled_images(items, size)
    tr, va = stratified_split(y, val_fraction, seed)
    console.log(f"{len(items)} images, classes {classes}: {len(tr)} training, {len(va)} held out")
    result = train_with_progress(
        console,
        x[tr],
        y[tr],
        x[va],
        y[va],
        arch=arch,
        epochs=epochs,
        classes=classes,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        threads=threads,
    )
    version = version or time.strftime(f"classify-{arch}-%Y%m%d-%H%M%S", time.gmtime())
    card = ModelCard(
        version=version,
        arch=arch,
        input_size=size,
        classes=classes,
        preprocessing=(
            f"grayscale image resized to {size}x{size} in all three channels, then float32 "
            "(x - 127.5) / 127.5"
        ),
        training_data_hash=data_hash(f"{p.name}:{c}" for (p, c) in (items[i] for i in tr)),
        torch_version=torch.__version__,
        metrics={"region_val": result.metrics, "data": str(data)},
    )
    model_dir = save_model(result.module, card, models_dir)
    served = load_classifier(model_dir, backend="openvino", threads=threads)
    acc = float((served.predict_proba(x[va]).argmax(1) == y[va]).mean())
    update_card(
        model_dir,
        card.model_copy(
            update={
                "metrics": {
                    **card.metrics,
                    "held_out_accuracy_openvino": acc,
                    "held_out_images": len(va),
                    "train_seconds": round(time.monotonic() - started, 1),
                }
            }
        ),
    )
    console.log(f"model {version} in {model_dir} · held-out accuracy {acc:.4f} (OpenVINO)")
    return model_dir
