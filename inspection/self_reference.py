"""The board as its own reference (template-free inspection): a region whose surroundings
repeat elsewhere on the same board, identical inside the region, shows a feature of the
design (a drilled pad, a row of identical lands), not a defect — defects are unique.

For each region: its context (the box and half its size on each side) is matched by
normalised cross-correlation against the rest of the board in all 8 dihedral transforms
(designs repeat turned and mirrored), coarse at a quarter of the resolution, then to the
pixel at full resolution around the best three transforms' copies; the region's
*unexplained area* is the largest
blob of pixels that differ between the context and that copy (binarised, a 1-px
misregistration tolerated), touching the box. Die-to-die inspection of wafers rests on the
same idea. :func:`copy_crops` gives the classifier the same copy as a crop's reference
channel, where reference mode shows the template.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from inspection.crops import CONTEXT as CROP_CONTEXT
from inspection.crops import CROP_SIZE, crop_square
from schemas.events import Box

CONTEXT = 0.5  # the context a region is matched by: its box plus this share of its size per side
COARSE = 4  # the search for copies runs at 1/COARSE of the board's resolution ...
REFINED = 3  # ... then the best copies of this many transforms are placed to the pixel
_KERNEL = np.ones((3, 3), np.uint8)


def dihedral(a: np.ndarray, op: int) -> np.ndarray:
    """One of the 8 dihedral transforms of an (H, W[, C]) array, as a view: transpose
    (op & 4), then flip rows (op & 2), then columns (op & 1)."""
    if op & 4:
        a = a.swapaxes(0, 1)
    if op & 2:
        a = a[::-1]
    if op & 1:
        a = a[:, ::-1]
    return a


def _best_match(board: np.ndarray, patch: np.ndarray, own: tuple[int, int]) -> tuple[int, int]:
    """Top-left of ``patch``'s best NCC match on ``board`` away from ``own`` (its own place:
    positions closer than half the patch's size on both axes are excluded); (-1, -1) when
    the patch is flat or as large as the board."""
    h, w = patch.shape
    if h >= board.shape[0] or w >= board.shape[1] or float(patch.std()) < 1.0:
        return -1, -1
    scores = cv2.matchTemplate(board, patch, cv2.TM_CCOEFF_NORMED)
    x, y = own
    scores[max(0, y - h // 2) : y + h // 2 + 1, max(0, x - w // 2) : x + w // 2 + 1] = -2.0
    _, best, _, loc = cv2.minMaxLoc(scores)
    return (int(loc[0]), int(loc[1])) if best > -2.0 else (-1, -1)


def coarse_board(board: np.ndarray) -> np.ndarray:
    """The board at 1/``COARSE`` of its resolution, where copies are searched for."""
    height, width = board.shape
    size = (max(1, width // COARSE), max(1, height // COARSE))
    return cv2.resize(board, size, interpolation=cv2.INTER_AREA)


def best_copy(
    board: np.ndarray, area: tuple[int, int, int, int], small: np.ndarray | None = None
) -> np.ndarray | None:
    """The best copy elsewhere on the 2-D uint8 ``board`` of its part ``area`` (x1, y1, x2,
    y2; exclusive ends, on the board), turned back to ``area``'s orientation: an array of
    ``area``'s shape, or None when nothing resembles it (flat, or as large as the board).
    ``small``: the board already reduced by :func:`coarse_board`."""
    height, width = board.shape
    x1, y1, x2, y2 = area
    region = board[y1:y2, x1:x2]
    f = COARSE
    small = coarse_board(board) if small is None else small
    coarse = cv2.resize(region, (max(1, region.shape[1] // f), max(1, region.shape[0] // f)),
                        interpolation=cv2.INTER_AREA)  # fmt: skip
    found = []  # (coarse score, op, coarse place) of each transform's best copy
    for op in range(8):
        patch = np.ascontiguousarray(dihedral(coarse, op))
        x, y = _best_match(small, patch, (x1 // f, y1 // f))
        if x >= 0:
            window = small[y : y + patch.shape[0], x : x + patch.shape[1]]
            score = float(cv2.matchTemplate(window, patch, cv2.TM_CCOEFF_NORMED)[0, 0])
            found.append((score, op, x, y))
    best: tuple[float, np.ndarray, int] | None = None  # full-resolution score, copy, op
    for _, op, x, y in sorted(found, reverse=True)[:REFINED]:
        patch = np.ascontiguousarray(dihedral(region, op))
        h, w = patch.shape
        ox, oy = max(0, f * x - f - 2), max(0, f * y - f - 2)  # the coarse place ± a cell
        near = board[oy : min(height, f * y + h + f + 2), ox : min(width, f * x + w + f + 2)]
        if near.shape[0] < h or near.shape[1] < w:
            continue
        _, score, _, (dx, dy) = cv2.minMaxLoc(cv2.matchTemplate(near, patch, cv2.TM_CCOEFF_NORMED))
        if best is None or score > best[0]:
            best = (score, near[dy : dy + h, dx : dx + w], op)
    return None if best is None else _undo_dihedral(best[1], best[2])


def _undo_dihedral(a: np.ndarray, op: int) -> np.ndarray:
    """The inverse of :func:`dihedral`: ``_undo_dihedral(dihedral(a, op), op)`` is ``a``."""
    if op & 1:
        a = a[:, ::-1]
    if op & 2:
        a = a[::-1]
    if op & 4:
        a = a.swapaxes(0, 1)
    return a


def unexplained_area(board: np.ndarray, box: Box, small: np.ndarray | None = None) -> int:
    """Pixels of the largest difference, touching ``box``, between the box's context on the
    2-D uint8 ``board`` and the context's best copy elsewhere on it (see the module's
    docstring); the box's area when nothing on the board resembles it. ``small``: the
    board already reduced by :func:`coarse_board` (one per board, not per region)."""
    height, width = board.shape
    x1, y1 = max(0, int(box.x1)), max(0, int(box.y1))
    x2, y2 = min(width, int(np.ceil(box.x2))), min(height, int(np.ceil(box.y2)))
    if x2 <= x1 or y2 <= y1:
        return 0
    mx, my = int((x2 - x1) * CONTEXT), int((y2 - y1) * CONTEXT)
    cx1, cy1, cx2, cy2 = max(0, x1 - mx), max(0, y1 - my), min(width, x2 + mx), min(height, y2 + my)
    inner = np.zeros((cy2 - cy1, cx2 - cx1), np.uint8)
    inner[y1 - cy1 : y2 - cy1, x1 - cx1 : x2 - cx1] = 1
    copy = best_copy(board, (cx1, cy1, cx2, cy2), small)
    if copy is None:
        return int(inner.sum())
    return _largest_difference(board[cy1:cy2, cx1:cx2] > 127, copy > 127, inner)


def _largest_difference(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> int:
    """Pixels of the largest blob where two binary images differ by more than a 1-px shift
    of an edge (set in one and not within 1 px in the other, or clear in one and not within
    1 px of clear in the other), among the blobs touching ``mask``."""
    a8, b8 = a.astype(np.uint8), b.astype(np.uint8)
    near_a, near_b = cv2.dilate(a8, _KERNEL) > 0, cv2.dilate(b8, _KERNEL) > 0
    solid_a, solid_b = cv2.erode(a8, _KERNEL) > 0, cv2.erode(b8, _KERNEL) > 0
    differ = ((a & ~near_b) | (b & ~near_a) | (~a & solid_b) | (~b & solid_a)).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(differ, connectivity=8)
    touching = np.unique(labels[(mask > 0) & (differ > 0)])
    return int(max((stats[i, cv2.CC_STAT_AREA] for i in touching if i), default=0))


def veto_repeats(
    board: np.ndarray, boxes: Sequence[Box], probs: np.ndarray, min_px: int
) -> np.ndarray:
    """``probs`` (N, classes; column 0 "none") with every region called a defect whose
    :func:`unexplained_area` is under ``min_px`` set to "none" (a copy; ``min_px`` 0: as
    they are). Only regions called defects are matched: the costly step runs for few."""
    if min_px <= 0 or len(boxes) == 0:
        return probs
    out, small = probs.copy(), coarse_board(board)
    for i in np.flatnonzero(probs.argmax(1) != 0):
        if unexplained_area(board, boxes[int(i)], small) < min_px:
            out[i] = 0.0
            out[i, 0] = 1.0
    return out


def copy_crops(
    image: np.ndarray, boxes: Sequence[Box], size: int = CROP_SIZE, min_side: int = 0
) -> np.ndarray:
    """(N, 3, size, size) uint8 template-free crops whose reference is the board itself:
    board, the crop square's best copy elsewhere on the board (:func:`best_copy`, turned
    back to the square's orientation), |board − copy| — the template's place in reference
    mode, taken by the design's own repeat. Where a square has no copy (or for the part of
    it off the board) the reference is the median-filtered board, as in
    :func:`inspection.crops.make_crops` without a template. Squares as ``make_crops``
    cuts them (:func:`inspection.crops.crop_square`)."""
    out = np.zeros((len(boxes), 3, size, size), np.uint8)
    if not boxes:
        return out
    height, width = image.shape
    small = coarse_board(image)
    median = cv2.medianBlur(image, 5)
    halves = [crop_square(b, CROP_CONTEXT, min_side)[2] for b in boxes]
    pad = max(halves) + 1
    board_p = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    median_p = cv2.copyMakeBorder(median, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    for i, box in enumerate(boxes):
        cx, cy, half = crop_square(box, CROP_CONTEXT, min_side)
        x0, y0 = cx - half, cy - half
        patch = board_p[y0 + pad : y0 + pad + 2 * half, x0 + pad : x0 + pad + 2 * half]
        ref = median_p[y0 + pad : y0 + pad + 2 * half, x0 + pad : x0 + pad + 2 * half].copy()
        x1, y1 = max(0, x0), max(0, y0)
        x2, y2 = min(width, x0 + 2 * half), min(height, y0 + 2 * half)
        if x2 > x1 and y2 > y1:
            copy = best_copy(image, (x1, y1, x2, y2), small)
            if copy is not None:
                ref[y1 - y0 : y2 - y0, x1 - x0 : x2 - x0] = copy
        stack = np.stack([patch, ref, cv2.absdiff(patch, ref)], axis=-1)
        interp = cv2.INTER_AREA if 2 * half > size else cv2.INTER_LINEAR
        out[i] = cv2.resize(stack, (size, size), interpolation=interp).transpose(2, 0, 1)
    return out
