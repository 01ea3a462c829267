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

from inspection.locator import (
    HEAD_OUTPUTS,
    HEAT_MAPS,
    OUTPUT_STRIDE,
    PAD_MULTIPLE,
    LocatorHead,
    head_of,
    input_planes,
    planes_to_input,
)
from inspection.model.locator_net import DEFAULT_WIDTHS, LocatorNet
from inspection.self_reference import dihedral
from schemas.events import Box
from training.locator_losses import area_loss, box_area_loss, centre_targets, focal_heat_loss

# the BCE's weight on defect cells: with ~1 % of cells positive, an unweighted BCE (and the
# area loss alike) first settles on an empty map; this pulls it out sooner
POS_WEIGHT = torch.tensor(4.0)
Rect = tuple[float, float, float, float]  # x1, y1, x2, y2


def target_mask(shape: tuple[int, int], boxes: Sequence[Box], shrink: float) -> np.ndarray:
    """(H, W) uint8 0/1: the boxes, each shrunk by ``shrink`` of its size on each side."""
    mask = np.zeros(shape, np.uint8)
    for b in boxes:
        dx, dy = (b.x2 - b.x1) * shrink, (b.y2 - b.y1) * shrink
        x1, y1 = round(b.x1 + dx), round(b.y1 + dy)
        x2, y2 = max(x1 + 1, round(b.x2 - dx)), max(y1 + 1, round(b.y2 - dy))
        mask[y1:y2, x1:x2] = 1
    return mask


def crop_rects(
    boxes: Sequence[Box], x0: int, y0: int, crop: int, op: int, kinds: Sequence[int] = ()
) -> tuple[list[Rect], list[int]]:
    """The boxes in a ``crop``-px square window at (x0, y0), clipped to it, then moved as
    :func:`inspection.self_reference.dihedral` moves the window's pixels, and their
    ``kinds`` (0 without); boxes outside it are left out."""
    rects: list[Rect] = []
    kept: list[int] = []
    for b, kind in zip(boxes, kinds or [0] * len(boxes), strict=True):
        x1, y1 = max(b.x1 - x0, 0), max(b.y1 - y0, 0)
        x2, y2 = min(b.x2 - x0, crop), min(b.y2 - y0, crop)
        if x2 <= x1 or y2 <= y1:
            continue
        if op & 4:
            x1, y1, x2, y2 = y1, x1, y2, x2
        if op & 2:
            y1, y2 = crop - y2, crop - y1
        if op & 1:
            x1, x2 = crop - x2, crop - x1
        rects.append((float(x1), float(y1), float(x2), float(y2)))
        kept.append(kind)
    return rects, kept


