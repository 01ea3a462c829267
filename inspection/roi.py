"""ROI stage: find candidate defect regions on a board image.

Two methods:

- reference-based (`find_regions_reference`): align the defect-free template to the board,
  compare the binarised images and box what differs;
- recipe (`find_regions_recipe`), for products without a template: box copper features that
  break simple design rules (too thin, too small, tiny holes).

Images are grayscale uint8 of any size. Boxes are in board-image pixels and, like DeepPCB's
annotations, fit the defect pixels plus a margin of about 10 px.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from schemas.events import Box


@dataclass(frozen=True)
class RoiParams:
    threshold: int = 127
    """grey level separating copper from background (DeepPCB is binarised, then JPEG'd)"""
    copper_dark: bool = True
    """DeepPCB's polarity: copper is black, the substrate white (used by the recipe only)"""
    align: bool = True
    """estimate and undo shift and small rotation between board and template"""
    align_scale: float = 0.5
    """alignment runs on images downscaled by this factor, for speed"""
    max_shift_px: float = 16.0
    """alignment search radius: a larger estimated shift is distrusted and ignored"""
    max_rotation_deg: float = 1.0
    """a larger estimated rotation is distrusted; the shift alone is used"""
    local_tiles: int = 4
    """after the global fit, re-estimate the shift on a tiles×tiles grid (0 = off): line-scan
    boards stretch unevenly, so one rigid warp leaves 1–3 px offsets in places"""
    max_local_shift_px: float = 3.0
    """a tile whose residual shift is larger than this (or ill-defined) keeps the global fit"""
    tolerance_px: int = 2
    """a differing pixel within this distance of an edge in both images is taken for
    residual misregistration, not a defect"""
    small_tolerance_px: int = 1
    """the tolerance for small, thick pieces (shallow mousebites); ≥ tolerance_px = off"""
    small_max_extent_px: int = 16
    """what counts as small for `small_tolerance_px`"""
    open_px: int = 2
    """opening kernel on the difference: removes isolated speckle and 1-px slivers"""
    merge_px: int = 9
    """dilation that merges the pieces of one defect (e.g. a ragged open) into one region"""
    min_area: int = 5
    """a region needs at least this many difference pixels"""
    margin_px: int = 10
    """added around the fitted box on every side (DeepPCB's annotations carry ~10 px)"""
    max_candidates: int = 64
    """keep the largest regions only, so a badly misaligned board cannot flood the classifier"""
    # recipe-only knobs, in pixels at DeepPCB's ~48 px/mm
    min_width_px: int = 7
    """copper narrower than this is suspicious (spurs, thin shorts, mousebite necks)"""
    max_blob_area: int = 600
    """an isolated copper island below this area is spurious copper"""
    max_hole_area: int = 400
    """an enclosed hole below this area is a pin-hole (drill holes are larger)"""


def _check(image: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2:
        raise ValueError(f"{name} must be a 2-D grayscale image, got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"{name} is empty (shape {image.shape})")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {image.dtype}")
    return image


def _check_pair(image: np.ndarray, template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = _check(image, "image")
    template = _check(template, "template")
    if image.shape != template.shape:
        raise ValueError(f"image and template shapes differ: {image.shape} vs {template.shape}")
    return image, template


def estimate_alignment(
    image: np.ndarray, template: np.ndarray, params: RoiParams = RoiParams()
) -> np.ndarray:
    """2×3 affine matrix mapping board coordinates to template coordinates.

    Phase correlation gives the shift robustly; ECC (Euclidean) then refines shift and
    rotation from there. Both run on a blurred, downscaled copy: the binary edges carry all
    the signal and blurring makes the ECC objective smooth.
    """
    image, template = _check_pair(image, template)
    identity = np.eye(2, 3, dtype=np.float32)
    if not params.align:
        return identity
    s = params.align_scale
    h, w = image.shape
    size = (max(16, round(w * s)), max(16, round(h * s)))
    a = cv2.GaussianBlur(cv2.resize(image, size, interpolation=cv2.INTER_AREA), (5, 5), 0)
    b = cv2.GaussianBlur(cv2.resize(template, size, interpolation=cv2.INTER_AREA), (5, 5), 0)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    if a32.std() < 1.0 or b32.std() < 1.0:
        return identity  # a blank image has nothing to align on
    (dx, dy), _ = cv2.phaseCorrelate(a32, b32)
    if np.hypot(dx, dy) > params.max_shift_px * s:
        dx, dy = 0.0, 0.0  # implausible peak (periodic pattern, blank area): trust the line
    warp: np.ndarray = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
    try:
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 1e-4)
        everywhere = np.ones(a32.shape, np.uint8)
        _, ecc = cv2.findTransformECC(
            a32, b32, warp.copy(), cv2.MOTION_EUCLIDEAN, criteria, everywhere, 1
        )
        angle = np.degrees(np.arctan2(ecc[1, 0], ecc[0, 0]))
        if (
            abs(angle) <= params.max_rotation_deg
            and np.hypot(ecc[0, 2], ecc[1, 2]) <= params.max_shift_px * s
        ):
            warp = ecc
    except cv2.error:
        pass  # ECC did not converge: the phase-correlation shift stands
    # Map back to full size: with pixel centres u = (x + 0.5)·s − 0.5, a warp (R, t) on the
    # small images is (R, t/s + c·(1 − R·1)) on the full ones, where c = (1/s − 1)/2.
    full = warp.astype(np.float64)
    c = (1.0 / s - 1.0) / 2.0
    full[:, 2] = full[:, 2] / s + c * (1.0 - full[:, :2].sum(axis=1))
    return full.astype(np.float32)


def _local_residual(
    image: np.ndarray, aligned: np.ndarray, params: RoiParams
) -> tuple[np.ndarray, np.ndarray] | None:
    """Smooth per-pixel residual shift (dx, dy) left after the global fit, or None."""
    n = params.local_tiles
    h, w = image.shape
    if n < 2 or h // n < 32 or w // n < 32:
        return None
    th, tw = h // n, w // n
    a = cv2.GaussianBlur(image, (5, 5), 0).astype(np.float32)
    b = cv2.GaussianBlur(aligned, (5, 5), 0).astype(np.float32)
    window = cv2.createHanningWindow((tw, th), cv2.CV_32F)
    shifts = np.zeros((n, n, 2), np.float32)
    for i in range(n):
        for j in range(n):
            ta = a[i * th : (i + 1) * th, j * tw : (j + 1) * tw]
            tb = b[i * th : (i + 1) * th, j * tw : (j + 1) * tw]
            if ta.std() < 8.0 or tb.std() < 8.0:
                continue  # (nearly) blank tile: nothing to measure, keep the global fit
            (dx, dy), response = cv2.phaseCorrelate(ta, tb, window)
            if response > 0.1 and np.hypot(dx, dy) <= params.max_local_shift_px:
                shifts[i, j] = (dx, dy)
    if not shifts.any():
        return None
    # bilinear between tile centres: a smooth field, no seams at tile borders
    field_x = cv2.resize(shifts[:, :, 0], (w, h), interpolation=cv2.INTER_LINEAR)
    field_y = cv2.resize(shifts[:, :, 1], (w, h), interpolation=cv2.INTER_LINEAR)
    return field_x, field_y


def align_template(
    image: np.ndarray, template: np.ndarray, params: RoiParams = RoiParams()
) -> np.ndarray:
    """The template warped into the board's frame (same shape as `image`, uint8).

    A global Euclidean fit first, then (optionally) a smooth field of local shifts on top.
    Areas the warp brings in from outside the template are filled from the nearest edge, so
    a shifted border does not show up as a difference.
    """
    image, template = _check_pair(image, template)
    if not params.align:
        return template
    warp = estimate_alignment(image, template, params)
    h, w = image.shape
    aligned = cv2.warpAffine(
        template,
        warp,
        (w, h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    residual = _local_residual(image, aligned, params)
    if residual is None:
        return aligned
    # board pixel x samples the template at W·x + d(x)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x = warp[0, 0] * xs + warp[0, 1] * ys + warp[0, 2] + residual[0]
    map_y = warp[1, 0] * xs + warp[1, 1] * ys + warp[1, 2] + residual[1]
    return cv2.remap(template, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _binarise(image: np.ndarray, params: RoiParams) -> np.ndarray:
    return (image > params.threshold).astype(np.uint8)


def _open(mask: np.ndarray, n: int) -> np.ndarray:
    """Opening with an n×n square. cv2.morphologyEx anchors an even kernel off-centre for
    both steps, which shifts the result by a pixel; dilating with the mirrored anchor does not.
    """
    if n <= 1:
        return mask
    k = np.ones((n, n), np.uint8)
    return cv2.dilate(cv2.erode(mask, k, anchor=(0, 0)), k, anchor=(n - 1, n - 1))


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _far_from_shared_edges(a: np.ndarray, b: np.ndarray, tolerance: float) -> np.ndarray:
    """0/1 mask of differing pixels that are not just residual misregistration.

    Misregistration leaves slivers squeezed between an edge of the board and the matching
    edge of the template: such a pixel is near an edge in both images. A real defect pixel
    is far from an edge in at least one of them, even when the defect is thin (a 2-px cut
    lies deep inside template copper; a filled 2-px gap lies deep inside board copper).
    """

    def dist(m: np.ndarray) -> np.ndarray:  # each set pixel's distance to the nearest unset
        return cv2.distanceTransform(m, cv2.DIST_L2, cv2.DIST_MASK_5)

    na, nb = 1 - a, 1 - b
    # for a pixel where a=1, b=0: distance to the template's 1s and to the board's 0s
    d_template = np.where(a > 0, dist(nb), dist(b))
    d_board = np.where(a > 0, dist(a), dist(na))
    return (a ^ b) & (np.maximum(d_template, d_board) > tolerance + 0.5).astype(np.uint8)


def difference_mask(
    image: np.ndarray, aligned_template: np.ndarray, params: RoiParams = RoiParams()
) -> np.ndarray:
    """0/1 mask of pixels where the board really differs from the aligned template."""
    a = _binarise(image, params)
    b = _binarise(aligned_template, params)
    strict = _open(_far_from_shared_edges(a, b, params.tolerance_px), params.open_px)
    if params.small_tolerance_px >= params.tolerance_px:
        return strict
    # Small bites and nicks can be as shallow as the strict tolerance. With a smaller
    # tolerance they survive, and so do long thin slivers; keep only the small, thick
    # (≥ 3 px across) pieces, which slivers never are.
    lenient = _open(_far_from_shared_edges(a, b, params.small_tolerance_px), params.open_px)
    thick = cv2.erode(lenient, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(lenient, connectivity=8)
    limit = params.small_max_extent_px
    small = (stats[:, cv2.CC_STAT_WIDTH] <= limit) & (stats[:, cv2.CC_STAT_HEIGHT] <= limit)
    keep = np.zeros(n, bool)
    keep[np.unique(labels[thick > 0])] = True
    keep &= small
    keep[0] = False
    return strict | keep[labels].astype(np.uint8)


def boxes_from_mask(mask: np.ndarray, params: RoiParams = RoiParams()) -> list[Box]:
    """Merge nearby pieces of a 0/1 mask into regions and box each region's own pixels."""
    h, w = mask.shape
    merged = cv2.dilate(mask, _disc(params.merge_px // 2)) if params.merge_px > 1 else mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(merged, connectivity=8)
    regions: list[tuple[int, Box]] = []
    for i in range(1, n):
        x, y, bw, bh = stats[i, :4]
        window = (labels[y : y + bh, x : x + bw] == i) & (mask[y : y + bh, x : x + bw] > 0)
        count = int(window.sum())
        if count < params.min_area:
            continue
        # fit the box to the un-dilated pixels: the dilation only decides what belongs together
        ys, xs = np.nonzero(window)
        m = params.margin_px
        box = Box(
            x1=max(0, int(x + xs.min()) - m),
            y1=max(0, int(y + ys.min()) - m),
            x2=min(w, int(x + xs.max()) + 1 + m),
            y2=min(h, int(y + ys.max()) + 1 + m),
        )
        regions.append((count, box))
    regions.sort(key=lambda r: -r[0])
    return [box for _, box in regions[: params.max_candidates]]


def find_regions_reference(
    image: np.ndarray, template: np.ndarray, params: RoiParams = RoiParams()
) -> list[Box]:
    """Candidate defect boxes from comparing the board with its defect-free template."""
    return find_regions_aligned(image, template, params)[0]


def find_regions_aligned(
    image: np.ndarray, template: np.ndarray, params: RoiParams = RoiParams()
) -> tuple[list[Box], np.ndarray]:
    """Candidate boxes and the template aligned to the board (crops reuse it: aligning
    is most of the ROI stage's cost, so it is done once per board)."""
    image, template = _check_pair(image, template)
    aligned = align_template(image, template, params)
    return boxes_from_mask(difference_mask(image, aligned, params), params), aligned


def find_regions_recipe(image: np.ndarray, params: RoiParams = RoiParams()) -> list[Box]:
    """Candidate defect boxes without a template, from design-rule checks on the copper.

    Finds: copper thinner than `min_width_px` (spurs, thin shorts, necks left by mousebites
    or partial opens), isolated copper islands smaller than `max_blob_area` (spurious
    copper), enclosed holes smaller than `max_hole_area` (pin-holes), and gaps narrower than
    `min_width_px` (opens, deep mousebites). It cannot see a defect that leaves every
    feature design-rule clean, e.g. a wide short between traces or a clean wide break, and
    square corners of legitimate copper may show up as small false candidates.
    """
    image = _check(image, "image")
    bright = _binarise(image, params)
    copper = 1 - bright if params.copper_dark else bright
    k = _disc(params.min_width_px // 2)
    thin_copper = copper & (1 - cv2.morphologyEx(copper, cv2.MORPH_OPEN, k))
    empty = 1 - copper
    thin_gap = empty & (1 - cv2.morphologyEx(empty, cv2.MORPH_OPEN, k))
    # drop the one-pixel rim that opening shaves off every corner
    thin = cv2.morphologyEx(thin_copper | thin_gap, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    mask: np.ndarray = thin
    h, w = image.shape
    for layer, max_area in ((copper, params.max_blob_area), (empty, params.max_hole_area)):
        _, labels, stats, _ = cv2.connectedComponentsWithStats(layer, connectivity=8)
        x, y, bw, bh, area = (stats[:, i] for i in range(5))
        touches_edge = (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
        small = (area <= max_area) & ~touches_edge
        small[0] = False  # label 0 is the other layer
        mask = mask | small[labels].astype(np.uint8)
    return boxes_from_mask(mask, params)
