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

import functools
import time
from dataclasses import dataclass

import cv2
import numpy as np

from inspection import roi_align as _align
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
    max_stretch: float = 0.02
    """the tile fit may absorb a scale change / shear up to this (line-scan stretch is ~1 %);
    a larger one is distrusted and the global rigid fit is used"""
    local_tiles: int = 5
    """after the global fit, re-estimate the shift on a tiles×tiles grid (0 = off): line-scan
    boards stretch unevenly, so one rigid warp leaves 1–3 px offsets in places (5×5: the
    deformation at the edge of large copper near a border, DeepPCB group 20085)"""
    max_local_shift_px: float = 8.0
    """a tile whose residual shift is larger than this (or ill-defined) keeps the global fit
    (DeepPCB group 20085 has ~5 px at the edge of large copper near a border)"""
    refine_iterations: int = 1
    """Lucas–Kanade steps refining each tile's phase-correlation shift (0 = off)"""
    registered_px: float = 0.25
    """if the fitted motion moves no image corner by more than this, and no tile centre by
    more than three times this, the board counts as registered and gets the template as it is
    (no resampling; negative = never)"""
    tolerance_px: int = 2
    """a differing pixel within this distance of an edge in both images is taken for
    residual misregistration, not a defect"""
    small_tolerance_px: int = 0
    """the tolerance for small, thick pieces (shallow mousebites); ≥ tolerance_px = off"""
    small_max_extent_px: int = 16
    """what counts as small for `small_tolerance_px`"""
    open_px: int = 2
    """opening kernel on the difference: removes isolated speckle and 1-px slivers"""
    merge_px: int = 9
    """dilation that merges the pieces of one defect (e.g. a ragged open) into one region"""
    bridge_specks: bool = True
    """specks the opening removes (the dots of a dotted scratch) still join the solid pieces
    of their defect into one region; a speck alone never makes a region"""
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
    the signal and blurring makes the ECC objective smooth. (`align_template` fits its
    global motion to tile shifts instead, and uses this only where tiles cannot carry a fit.)
    """
    image, template = _check_pair(image, template)
    return _align.estimate_alignment(image, template, params)


def align_template(
    image: np.ndarray, template: np.ndarray, params: RoiParams = RoiParams()
) -> np.ndarray:
    """The template warped into the board's frame (same shape as `image`, uint8).

    One global fit (affine: shift, small rotation, line-scan stretch) and a smooth field of
    local shifts on top, both from per-tile shifts (see `inspection.roi_align`). Areas the
    warp brings in from outside the template are filled from the nearest edge (so crops
    there look plausible); :func:`find_regions_aligned` does not compare them at all, as the
    template never saw them. An already registered board gets the template unchanged (a copy).
    """
    image, template = _check_pair(image, template)
    return _align.align_template(image, template, params)


def _binarise(image: np.ndarray, params: RoiParams) -> np.ndarray:
    return np.asarray(cv2.threshold(image, params.threshold, 1, cv2.THRESH_BINARY)[1])


def _open(mask: np.ndarray, n: int) -> np.ndarray:
    """Opening with an n×n square. cv2.morphologyEx anchors an even kernel off-centre for
    both steps, which shifts the result by a pixel; dilating with the mirrored anchor does not.
    Beyond the image is background: OpenCV's default erosion border counts it as foreground,
    which kept 1-px slivers along the image's edge (scanner edge rows on DeepPCB group 20085,
    each a candidate the classifier often called spurious copper).
    """
    if n <= 1:
        return mask
    k = np.ones((n, n), np.uint8)
    eroded = cv2.erode(mask, k, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return np.asarray(cv2.dilate(eroded, k, anchor=(n - 1, n - 1)))


def _disc(radius: int) -> np.ndarray:
    return np.asarray(
        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    )


_RING = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], np.uint8)  # the 8 neighbours


@functools.lru_cache(maxsize=8)
def _tolerance_kernel(tolerance: int) -> np.ndarray:
    """Offsets within `tolerance` + 0.5 px, measured as cv2.distanceTransform(DIST_L2,
    DIST_MASK_5) measures (its chamfer metric, not true L2): dilating with this kernel
    answers "is there such a pixel within the tolerance" exactly as thresholding that
    distance transform did, in a fraction of the time."""
    r = max(0, tolerance) + 1
    probe = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    probe[r, r] = 0
    dist = cv2.distanceTransform(probe, cv2.DIST_L2, cv2.DIST_MASK_5)
    kernel = (dist <= tolerance + 0.5).astype(np.uint8)
    kernel.setflags(write=False)
    return kernel


def _far_from_shared_edges(
    a: np.ndarray, b: np.ndarray, differ: np.ndarray, tolerance: int
) -> np.ndarray:
    """0/1 mask of differing pixels that are not just residual misregistration.

    Misregistration leaves slivers squeezed between an edge of the board and the matching
    edge of the template: such a pixel is near an edge in both images. A real defect pixel
    is far from an edge in at least one of them, even when the defect is thin (a 2-px cut
    lies deep inside template copper; a filled 2-px gap lies deep inside board copper).
    "Near an edge" = both values within the tolerance = the morphological gradient.
    """
    k = _tolerance_kernel(tolerance)
    near_both = cv2.bitwise_and(
        cv2.morphologyEx(a, cv2.MORPH_GRADIENT, k), cv2.morphologyEx(b, cv2.MORPH_GRADIENT, k)
    )
    return np.asarray(cv2.subtract(differ, near_both))


def _outer_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int, int, int]]:
    """(x, y, w, h, px, py) per 8-connected component of a 0/1 mask: its bounding box and
    one of its pixels. Outer contours find them: cheap on a sparse mask, unlike labelling
    the whole image (cv2.connectedComponentsWithStats takes ~3 ms on 640×640)."""
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []  # an empty mask
    out = []
    for contour, (_, _, _, parent) in zip(contours, hierarchy.reshape(-1, 4), strict=True):
        if parent < 0:  # not a hole's border
            x, y, w, h = cv2.boundingRect(contour)
            px, py = contour.reshape(-1, 2)[0]
            out.append((x, y, w, h, int(px), int(py)))
    return out


def _own_pixels(mask: np.ndarray, box: tuple[int, int, int, int, int, int]) -> np.ndarray:
    """0/1 window of `box` holding only its component (others may reach into the box)."""
    x, y, w, h, px, py = box
    _, labels = cv2.connectedComponents(mask[y : y + h, x : x + w], connectivity=8)
    return (labels == labels[py - y, px - x]).astype(np.uint8)


def difference_masks(
    image: np.ndarray,
    aligned_template: np.ndarray,
    params: RoiParams = RoiParams(),
    outside: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`difference_mask`, and the specks that may join its pieces (None when
    `params.bridge_specks` is off): differing pixels far from shared edges that the opening
    removed, each with a differing neighbour (an isolated JPEG speck bridges nothing).
    ``outside``: 0/1 mask of pixels the aligned template has no data for (it only repeats
    its edge there); they never differ."""
    a = _binarise(image, params)
    b = _binarise(aligned_template, params)
    differ = cv2.bitwise_xor(a, b)
    if outside is not None:
        differ = cv2.subtract(differ, outside)
    far = _far_from_shared_edges(a, b, differ, params.tolerance_px)
    specks = cv2.bitwise_and(far, cv2.dilate(far, _RING)) if params.bridge_specks else None
    strict = _open(far, params.open_px)
    if params.small_tolerance_px >= params.tolerance_px:
        return strict, specks
    # Small bites and nicks can be as shallow as the strict tolerance. With a smaller
    # tolerance they survive, and so do long thin slivers; keep only the small, thick
    # (≥ 3 px across) pieces, which slivers never are.
    lenient = _open(_far_from_shared_edges(a, b, differ, params.small_tolerance_px), params.open_px)
    thick = cv2.erode(lenient, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)))
    if not cv2.countNonZero(thick):
        return strict, specks
    limit = params.small_max_extent_px
    out = strict.copy()
    for box in _outer_boxes(lenient):
        x, y, w, h = box[:4]
        if w > limit or h > limit or not cv2.countNonZero(thick[y : y + h, x : x + w]):
            continue
        own = _own_pixels(lenient, box)
        if cv2.countNonZero(own & thick[y : y + h, x : x + w]):
            out[y : y + h, x : x + w] |= own
    return out, specks