def _window(
    boxes: Sequence[Box], shape: tuple[int, int], crop: int, rng: np.random.Generator
) -> tuple[int, int]:
    """(x0, y0) of a random crop window, half of the time around a random defect (defects
    cover ~1 % of a board: uniform crops alone teach "nothing here" first)."""
    h, w = shape
    if boxes and rng.random() < 0.5:
        b = boxes[int(rng.integers(len(boxes)))]
        cx, cy = (b.x1 + b.x2) // 2, (b.y1 + b.y2) // 2
        x0 = int(np.clip(cx - rng.integers(crop // 8, crop - crop // 8), 0, w - crop))
        y0 = int(np.clip(cy - rng.integers(crop // 8, crop - crop // 8), 0, h - crop))
        return x0, y0
    return int(rng.integers(0, w - crop + 1)), int(rng.integers(0, h - crop + 1))


def _batch(
    planes: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    boxes: Sequence[Sequence[Box]],
    kinds: Sequence[Sequence[int]],
    picks: np.ndarray,
    crop: int,
    rng: np.random.Generator,
    head: LocatorHead,
    box_radius: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Crops of the picked boards' input planes, dihedrally transformed; returns the network
    input and the head's targets at 1/4 resolution: ``region`` the area fraction of the
    mask; ``centre`` the heat map, the centre cells (crop, i, j) and their boxes in cells."""
    xs, ts, index, truths = [], [], [], []
    cells = crop // OUTPUT_STRIDE
    for n, i in enumerate(picks):
        x0, y0 = _window(boxes[i], planes[i].shape[:2], crop, rng)
        op = int(rng.integers(0, 8))
        xs.append(dihedral(planes[i][y0 : y0 + crop, x0 : x0 + crop], op))
        if head == "region":
            m = dihedral(masks[i][y0 : y0 + crop, x0 : x0 + crop].astype(np.float32), op)
            ts.append(
                cv2.resize(np.ascontiguousarray(m), (cells, cells), interpolation=cv2.INTER_AREA)
            )
            continue
        rects, rect_kinds = crop_rects(boxes[i], x0, y0, crop, op, kinds[i])
        heat, where, truth = centre_targets(
            [tuple(v / OUTPUT_STRIDE for v in r) for r in rects],  # type: ignore[misc]
            cells,
            box_radius,
            rect_kinds if head == "typed" else None,
            HEAT_MAPS[head],
        )
        ts.append(heat)
        index.append(np.column_stack([np.full(len(where), n), where]))
        truths.append(truth)
    x = torch.from_numpy(planes_to_input(np.stack(xs)))
    maps = np.stack(ts)
    targets = {"map": torch.from_numpy(maps[:, None] if maps.ndim == 3 else maps)}
    if head != "region":
        targets["index"] = torch.from_numpy(np.concatenate(index).astype(np.int64))
        targets["truth"] = torch.from_numpy(np.concatenate(truths))
    return x, targets


def _losses(
    out: torch.Tensor, targets: dict[str, torch.Tensor], head: LocatorHead
) -> dict[str, torch.Tensor]:
    """The head's two loss terms: ``area_loss`` (of the region map, or of each centre's box)
    and ``map_loss`` (the region map's pixel BCE, or the centre heat's focal loss)."""
    if head == "region":
        logits, t = out[:, :1], targets["map"]
        return {
            "area_loss": area_loss(logits, t),
            "map_loss": F.binary_cross_entropy_with_logits(logits, t, pos_weight=POS_WEIGHT),
        }
    k = HEAT_MAPS[head]
    return {
        "area_loss": box_area_loss(out[:, k:], targets["index"], targets["truth"]),
        "map_loss": focal_heat_loss(out[:, :k], targets["map"]),
    }


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
    head: LocatorHead = "region",
    box_radius: int = 0,
    kinds: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
    threads: int | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> tuple[LocatorNet, list[dict[str, float]]]:
    """Train a locator on boards (2-D uint8) and their defect boxes; returns the network
    (eval mode, CPU) and one history row per epoch. AdamW with a one-cycle schedule; the
    last epoch's weights are kept (nothing of the held-out groups chooses them).
    ``widths``: the network's stage widths; ``head``: what it outputs
    (:mod:`inspection.locator`); ``box_radius``: a centre head's box maps are trained at the
    cells up to this far from each defect's centre cell; ``kinds``: each box's defect type
    index (0–5), needed by the ``typed`` head."""
    if not images or len(images) != len(boxes):
        raise ValueError(f"need boards with boxes, got {len(images)} boards / {len(boxes)}")
    if head == "typed" and kinds is None:
        raise ValueError("the typed head needs each box's defect type (kinds)")
    kinds = kinds if kinds is not None else [[0] * len(bs) for bs in boxes]
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
        masks = [  # the region head's targets (a centre head's come from the boxes)
            target_mask(im.shape, bs, target_shrink)
            for im, bs in zip(images, boxes, strict=True)
            if head == "region"
        ]
        planes = [input_planes(im) for im in images]
        net = LocatorNet(widths, HEAD_OUTPUTS[head])
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
            totals = {"area_loss": 0.0, "map_loss": 0.0}
            for step in range(steps):
                picks = order[step * batch_size : (step + 1) * batch_size]
                x, targets = _batch(planes, masks, boxes, kinds, picks, crop, rng, head, box_radius)
                out = net(x.contiguous(memory_format=torch.channels_last))
                terms = _losses(out, targets, head)
                loss = terms["area_loss"] + terms["map_loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                for key, term in terms.items():
                    totals[key] += term.item()
            row = {
                "epoch": float(epoch),
                **{key: total / steps for key, total in totals.items()},
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
def torch_locator_maps(net: LocatorNet, image: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The torch network's (C, h, w) maps of a board, its probability maps first, as the
    served ``Locator.maps`` makes them (for parity checks and trials before the IR exists)."""
    from inspection.locator import normalise, output_maps

    x, resized = normalise(image, scale)
    return output_maps(net.eval()(torch.from_numpy(x)).numpy(), resized)


def torch_region_map(net: LocatorNet, image: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The torch network's (h, w) probability map (region or centre) of a board."""
    maps = torch_locator_maps(net, image, scale)
    return maps[: HEAT_MAPS[head_of(len(maps))]].max(0)
