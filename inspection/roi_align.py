"""Template-to-board registration for the ROI stage (`inspection.roi` re-exports the public
functions; import them from there).

`align_template` measures a shift per tile of a tiles×tiles grid on a half-size copy (phase
correlation for a robust start, a few Lucas–Kanade steps for sub-pixel precision), fits one
global motion to the tiles (affine, so that it absorbs the ~1 % stretch of a line scan, or
rigid where few tiles have texture), and keeps what is left per tile as a smooth residual
field for uneven stretch. A board whose motion is negligible gets the template as it is,
without any resampling. Where the tiles cannot carry a fit (small
images, tiles off, blank boards) the global phase correlation + ECC fit of
`estimate_alignment` is used, as before.

Set `PROFILE` to a dict to collect seconds per step (benchmarks/roi.py --profile).
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

import cv2
import numpy as np

from inspection.roi_warp import outside_template, pixel_grid, remap_template, scratch

if TYPE_CHECKING:
    from inspection.roi import RoiParams

PROFILE: dict[str, float] | None = None
"""seconds per step, summed over calls, while set to a dict (None: not collected)"""


def lap(step: str, since: float) -> float:
    """Charge the time since `since` to `step` (when profiling); returns now."""
    now = time.perf_counter()
    if PROFILE is not None:
        PROFILE[step] = PROFILE.get(step, 0.0) + now - since
    return now


def _small(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Downscaled, blurred float copy: the binary edges carry all the signal, and the blur
    makes the phase-correlation peak and the Lucas–Kanade objective smooth."""
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.asarray(cv2.GaussianBlur(small, (5, 5), 0), np.float32)


def _global_shift(a: np.ndarray, b: np.ndarray, limit: float) -> tuple[float, float]:
    (dx, dy), _ = cv2.phaseCorrelate(a, b)
    if np.hypot(dx, dy) > limit:
        return 0.0, 0.0  # implausible peak (periodic pattern, blank area): trust the line
    return float(dx), float(dy)


def estimate_alignment(image: np.ndarray, template: np.ndarray, params: RoiParams) -> np.ndarray:
    """2×3 affine matrix mapping board to template coordinates (global phase correlation,
    refined by ECC on a blurred half-size copy). Inputs are checked by the caller."""
    identity = np.eye(2, 3, dtype=np.float32)
    if not params.align:
        return identity
    s = params.align_scale
    h, w = image.shape
    size = (max(16, round(w * s)), max(16, round(h * s)))
    a32, b32 = _small(image, size), _small(template, size)
    if a32.std() < 1.0 or b32.std() < 1.0:
        return identity  # a blank image has nothing to align on
    dx, dy = _global_shift(a32, b32, params.max_shift_px * s)
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


@functools.lru_cache(maxsize=8)
def _hanning(width: int, height: int) -> np.ndarray:
    return np.asarray(cv2.createHanningWindow((width, height), cv2.CV_32F))