def difference_mask(
    image: np.ndarray, aligned_template: np.ndarray, params: RoiParams = RoiParams()
) -> np.ndarray:
    """0/1 mask of pixels where the board really differs from the aligned template."""
    return difference_masks(image, aligned_template, params)[0]


def boxes_from_mask(
    mask: np.ndarray, params: RoiParams = RoiParams(), bridges: np.ndarray | None = None
) -> list[Box]:
    """Merge nearby pieces of a 0/1 mask into regions and box each region's own pixels;
    ``bridges`` (0/1) may join pieces but are never boxed themselves."""
    h, w = mask.shape
    joined = mask if bridges is None else cv2.bitwise_or(mask, bridges)
    merged = np.asarray(
        cv2.dilate(joined, _disc(params.merge_px // 2)) if params.merge_px > 1 else joined
    )
    regions: list[tuple[int, int, int, Box]] = []
    for region in _outer_boxes(merged):
        x, y, bw, bh = region[:4]
        if cv2.countNonZero(mask[y : y + bh, x : x + bw]) < params.min_area:
            continue  # bridges alone, or too little (cheap to test before labelling)
        window = _own_pixels(merged, region) & mask[y : y + bh, x : x + bw]
        count = cv2.countNonZero(window)
        if count < params.min_area:
            continue
        # fit the box to the un-dilated pixels: the dilation only decides what belongs together
        fx, fy, fw, fh = cv2.boundingRect(window)
        m = params.margin_px
        box = Box(
            x1=max(0, x + fx - m),
            y1=max(0, y + fy - m),
            x2=min(w, x + fx + fw + m),
            y2=min(h, y + fy + fh + m),
        )
        regions.append((-count, region[5], region[4], box))
    # largest first; ties in raster order of each region's first pixel, as labelling has it
    regions.sort(key=lambda r: r[:3])
    return [r[3] for r in regions[: params.max_candidates]]


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
    aligned, outside = _align.align_with_coverage(image, template, params)
    t0 = time.perf_counter()
    mask, specks = difference_masks(image, aligned, params, outside)
    t0 = _align.lap("difference_mask", t0)
    boxes = boxes_from_mask(mask, params, specks)
    _align.lap("boxing", t0)
    return boxes, aligned


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
