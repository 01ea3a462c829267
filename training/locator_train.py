"""Training of the learned locator's network (:class:`inspection.model.locator_net.LocatorNet`)
on boards under test and their defect boxes only (never a template).

Targets are the union of the ground-truth boxes, each shrunk by ``target_shrink`` of its size
per side (neighbouring defects stay apart in the map; serving grows the regions back), at
1/4 resolution as area fractions. The loss is the area-based one of the issue: missed target
area weighted 2, excess area 1, normalised by the target area of the batch, plus a pixel BCE
that keeps early training stable. Random square crops of the boards, dihedral augmentation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from inspection.locator import OUTPUT_STRIDE, PAD_MULTIPLE, input_planes, planes_to_input
from inspection.model.locator_net import DEFAULT_WIDTHS, LocatorNet
from schemas.events import Box

MISSED_WEIGHT = 2.0
EXCESS_WEIGHT = 1.0
# the BCE's weight on defect cells: with ~1 % of cells positive, an unweighted BCE (and the
# area loss alike) first settles on an empty map; this pulls it out sooner
POS_WEIGHT = torch.tensor(4.0)


def target_mask(shape: tuple[int, int], boxes: Sequence[Box], shrink: float) -> np.ndarray:
    """(H, W) uint8 0/1: the boxes, each shrunk by ``shrink`` of its size on each side."""
    mask = np.zeros(shape, np.uint8)
    for b in boxes:
        dx, dy = (b.x2 - b.x1) * shrink, (b.y2 - b.y1) * shrink
        x1, y1 = round(b.x1 + dx), round(b.y1 + dy)
        x2, y2 = max(x1 + 1, round(b.x2 - dx)), max(y1 + 1, round(b.y2 - dy))
        mask[y1:y2, x1:x2] = 1
    return mask


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


def _batch(
    planes: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    boxes: Sequence[Sequence[Box]],
    picks: np.ndarray,
    crop: int,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of the picked boards' input planes, dihedrally transformed, half of them around
    a random defect (defects cover ~1 % of a board: uniform crops alone teach "nothing here"
    first); returns the network input and the area-fraction target at 1/4 resolution."""
    xs, ts = [], []
    for i in picks:
        image, mask = planes[i], masks[i]
        h, w = mask.shape
        if boxes[i] and rng.random() < 0.5:
            b = boxes[i][int(rng.integers(len(boxes[i])))]
            cx, cy = (b.x1 + b.x2) // 2, (b.y1 + b.y2) // 2
            x0 = int(np.clip(cx - rng.integers(crop // 8, crop - crop // 8), 0, w - crop))
            y0 = int(np.clip(cy - rng.integers(crop // 8, crop - crop // 8), 0, h - crop))
        else:
            y0, x0 = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        im = image[y0 : y0 + crop, x0 : x0 + crop]
        m = mask[y0 : y0 + crop, x0 : x0 + crop].astype(np.float32)
        op = int(rng.integers(0, 8))
        if op & 4:
            im, m = im.transpose(1, 0, 2), m.T
        if op & 2:
            im, m = im[::-1], m[::-1]
        if op & 1:
            im, m = im[:, ::-1], m[:, ::-1]
        cells = crop // OUTPUT_STRIDE
        ts.append(cv2.resize(np.ascontiguousarray(m), (cells, cells), interpolation=cv2.INTER_AREA))
        xs.append(im)
    x = torch.from_numpy(planes_to_input(np.stack(xs)))
    t = torch.from_numpy(np.stack(ts)[:, None])
    return x, t


def train_locator_net(
    images: Sequence[np.ndarray],
    boxes: Sequence[Sequence[Box]],
    *,
    epochs: int = 30,
    crop: int = 192,
    crops_per_board: int = 1,
    batch_size: int = 16,
    lr: float = 3e-3,
    target_shrink: float = 0.2,
    widths: tuple[int, int, int, int] = DEFAULT_WIDTHS,
    seed: int = 0,
    threads: int | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> tuple[LocatorNet, list[dict[str, float]]]:
    """Train a locator on boards (2-D uint8) and their defect boxes; returns the network
    (eval mode, CPU) and one history row per epoch. AdamW with a one-cycle schedule; the
    last epoch's weights are kept (nothing of the held-out groups chooses them).
    ``widths``: the network's stage widths."""
    if not images or len(images) != len(boxes):
        raise ValueError(f"need boards with boxes, got {len(images)} boards / {len(boxes)}")
    crop = min(crop, *(min(im.shape) for im in images))
    crop -= crop % PAD_MULTIPLE
    if crop < 2 * PAD_MULTIPLE:
        raise ValueError(f"boards are too small for the locator (crop {crop} px)")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        masks = [
            target_mask(im.shape, bs, target_shrink) for im, bs in zip(images, boxes, strict=True)
        ]
        planes = [input_planes(im) for im in images]
        net = LocatorNet(widths)
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        n = len(images) * crops_per_board
        steps = max(1, n // batch_size)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=epochs * steps, pct_start=0.2
        )
        history: list[dict[str, float]] = []
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            net.train()
            order = rng.permutation(n) % len(images)
            total_area = total_bce = 0.0
            for step in range(steps):
                picks = order[step * batch_size : (step + 1) * batch_size]
                x, t = _batch(planes, masks, boxes, picks, crop, rng)
                logits = net(x.contiguous(memory_format=torch.channels_last))
                area = area_loss(logits, t)
                bce = F.binary_cross_entropy_with_logits(logits, t, pos_weight=POS_WEIGHT)
                loss = area + bce
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total_area += area.item()
                total_bce += bce.item()
            row = {
                "epoch": float(epoch),
                "area_loss": total_area / steps,
                "bce": total_bce / steps,
                "seconds": time.perf_counter() - t0,
            }
            history.append(row)
            if progress is not None:
                progress(epoch, epochs, row)
        net = net.to(memory_format=torch.contiguous_format).eval()
        return net, history
    finally:
        torch.set_num_threads(old_threads)


@torch.inference_mode()
def torch_region_map(net: LocatorNet, image: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The torch network's (h, w) probability map of a board, as the served Locator makes it
    (for parity checks and for candidates before the IR exists)."""
    from inspection.locator import normalise

    x, (h, w) = normalise(image, scale)
    logits = net.eval()(torch.from_numpy(x)).numpy()
    cells_h, cells_w = -(-h // OUTPUT_STRIDE), -(-w // OUTPUT_STRIDE)
    return 1.0 / (1.0 + np.exp(-logits[0, 0, :cells_h, :cells_w]))
