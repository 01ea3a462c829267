"""Training of the region classifier on uint8 crops (N, 3, S, S).

Augmentation runs on the fly on uint8 tensors (the same geometric transform on all three
channels of a crop: dihedral flips/rotations and small shifts), then the crops go through
the shared :func:`inspection.model.preprocess.preprocess`, exactly as at inference.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from infra.progress import progress_bar
from inspection.model.labels import CLASSES
from inspection.model.nets import Arch, build_model
from inspection.model.preprocess import preprocess
from inspection.model.topology import BINARY_THRESHOLD

Progress = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class ValMetrics:
    """Validation metrics of the selected (best) weights."""

    loss: float
    accuracy: float
    per_class_recall: dict[str, float | None]  # None where the class has no val samples
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class

    def as_dict(self) -> dict[str, Any]:
        return {
            "val_loss": self.loss,
            "val_accuracy": self.accuracy,
            "val_per_class_recall": dict(self.per_class_recall),
            "val_confusion_matrix": [list(r) for r in self.confusion_matrix],
        }


@dataclass
class TrainResult:
    module: nn.Module  # best weights by validation loss, eval mode, on the CPU
    history: list[dict[str, float]]  # one row per epoch
    val_metrics: ValMetrics
    best_epoch: int  # 1-based
    seconds: float
    class_weights: list[float] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, Any]:
        """Validation metrics plus training facts, JSON-ready (for ``ModelCard.metrics``)."""
        return {
            **self.val_metrics.as_dict(),
            "best_epoch": self.best_epoch,
            "epochs": len(self.history),
            "train_seconds": round(self.seconds, 3),
            "class_weights": list(self.class_weights),
        }


def class_weights(labels: np.ndarray, num_classes: int, max_weight: float = 10.0) -> np.ndarray:
    """Inverse-frequency class weights, normalised so a balanced set gives 1.0 each, clipped
    to [1/max_weight, max_weight]. Classes absent from ``labels`` get ``max_weight``."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = max(int((counts > 0).sum()), 1)
    with np.errstate(divide="ignore"):
        w = np.where(counts > 0, counts.sum() / (present * counts), max_weight)
    return np.clip(w, 1.0 / max_weight, max_weight).astype(np.float32)


def _check_xy(x: np.ndarray, y: np.ndarray, num_classes: int, name: str) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name}_x must be uint8 (N, 3, S, S), got {getattr(x, 'shape', x)}")
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"{name}_x crops must be square, got {x.shape}")
    if not isinstance(y, np.ndarray) or y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}_y must be a 1-D array with one label per crop")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}_y must hold integer labels, got {y.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} set is empty")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"{name}_y labels must lie in [0, {num_classes}), got {y.min()}..{y.max()}"
        )


def augment(
    batch: torch.Tensor, rng: np.random.Generator, max_shift: int, max_zoom: float = 1.0
) -> torch.Tensor:
    """Random dihedral transform (flips, rot90) and shift of up to ``max_shift`` pixels per
    crop, then (``max_zoom`` > 1) a random scale in [1/max_zoom, max_zoom] about the crop's
    centre; the same transform on all channels of a crop. uint8 in, uint8 out (N, C, S, S)."""
    n, _, s, _ = batch.shape
    out = batch.clone()
    ops = rng.integers(0, 8, size=n)
    for op in range(1, 8):
        idx = torch.from_numpy(np.flatnonzero(ops == op))
        if idx.numel() == 0:
            continue
        part = out[idx]
        if op & 4:
            part = part.transpose(2, 3)
        if op & 2:
            part = part.flip(2)
        if op & 1:
            part = part.flip(3)
        out[idx] = part.contiguous()
    if max_shift > 0:
        # Shift by (dy, dx) in [-max_shift, max_shift], repeating the edge pixels (clamped
        # indices, i.e. replicate padding), one gather for the whole batch.
        dy = torch.from_numpy(rng.integers(-max_shift, max_shift + 1, size=n))
        dx = torch.from_numpy(rng.integers(-max_shift, max_shift + 1, size=n))
        ar = torch.arange(s)
        rows = (dy[:, None] + ar[None, :]).clamp_(0, s - 1)[:, None, :, None]  # (n, 1, s, 1)
        cols = (dx[:, None] + ar[None, :]).clamp_(0, s - 1)[:, None, None, :]  # (n, 1, 1, s)
        bidx = torch.arange(n)[:, None, None, None]
        cidx = torch.arange(out.shape[1])[None, :, None, None]
        out = out[bidx, cidx, rows, cols]
    if max_zoom > 1.0:
        out = _zoom(out, np.exp(rng.uniform(-np.log(max_zoom), np.log(max_zoom), size=n)))
    return out


