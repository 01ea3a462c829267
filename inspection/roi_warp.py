"""Resampling for template registration (:mod:`inspection.roi_align`): the template warped
by a fitted motion, the board's pixels that motion brings in from beyond the template, and
the per-thread scratch arrays and pixel grid they share with the Lucas–Kanade refinement."""

from __future__ import annotations

import functools
import threading

import cv2
import numpy as np

_scratch = threading.local()


def scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 scratch array reused across calls (per thread). A fresh multi-MB array per
    call costs more than the arithmetic on it: glibc hands the memory back to the kernel
    and every page faults in again (measured: a 640×640 remap map 1.5 ms → 6 ms)."""
    buffers: dict[tuple[str, tuple[int, ...]], np.ndarray] = _scratch.__dict__.setdefault(
        "buffers", {}
    )
    key = (name, shape)
    if key not in buffers:
        if len(buffers) > 16:
            buffers.clear()  # many image sizes: do not hoard
        buffers[key] = np.empty(shape, np.float32)
    return buffers[key]


@functools.lru_cache(maxsize=4)
def pixel_grid(height: int, width: int) -> np.ndarray:
    """(x, y) of every pixel as a CV_32FC2 image, the identity map for cv2.remap."""
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    grid = np.dstack([xs, ys])
    grid.setflags(write=False)
    return grid


def remap_template(
    template: np.ndarray, warp: np.ndarray, residual: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The template resampled at W·x + r(x), with r bilinear between tile centres (and
    constant beyond the outer ones); and the per-pixel map (x, y) it used (None for the
    affine warp alone, which needs none). The map is this thread's scratch array: valid
    until the next call."""
    h, w = template.shape
    if residual is None:
        return np.asarray(
            cv2.warpAffine(
                template,
                warp.astype(np.float32),
                (w, h),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,
            )
        ), None
    field = cv2.resize(
        residual, (w, h), dst=scratch("field", (h, w, 2)), interpolation=cv2.INTER_LINEAR
    )
    maps = cv2.transform(pixel_grid(h, w), warp, dst=scratch("maps", (h, w, 2)))
    cv2.add(maps, field, dst=maps)
    return np.asarray(
        cv2.remap(  # type: ignore[call-overload, unused-ignore]
            template, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
    ), maps


_BAND = 32
"""px from the image's edge within which a fitted motion can reach beyond the template
(``max_shift_px`` 16 + ``max_local_shift_px`` 8 by default, with room to spare)"""


def outside_template(
    warp: np.ndarray, maps: np.ndarray | None, h: int, w: int
) -> np.ndarray | None:
    """0/1 (h, w) mask of the board's pixels whose template sample lies beyond the template's
    edge (more than half a pixel), where the aligned template only repeats its edge: there is
    nothing there to compare the board with. None when no pixel is. ``maps``: the per-pixel
    map `remap_template` used, or None for the affine ``warp`` alone. A line-scan stretch of ~1 %
    (DeepPCB group 20085) leaves 2–3 px strips at both sides, where copper that enters the
    board's field of view became spurious-copper false alarms.

    The map is a small smooth motion, so a side whose outermost line stays inside has no such
    pixel; on a side that overshoots by d px, only the outer d + 2 px are examined."""

    def at(rows: slice, cols: slice) -> np.ndarray:
        if maps is not None:
            return maps[rows, cols]
        return np.asarray(cv2.transform(np.ascontiguousarray(pixel_grid(h, w)[rows, cols]), warp))

    def overshoot(m: np.ndarray) -> np.ndarray:
        """px by which each map value lies beyond the template (≤ 0: inside)."""
        x, y = m[..., 0], m[..., 1]
        return np.maximum.reduce([-0.5 - x, x - (w - 0.5), -0.5 - y, y - (h - 0.5)])

    def side(k: int, n: int) -> tuple[slice, slice]:
        """The outer ``n`` px of side ``k`` (top, bottom, left, right)."""
        rows = (slice(0, n), slice(h - n, h), slice(0, h), slice(0, h))[k]
        cols = (slice(0, w), slice(0, w), slice(0, n), slice(w - n, w))[k]
        return rows, cols

    out: np.ndarray | None = None
    for k in range(4):
        depth = float(overshoot(at(*side(k, 1))).max())
        if depth <= 0.0:
            continue
        rows, cols = side(k, min(_BAND, h // 2, w // 2, int(np.ceil(depth)) + 2))
        if out is None:
            out = np.zeros((h, w), np.uint8)
        out[rows, cols] |= (overshoot(at(rows, cols)) > 0.0).astype(np.uint8)
    return out