def _tile_sums(x: np.ndarray, n: int) -> np.ndarray:
    h, w = x.shape
    return np.asarray(x.reshape(n, h // n, n, w // n).sum(axis=(1, 3)))


def _tile_std(x: np.ndarray, n: int) -> np.ndarray:
    """Grey-level standard deviation of each tile of an n×n grid (exact multiple)."""
    mean = cv2.resize(x, (n, n), interpolation=cv2.INTER_AREA).astype(np.float64)
    square = cv2.resize(x * x, (n, n), interpolation=cv2.INTER_AREA).astype(np.float64)
    return np.asarray(np.sqrt(np.maximum(square - mean * mean, 0.0)))


def _tile_phase_shifts(
    a: np.ndarray, b: np.ndarray, n: int, start: tuple[int, int], pad: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile shift (n, n, 2) of `b` against `a` by phase correlation, searched around the
    whole-pixel shift `start`, and which tiles gave a trustworthy peak."""
    h, w = a.shape
    th, tw = h // n, w // n
    window = _hanning(tw, th)
    bp = cv2.copyMakeBorder(b, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    ox, oy = pad + start[0], pad + start[1]
    moved = bp[oy : oy + h, ox : ox + w]
    shifts = np.zeros((n, n, 2), np.float32)
    valid = np.zeros((n, n), bool)
    # (nearly) blank tiles have nothing to measure
    textured = (_tile_std(a, n) >= 8.0) & (_tile_std(moved, n) >= 8.0)
    for i, j in zip(*np.nonzero(textured), strict=True):
        ta = a[i * th : (i + 1) * th, j * tw : (j + 1) * tw]
        tb = moved[i * th : (i + 1) * th, j * tw : (j + 1) * tw]
        # windowed copies: cv2.phaseCorrelate(a, b, window) writes the window into its
        # inputs (OpenCV 5.0), which would spoil the overlapping neighbour tiles
        (dx, dy), response = cv2.phaseCorrelate(ta * window, tb * window)
        shifts[i, j] = (dx + start[0], dy + start[1])
        valid[i, j] = response > 0.1
    return shifts, valid


def _lucas_kanade(
    a: np.ndarray,
    b: np.ndarray,
    warp: np.ndarray,
    residual: np.ndarray,
    use: np.ndarray,
    iterations: int,
) -> np.ndarray:
    """Refine the per-tile residual r so that b(W·x + r) ≈ a(x), by Lucas–Kanade (inverse
    compositional: a's gradients, b resampled), all tiles at once. The global part W is
    resampled exactly, so a tile's residual is a plain shift even on a rotated board.
    Phase correlation's sub-pixel peak is off by 0.3–1 px on binary scans; this lands
    within ~0.05 px."""
    n = residual.shape[0]
    h, w = a.shape
    gx = cv2.Sobel(a, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)
    gy = cv2.Sobel(a, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)
    hxx, hxy, hyy = _tile_sums(gx * gx, n), _tile_sums(gx * gy, n), _tile_sums(gy * gy, n)
    det = hxx * hyy - hxy * hxy
    # a tile whose edges all run one way: the aperture problem (see the end)
    conditioned = use & (det > 0.05 * (hxx + hyy) ** 2 / 4 + 1e-6)
    if not conditioned.any():
        return residual
    rigid = cv2.transform(pixel_grid(h, w), warp, dst=scratch("lk_rigid", (h, w, 2)))
    field, maps = scratch("lk_field", (h, w, 2)), scratch("lk_maps", (h, w, 2))
    error, product = scratch("lk_error", (h, w)), scratch("lk_product", (h, w))
    r = residual.copy()
    for _ in range(iterations):
        cv2.resize(r, (w, h), dst=field, interpolation=cv2.INTER_NEAREST)  # constant per tile
        cv2.add(rigid, field, dst=maps)
        cv2.remap(b, maps, None, cv2.INTER_LINEAR, error, cv2.BORDER_REPLICATE)  # type: ignore[call-overload, unused-ignore]
        cv2.subtract(error, a, dst=error)
        bx = _tile_sums(cv2.multiply(gx, error, dst=product), n)
        by = _tile_sums(cv2.multiply(gy, error, dst=product), n)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.dstack([(hyy * bx - hxy * by) / det, (hxx * by - hxy * bx) / det])
        r -= np.where(conditioned[..., None], np.clip(step, -1.0, 1.0), 0.0).astype(np.float32)
    # A tile that wandered far from its phase-correlation peak fell into another minimum; a
    # tile whose edges all run one way (aperture problem) has no trustworthy shift (its
    # phase peak scatters by 1–2 px on 5×5 tiles). Both take the mean of their trustworthy
    # neighbours (a real uneven stretch moves neighbouring tiles together), else the fit.
    trusted = conditioned & (np.hypot(*(r - residual).transpose(2, 0, 1)) <= 1.5)
    out = r.copy()
    for i, j in zip(*np.nonzero(use & ~trusted), strict=True):
        near = (slice(max(0, i - 1), i + 2), slice(max(0, j - 1), j + 2))
        ok = trusted[near]
        out[i, j] = r[near][ok].mean(axis=0) if ok.any() else 0.0
    return out


def _fit_motion(
    points: np.ndarray, shifts: np.ndarray, centre: np.ndarray, params: RoiParams
) -> np.ndarray | None:
    """2×3 board-to-template matrix fitted to tile shifts by least squares, or None if too
    few tiles agree or the fit is implausible.

    Affine where ≥ 6 tiles spread over both axes (a line-scan board is often stretched by
    ~1 %, which a rigid fit would leave as ±3 px residuals), rigid otherwise. Starts from
    the median shift, since a tile or two on a repetitive pattern can be far off, and fits
    twice, the second time without tiles more than `max_local_shift_px` off the first fit.
    """
    if len(shifts) < 3:
        return None
    q = points - centre
    guess = np.median(shifts, axis=0)
    use = np.hypot(*(shifts - guess).T) <= 2 * params.max_local_shift_px
    m = np.zeros((2, 2))
    t = guess
    for _ in range(2):
        if use.sum() < 3:
            return None
        qu, du = q[use], shifts[use]
        qc, dc = qu - qu.mean(axis=0), du - du.mean(axis=0)
        spread = (qc * qc).sum(axis=0)
        if spread.sum() <= 0.0:
            return None
        if use.sum() >= 6 and spread.min() > 0.1 * spread.max():
            # displacement d = M·q + t, each row by least squares on centred data
            m = np.linalg.solve(qc.T @ qc, qc.T @ dc).T
        else:  # small-angle rotation: dx = −θ·qy, dy = θ·qx, closed form
            angle = float((dc[:, 1] * qc[:, 0] - dc[:, 0] * qc[:, 1]).sum()) / spread.sum()
            c, s = np.cos(angle), np.sin(angle)
            m = np.array([[c - 1.0, -s], [s, c - 1.0]])
        t = du.mean(axis=0) - m @ qu.mean(axis=0)
        off = shifts - (q @ m.T + t)
        use = np.hypot(off[:, 0], off[:, 1]) <= params.max_local_shift_px
    angle_deg = np.degrees(np.arctan2(m[1, 0] - m[0, 1], 2.0 + m[0, 0] + m[1, 1]))
    stretch = np.abs((m + m.T) / 2).max()  # the symmetric part: scale and shear
    if (
        abs(angle_deg) > params.max_rotation_deg
        or stretch > params.max_stretch
        or np.hypot(t[0], t[1]) > params.max_shift_px
    ):
        return None
    warp = np.zeros((2, 3))
    warp[:, :2] = np.eye(2) + m
    warp[:, 2] = centre + t - warp[:, :2] @ centre
    return warp


def _to_small(warp: np.ndarray, s: float) -> np.ndarray:
    """A full-size board-to-template matrix in the coordinates of the images downscaled by
    `s` (pixel centres: u = (x + 0.5)·s − 0.5)."""
    scale = np.array([[s, 0.0, s / 2 - 0.5], [0.0, s, s / 2 - 0.5], [0.0, 0.0, 1.0]])
    full = np.vstack([warp, [0.0, 0.0, 1.0]])
    return np.asarray((scale @ full @ np.linalg.inv(scale))[:2])


def _displacement(warp: np.ndarray, points: np.ndarray) -> np.ndarray:
    """How far the 2×3 ``warp`` moves each of ``points`` (N, 2)."""
    moved: np.ndarray = points @ warp[:, :2].T + warp[:, 2] - points
    return moved


def _plausible(residual: np.ndarray, use: np.ndarray, limit: float) -> np.ndarray:
    """``residual`` with the tiles beyond ``limit`` (or already unused) zeroed; ``use`` is
    narrowed to the tiles kept, in place."""
    use &= np.hypot(residual[:, 0], residual[:, 1]) <= limit
    residual[~use] = 0.0
    return residual


def align_template(image: np.ndarray, template: np.ndarray, params: RoiParams) -> np.ndarray:
    """The template warped into the board's frame (same shape, uint8). Inputs are checked
    by the caller."""
    return align_with_coverage(image, template, params)[0]


def align_with_coverage(
    image: np.ndarray, template: np.ndarray, params: RoiParams
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`align_template`, and the 0/1 mask of the pixels it had no template for
    (:func:`inspection.roi_warp.outside_template`; None when it had one for every pixel)."""
    if not params.align:
        return template, None
    t0 = time.perf_counter()
    h, w = image.shape
    n = params.local_tiles
    if n < 2 or h // n < 32 or w // n < 32:
        warp = estimate_alignment(image, template, params).astype(np.float64)
        t0 = lap("ecc", t0)  # too small for tiles: the global fit
        aligned, _ = remap_template(template, warp, None)
        outside = outside_template(warp, None, h, w)
        lap("warp", t0)
        return aligned, outside
    s = params.align_scale
    size = (max(16, round(w * s)), max(16, round(h * s)))
    a, b = _small(image, size), _small(template, size)
    if cv2.meanStdDev(a)[1][0, 0] < 1.0 or cv2.meanStdDev(b)[1][0, 0] < 1.0:
        lap("phase_correlation", t0)
        return template.copy(), None  # a blank image has nothing to align on
    # the global shift only picks where each tile's search starts (whole pixels), so a
    # quarter of the half size does: 16× fewer pixels to transform
    coarse = (max(16, size[0] // 2), max(16, size[1] // 2))
    ratio = coarse[0] / size[0]
    ca = cv2.resize(a, coarse, interpolation=cv2.INTER_AREA)
    cb = cv2.resize(b, coarse, interpolation=cv2.INTER_AREA)
    gx, gy = (v / ratio for v in _global_shift(ca, cb, params.max_shift_px * s * ratio))
    t0 = lap("phase_correlation", t0)
    # tiles cover the largest multiple of n; a few edge rows/columns go unmeasured
    sh, sw = (size[1] // n) * n, (size[0] // n) * n
    a = a[:sh, :sw]
    pad = int(np.ceil(params.max_shift_px * s)) + 2
    shifts, valid = _tile_phase_shifts(a, b, n, (round(gx), round(gy)), pad)
    # tile centres in full-size pixels, from u = (x + 0.5)·s − 0.5 on the small images
    cy, cx = np.meshgrid(
        (np.arange(n) + 0.5) * sh / n, (np.arange(n) + 0.5) * sw / n, indexing="ij"
    )
    points = np.stack([cx.ravel() / s - 0.5, cy.ravel() / s - 0.5], axis=1)
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    use = valid.ravel()
    measured = shifts.reshape(-1, 2).astype(np.float64) / s
    fitted = _fit_motion(points[use], measured[use], centre, params)
    if fitted is None:  # too few tiles agree: the global fit, as before there were tiles
        t0 = lap("local_tiles", t0)
        warp = estimate_alignment(image, template, params).astype(np.float64)
        t0 = lap("ecc", t0)
    else:
        warp = fitted
    # what the tiles saw beyond the global motion, in small-image pixels
    fit_at = _displacement(warp, points)
    residual = _plausible((measured - fit_at) * s, use, params.max_local_shift_px * s)
    t0 = lap("local_tiles", t0)
    if params.refine_iterations > 0 and use.any():
        residual = _lucas_kanade(
            a,
            b,
            _to_small(warp, s).astype(np.float32),
            residual.reshape(n, n, 2).astype(np.float32),
            use.reshape(n, n),
            params.refine_iterations,
        ).reshape(-1, 2)
        # refit: the refined tiles pin the global motion down better than the raw peaks
        total = fit_at + residual / s
        refined = _fit_motion(points[use], total[use], centre, params)
        if refined is not None:
            warp = refined
            fit_at = _displacement(warp, points)
        residual = _plausible((total - fit_at) * s, use, params.max_local_shift_px * s)
    t0 = lap("refine", t0)
    offsets = residual / s
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64)
    corner_shift = _displacement(warp, corners)
    # Already registered: skip the full-size resampling. The tiles' own estimates scatter by
    # up to ~0.75 px on a registered board (5×5 tiles; a defect inside a tile pulls on it);
    # moving a binary template by less than half a pixel does not change it after
    # thresholding, and the difference mask's tolerance absorbs the rest.
    if (
        np.abs(corner_shift).max() <= params.registered_px
        and np.abs(fit_at + offsets).max() <= 3 * params.registered_px
    ):
        lap("warp", t0)
        return template.copy(), None
    # local offsets under a quarter pixel everywhere: the affine warp alone (0.5 ms instead of
    # a per-pixel map, 2 ms), for the same reason as the skip above
    local = np.abs(offsets).max() > params.registered_px
    field = offsets.reshape(n, n, 2).astype(np.float32) if local else None
    aligned, maps = remap_template(template, warp, field)
    outside = outside_template(warp, maps, h, w)
    lap("warp", t0)
    return aligned, outside