def fragment_added(batch: torch.Tensor, rng: np.random.Generator, block: int = 2) -> torch.Tensor:
    """Each crop's added copper (dark on the board channel where the reference channel is
    bare) broken into specks: blocks of ``block`` px dropped at random (a share in [0.3, 0.7]
    per crop) go back to the reference, and the difference channel is recomputed. A solid
    spur becomes the row of 1–3 px specks some designs show ("hairy" spurs, BENCHMARKS.md
    "What is left on the weakest fold"). uint8 (N, 3, S, S) in and out."""
    n, _, s, _ = batch.shape
    cells = -(-s // block)
    drop_share = torch.from_numpy(rng.uniform(0.3, 0.7, size=(n, 1, 1))).float()
    noise = torch.from_numpy(rng.random((n, cells, cells))).float()
    drop = (noise < drop_share).repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :s, :s]
    board, reference = batch[:, 0], batch[:, 1]
    added = (board < BINARY_THRESHOLD) & (reference >= BINARY_THRESHOLD)
    out = batch.clone()
    out[:, 0] = torch.where(added & drop, reference, board)
    out[:, 2] = (out[:, 0].short() - reference.short()).abs().to(torch.uint8)
    return out


def _zoom(batch: torch.Tensor, scales: np.ndarray) -> torch.Tensor:
    """Each crop magnified by its ``scales`` entry about its centre (bilinear; a crop shrunk
    below its square is filled by mirroring its edge, as copper continues past a crop)."""
    theta = torch.zeros(batch.shape[0], 2, 3)
    inv = torch.from_numpy(1.0 / scales).float()
    theta[:, 0, 0], theta[:, 1, 1] = inv, inv
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    out = F.grid_sample(
        batch.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _memory_format(module: nn.Module, channels_last: bool) -> nn.Module:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return module.to(memory_format=fmt)  # type: ignore[call-overload]


@torch.inference_mode()
def _evaluate(
    module: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int, device: torch.device
) -> tuple[float, np.ndarray]:
    module.eval()
    losses = []
    preds = []
    for i in range(0, x.shape[0], batch_size):
        xb = torch.from_numpy(preprocess(x[i : i + batch_size])).to(device)
        xb = xb.contiguous(memory_format=torch.channels_last)
        yb = torch.from_numpy(y[i : i + batch_size].astype(np.int64)).to(device)
        logits = module(xb)
        losses.append(F.cross_entropy(logits, yb, reduction="sum").item())
        preds.append(logits.argmax(1).cpu().numpy())
    return float(sum(losses) / x.shape[0]), np.concatenate(preds)


def _metrics(loss: float, y: np.ndarray, pred: np.ndarray, classes: tuple[str, ...]) -> ValMetrics:
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y.astype(np.int64), pred.astype(np.int64)), 1)
    support = cm.sum(axis=1)
    recall = {
        c: (float(cm[i, i] / support[i]) if support[i] else None) for i, c in enumerate(classes)
    }
    return ValMetrics(
        loss=loss,
        accuracy=float(np.trace(cm) / max(cm.sum(), 1)),
        per_class_recall=recall,
        confusion_matrix=cm.tolist(),
    )


