"""Crops around candidate regions, and their training labels, for the region classifier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np

from inspection.model.labels import CLASSES
from inspection.roi import RoiParams, align_template
from schemas.events import Box, DefectType, GroundTruth

__all__ = [
    "CLASSES",
    "CONTEXT",
    "CROP_SIZE",
    "CROP_VIEWS",
    "CropGeometry",
    "check_crop_views",
    "crop_square",
    "crops_for",
    "label_candidates",
    "make_crops",
    "split_views",
]

CROP_SIZE = 64
"""Side of a classifier crop in pixels, for models trained on boards (a model card records
the size its model takes: ``ModelCard.input_size``)."""

CONTEXT = 0.25
"""A crop covers its box plus this share of the box's size on each side."""

CROP_VIEWS: tuple[int, ...] = (0, 64)
"""The crop geometry of each network of a DeepPCB model (``ModelCard.views``, ``linecheck
train --crop-views``): the smallest square its crops are cut from. 0 cuts the box and its
context alone, magnified to fill the crop when the box is small; 64 px shows a small box at
the board's own scale with its surroundings (whether a bite is in a pad or a trace). The two
err on different board designs: over the seven designs' cross-validation one network of
each, probabilities averaged, gives mean F 0.9876 ± 0.0086 (weakest design 0.9720) against
0.9840 ± 0.0150 (0.9547) for 0 px alone on the same installation (BENCHMARKS.md, "The two
views served, and the recipe")."""


def crop_square(box: Box, context: float = CONTEXT, min_side: int = 0) -> tuple[int, int, int]:
    """Centre and half-side of the square a crop is cut from: the box plus ``context`` of
    its size around, and at least ``min_side`` pixels on a side."""
    side = max(max(box.x2 - box.x1, box.y2 - box.y1) * (1.0 + 2.0 * context), min_side)
    half = max(4, round(side / 2))
    return (box.x1 + box.x2) // 2, (box.y1 + box.y2) // 2, half


def make_crops(
    image: np.ndarray,
    template: np.ndarray | None,
    boxes: Sequence[Box],
    size: int = CROP_SIZE,
    context: float = CONTEXT,
    params: RoiParams = RoiParams(),
    aligned: bool = False,
    min_side: int = 0,
) -> np.ndarray:
    """(N, 3, size, size) uint8 crops: board, reference, |board − reference|.

    The reference is the template aligned as the ROI stage aligns it (pass `aligned=True`
    with the ROI stage's aligned template to skip aligning again), or, without a
    template, a median-filtered board (which erases specks and thin spurs, so the third
    channel still highlights small defects). Each crop is a square around its box with
    `context` of the box's size added on each side, at least `min_side` pixels across (the
    model card's ``crop_min_side``); outside the image is padded with the nearest edge (a
    board's border continues its copper, it is not a black frame).
    """
    if image.ndim != 2 or image.size == 0 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be a non-empty 2-D uint8 array, got {image.shape} {image.dtype}"
        )
    if size < 8:
        raise ValueError(f"crop size must be ≥ 8, got {size}")
    out = np.zeros((len(boxes), 3, size, size), np.uint8)
    if not boxes:
        return out
    if template is None:
        reference = cv2.medianBlur(image, 5)
    elif aligned:  # already aligned by the ROI stage (find_regions_aligned)
        reference = template
    else:
        reference = align_template(image, template, params)
    halves = [crop_square(b, context, min_side)[2] for b in boxes]
    pad = max(halves) + 1
    stack = np.stack([image, reference, cv2.absdiff(image, reference)], axis=-1)
    padded = cv2.copyMakeBorder(stack, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    for i, box in enumerate(boxes):
        cx, cy, half = crop_square(box, context, min_side)
        y0, x0 = cy - half + pad, cx - half + pad
        patch = padded[y0 : y0 + 2 * half, x0 : x0 + 2 * half]
        # INTER_AREA keeps thin features when shrinking; nearest would drop them at random
        interp = cv2.INTER_AREA if 2 * half > size else cv2.INTER_LINEAR
        out[i] = cv2.resize(patch, (size, size), interpolation=interp).transpose(2, 0, 1)
    return out


class CropGeometry(Protocol):
    """What decides a model's crops: a classifier or its model card."""

    @property
    def input_size(self) -> int: ...

    @property
    def crop_sides(self) -> tuple[int, ...]:
        """The smallest square of each view's crops (``ModelCard.crop_sides``)."""
        ...


def crops_for(
    model: CropGeometry, image: np.ndarray, reference: np.ndarray | None, boxes: Sequence[Box]
) -> np.ndarray:
    """:func:`make_crops` of ``boxes`` as ``model`` takes them (its input size and smallest
    square), ``reference`` being the template the ROI stage aligned (or None). A model of V
    views (``ModelCard.views``) takes (N, 3·V, S, S): each view's three channels in turn."""
    size = model.input_size
    views = [make_crops(image, reference, boxes, size, aligned=True, min_side=side)
             for side in model.crop_sides]  # fmt: skip
    return views[0] if len(views) == 1 else np.concatenate(views, axis=1)


def split_views(crops: np.ndarray, views: int) -> list[np.ndarray]:
    """The (N, 3, S, S) crops of each of ``views`` views in :func:`crops_for`'s (N, 3·V, S, S);
    a ``ValueError`` naming the shape when the crops hold another number of views."""
    if crops.ndim != 4 or crops.shape[1] != 3 * views:
        raise ValueError(f"crops of {views} views are (N, {3 * views}, S, S), got {crops.shape}")
    return [crops[:, 3 * k : 3 * k + 3] for k in range(views)]


def check_crop_views(views: Sequence[int]) -> tuple[int, ...]:
    """``views`` as a tuple when they are one or more distinct crop sides ≥ 0 (px), else a
    ``ValueError`` saying so."""
    if not views or min(views) < 0 or len(set(views)) != len(views):
        raise ValueError(f"crop views must be distinct sides >= 0 in px, e.g. 0,64; got {views}")
    return tuple(views)


def label_candidates(
    candidates: Sequence[Box],
    truths: Sequence[GroundTruth] | Sequence[tuple[Box, DefectType]],
    iou_threshold: float = 0.33,
) -> list[int]:
    """Class index per candidate: the type of the best-overlapping truth above the IoU
    threshold (DeepPCB's matching rule), else 0 ("none")."""
    pairs = [(t.box, t.defect_type) if isinstance(t, GroundTruth) else t for t in truths]
    labels = []
    for cand in candidates:
        best, label = iou_threshold, 0
        for box, kind in pairs:
            iou = cand.iou(box)
            if iou > best:
                best, label = iou, CLASSES.index(kind.value)
        labels.append(label)
    return labels
