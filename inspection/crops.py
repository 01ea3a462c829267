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
    "CROP_MIN_SIDE",
    "CROP_SIZE",
    "CropGeometry",
    "crop_square",
    "crops_for",
    "label_candidates",
    "make_crops",
]

CROP_SIZE = 64
"""Side of a classifier crop in pixels, for models trained on boards (a model card records
the size its model takes: ``ModelCard.input_size``)."""

CONTEXT = 0.25
"""A crop covers its box plus this share of the box's size on each side."""

CROP_MIN_SIDE = 0
"""The smallest square a DeepPCB model's crops are cut from by default
(``ModelCard.crop_min_side``, ``linecheck train --crop-min-side``); 0: the box and its
context alone, magnified to fill the crop when the box is small. 64 px shows a small box at
the board's own scale with more of its surroundings: over the seven board designs'
cross-validation it lifts the two weakest designs (44000 F 0.972 → 0.975, 50600 0.979 →
0.988) but lowers three others by 0.1–0.6 points, mean F 0.9876 → 0.9871 (BENCHMARKS.md), so
the recipe keeps 0."""


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

    input_size: int
    crop_min_side: int


def crops_for(
    model: CropGeometry, image: np.ndarray, reference: np.ndarray | None, boxes: Sequence[Box]
) -> np.ndarray:
    """:func:`make_crops` of ``boxes`` as ``model`` takes them (its input size and smallest
    square), ``reference`` being the template the ROI stage aligned (or None)."""
    return make_crops(
        image, reference, boxes, model.input_size, aligned=True, min_side=model.crop_min_side
    )


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