def train_classifier(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    arch: Arch = "small",
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    threads: int | None = None,
    progress: Progress | None = None,
    *,
    classes: tuple[str, ...] = CLASSES,
    pretrained: bool = True,
    weight_decay: float = 1e-4,
    max_shift: int = 4,
    max_zoom: float = 1.0,
    fragment: float = 0.0,
    fragment_classes: tuple[int, ...] = (),
    max_class_weight: float = 10.0,
    device: str = "cpu",
) -> TrainResult:
    """Train ``arch`` on uint8 crops; keep the weights of the epoch with the lowest
    validation loss (plain cross-entropy).

    AdamW with a one-cycle learning-rate schedule (peak ``lr``), class-weighted
    cross-entropy (inverse frequency, clipped at ``max_class_weight``), on-the-fly
    augmentation (dihedral, shifts of up to ``max_shift`` px, and with ``max_zoom`` > 1 a
    random scale: designs differ in trace width and pad size; with ``fragment`` > 0 that share
    of the crops of ``fragment_classes`` gets its added copper broken into specks,
    :func:`fragment_added`). ``seed`` fixes
    initialisation, shuffling and augmentation: the same call
    on the same machine and thread count gives the same weights. ``threads`` sets torch's
    intra-op threads for the duration of the call. ``progress(epoch, epochs, row)`` is
    called after each epoch with that epoch's history row.
    """
    k = len(classes)
    _check_xy(train_x, train_y, k, "train")
    _check_xy(val_x, val_y, k, "val")
    if train_x.shape[1:] != val_x.shape[1:]:
        raise ValueError(f"train crops {train_x.shape[1:]} and val crops {val_x.shape[1:]} differ")
    if epochs < 1 or batch_size < 2:
        raise ValueError("epochs must be >= 1 and batch_size >= 2")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if not 0.0 <= fragment <= 1.0 or (fragment > 0 and not fragment_classes):
        raise ValueError(
            f"fragment must lie in [0, 1] and name the classes it breaks, got {fragment} "
            f"for classes {fragment_classes}"
        )

    started = time.perf_counter()
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        dev = torch.device(device)
        # channels_last lets the CPU use oneDNN's fast convolutions (about 1.3x here).
        module = _memory_format(build_model(arch, k, pretrained=pretrained).to(dev), True)
        weights = class_weights(train_y, k, max_class_weight)
        loss_fn = nn.CrossEntropyLoss(weight=torch.from_numpy(weights).to(dev))
        optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
        n = train_x.shape[0]
        # Drop a last batch of one: batch norm cannot train on it.
        steps_per_epoch = max(1, n // batch_size if n % batch_size == 1 else -(-n // batch_size))
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.25
        )
        x_all = torch.from_numpy(train_x)
        y_all = torch.from_numpy(train_y.astype(np.int64))

        history: list[dict[str, float]] = []
        best_loss = math.inf
        best_state: dict[str, torch.Tensor] = {}
        best_epoch = 0
        best_pred = np.zeros(0)
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            module.train()
            order = torch.from_numpy(rng.permutation(n))
            total, seen, correct = 0.0, 0, 0
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                xb_u8 = augment(x_all[idx], rng, max_shift, max_zoom)
                if fragment > 0:  # no draw otherwise: the default run's stream stays as it was
                    hit = np.isin(train_y[idx.numpy()], fragment_classes)
                    rows = torch.from_numpy(np.flatnonzero(hit & (rng.random(len(idx)) < fragment)))
                    if rows.numel():
                        xb_u8[rows] = fragment_added(xb_u8[rows], rng)
                xb = torch.from_numpy(preprocess(xb_u8.numpy())).to(dev)
                xb = xb.contiguous(memory_format=torch.channels_last)
                yb = y_all[idx].to(dev)
                logits = module(xb)
                loss = loss_fn(logits, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(idx)
                seen += len(idx)
                correct += int((logits.argmax(1) == yb).sum().item())
            val_loss, val_pred = _evaluate(module, val_x, val_y, max(batch_size, 256), dev)
            row = {
                "epoch": float(epoch),
                "train_loss": total / seen,
                "train_accuracy": correct / seen,
                "val_loss": val_loss,
                "val_accuracy": float((val_pred == val_y).mean()),
                "lr": float(scheduler.get_last_lr()[0]),
                "seconds": time.perf_counter() - t0,
            }
            history.append(row)
            if val_loss < best_loss:
                best_loss, best_epoch, best_pred = val_loss, epoch, val_pred
                best_state = copy.deepcopy(module.state_dict())
            if progress is not None:
                progress(epoch, epochs, dict(row))
        module.load_state_dict(best_state)
        module = _memory_format(module.to("cpu"), False).eval()
        return TrainResult(
            module=module,
            history=history,
            val_metrics=_metrics(best_loss, val_y, best_pred, classes),
            best_epoch=best_epoch,
            seconds=time.perf_counter() - started,
            class_weights=[float(w) for w in weights],
        )
    finally:
        torch.set_num_threads(old_threads)


def train_with_progress(
    console: Console,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    arch: Arch,
    epochs: int,
    **kwargs: Any,
) -> TrainResult:
    """:func:`train_classifier` with a progress bar on ``console``: one step per epoch,
    showing the last epoch's validation loss and accuracy."""
    with progress_bar(console, f"training {arch}", epochs) as step:

        def on_epoch(epoch: int, total: int, row: dict[str, float]) -> None:
            step(
                completed=epoch,
                description=(
                    f"training {arch} · epoch {epoch} val loss {row['val_loss']:.4f} "
                    f"acc {row['val_accuracy']:.4f} ({row['seconds']:.0f}s)"
                ),
            )

        return train_classifier(
            train_x, train_y, val_x, val_y, arch=arch, epochs=epochs, progress=on_epoch, **kwargs
        )
