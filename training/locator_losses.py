"""Targets and losses of the learned locator's two heads.

``region``: the union of the (shrunk) truth boxes as a map, trained with the issue's
area-based loss (missed area weighted 2, excess 1) plus a pixel BCE (:func:`area_loss`).

``centre``: a defect-centre heat map and the box of the defect centred at each cell
(CenterNet's formulation, with the same area loss on each box, :func:`box_area_loss`).

In cell units (1 cell = ``OUTPUT_STRIDE`` px of the network input), a truth box (x1, y1, x2, y2)
is centred in cell (i, j) = (⌊(y1 + y2)/2⌋, ⌊(x1 + x2)/2⌋); the heat target is 1 there and falls
off as a Gaussian of the box's size around it (sd a sixth of each side, at least half a
cell); the box maps at that cell are trained to (x1 + x2)/2 − j − 0.5, (y1 + y2)/2 − i − 0.5,
log(x2 − x1), log(y2 − y1). Each defect keeps its own peak and its own extent, so touching
defects no longer merge into one region as in the ``region`` head's union-of-boxes map.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

MISSED_WEIGHT = 2.0
EXCESS_WEIGHT = 1.0
MIN_SIGMA = 0.5  # cells: a small pin-hole still gets a peak a few cells wide
LOG_SIZE_RANGE = (-4.0, 6.0)  # clamp of the log sizes: exp stays finite while training
L1_WEIGHT = 0.1


def area_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    missed: float = MISSED_WEIGHT,
    excess: float = EXCESS_WEIGHT,
) -> torch.Tensor:
    """(missed · Σ t(1 − p) + excess · Σ (1 − t)p) / Σ t over the batch (soft areas)."""
    p = torch.sigmoid(logits)
    lost = (target * (1.0 - p)).sum()
    extra = ((1.0 - target) * p).sum()
    return (missed * lost + excess * extra) / target.sum().clamp_min(1.0)


def centre_targets(
    boxes: Sequence[tuple[float, float, float, float]],
    cells: int,
    radius: int = 0,
    kinds: Sequence[int] | None = None,
    channels: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One crop's targets from its boxes (x1, y1, x2, y2) in cell units on a ``cells`` ×
    ``cells`` map: the float32 heat map ((cells, cells), or (channels, cells, cells) with a
    box's peak on its ``kinds`` channel), the (K, 2) int64 cells (i, j) whose
    box maps are trained and the (K, 4) float32 boxes they are trained to: the centre cell of
    each box whose centre lies on the map and the cells up to ``radius`` around it (a peak
    found one cell off still predicts the whole box)."""
    heats = np.zeros((channels, cells, cells), np.float32)
    grid = np.arange(cells, dtype=np.float32)
    where, truth = [], []
    for (x1, y1, x2, y2), kind in zip(boxes, kinds or [0] * len(boxes), strict=True):
        heat = heats[kind]
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            continue
        i, j = int((y1 + y2) // 2), int((x1 + x2) // 2)
        if not (0 <= i < cells and 0 <= j < cells):
            continue
        sx, sy = max(MIN_SIGMA, (x2 - x1) / 6.0), max(MIN_SIGMA, (y2 - y1) / 6.0)
        gy = np.exp(-((grid - i) ** 2) / (2 * sy * sy))
        gx = np.exp(-((grid - j) ** 2) / (2 * sx * sx))
        np.maximum(heat, np.outer(gy, gx), out=heat)
        heat[i, j] = 1.0
        for di in range(-radius, radius + 1):
            for dj in range(-radius, radius + 1):
                if 0 <= i + di < cells and 0 <= j + dj < cells:
                    where.append((i + di, j + dj))
                    truth.append((x1, y1, x2, y2))
    return (
        heats if kinds is not None else heats[0],
        np.asarray(where, np.int64).reshape(-1, 2),
        np.asarray(truth, np.float32).reshape(-1, 4),
    )


def focal_heat_loss(logits: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (α = 2, β = 4) over (N, 1, h, w) logits and
    Gaussian targets, per centre (cells where the target is exactly 1)."""
    p = torch.sigmoid(logits).clamp(1e-4, 1.0 - 1e-4)
    pos = heat >= 1.0
    pos_loss = (torch.log(p) * (1.0 - p) ** 2)[pos].sum()
    neg_loss = (torch.log(1.0 - p) * p**2 * (1.0 - heat) ** 4)[~pos].sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp_min(1)


def box_area_loss(
    box_maps: torch.Tensor,
    index: torch.Tensor,
    truth: torch.Tensor,
    missed: float = MISSED_WEIGHT,
    excess: float = EXCESS_WEIGHT,
    l1_weight: float = L1_WEIGHT,
) -> torch.Tensor:
    """The issue's area loss on each centre's box: (missed · (A_t − I) + excess · (A_p − I))
    / A_t, averaged over the truths. ``box_maps`` (N, 4, h, w) = dx, dy, log w, log h;
    ``index`` (K, 3) = crop, i, j of each truth's centre cell; ``truth`` (K, 4) its box
    (x1, y1, x2, y2) in cells. Plus ``l1_weight`` × the L1 distance of the box's four
    parameters from their targets. Zero when there are no truths."""
    if len(index) == 0:
        return box_maps.sum() * 0.0
    n, i, j = index[:, 0], index[:, 1], index[:, 2]
    dx, dy, lw, lh = box_maps[n, :, i, j].unbind(1)
    w = torch.exp(lw.clamp(*LOG_SIZE_RANGE))
    h = torch.exp(lh.clamp(*LOG_SIZE_RANGE))
    cx, cy = j.to(w.dtype) + 0.5 + dx, i.to(w.dtype) + 0.5 + dy
    x1, y1, x2, y2 = truth.unbind(1)
    iw = (torch.minimum(cx + w / 2, x2) - torch.maximum(cx - w / 2, x1)).clamp_min(0.0)
    ih = (torch.minimum(cy + h / 2, y2) - torch.maximum(cy - h / 2, y1)).clamp_min(0.0)
    inter, area_t = iw * ih, (x2 - x1) * (y2 - y1)
    loss = (missed * (area_t - inter) + excess * (w * h - inter)) / area_t.clamp_min(1e-6)
    # a box that misses its truth entirely has no area gradient: a small L1 on the box's
    # parameters always points it back
    wanted = torch.stack(
        [
            (x1 + x2) / 2 - j.to(w.dtype) - 0.5,
            (y1 + y2) / 2 - i.to(w.dtype) - 0.5,
            torch.log((x2 - x1).clamp_min(1e-3)),
            torch.log((y2 - y1).clamp_min(1e-3)),
        ],
        1,
    )
    l1 = (torch.stack([dx, dy, lw, lh], 1) - wanted).abs().sum(1)
    return loss.mean() + l1_weight * l1.mean()
