"""What a line-scan camera does to a board between its design and the image a line sends:
misregistration (a small shift and rotation), optics blur, edge noise, binarisation and
speckle. The synthetic generator scans its boards with it, and training scans DeepPCB's
templates with it to stand in for good boards (:func:`simulate_good_board`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

COPPER = 0
BACKGROUND = 255


@dataclass(frozen=True)
class ScanConditions:
    """What a line-scan camera does to a board, between board and template."""

    max_shift_px: float = 2.0
    """misregistration: uniform shift in each axis, up to this"""
    max_rotation_deg: float = 0.3
    """misregistration: uniform rotation about the centre, up to this"""
    blur_sigma: float = 0.8
    """optics blur before binarisation: rounds corners, roughens edges with the noise below"""
    edge_noise: float = 25.0
    """grey-level noise (std) added before binarisation: jagged edges like DeepPCB's"""
    noise: float = 0.002
    """share of pixels flipped as salt-and-pepper speckle after binarisation"""


GOOD_BOARD_SCAN = ScanConditions(
    max_shift_px=1.5, max_rotation_deg=0.2, blur_sigma=0.7, edge_noise=20.0, noise=0.0
)
"""A good DeepPCB board as its scanner delivers it: sub-pixel misregistration, a light blur,
edge noise, no speckle (DeepPCB's images are clean binarised scans)."""


def misregister(
    image: np.ndarray, rng: np.random.Generator, conditions: ScanConditions
) -> np.ndarray:
    """``image`` moved by a random shift and rotation about its centre (edges replicated)."""
    h, w = image.shape[:2]
    dx, dy = rng.uniform(-conditions.max_shift_px, conditions.max_shift_px, size=2)
    angle = rng.uniform(-conditions.max_rotation_deg, conditions.max_rotation_deg)
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    m[:, 2] += (dx, dy)
    return np.asarray(
        cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    )


def scan_image(
    grey: np.ndarray, rng: np.random.Generator, conditions: ScanConditions
) -> np.ndarray:
    """A binarised uint8 image (copper 0, substrate 255) of a grey-level board: blurred,
    edge-noised, thresholded at mid-grey, then speckled."""
    out = np.asarray(grey, np.float32)
    if conditions.blur_sigma > 0:
        out = np.asarray(cv2.GaussianBlur(out, (0, 0), conditions.blur_sigma), np.float32)
    if conditions.edge_noise > 0:
        out = out + rng.normal(0.0, conditions.edge_noise, out.shape).astype(np.float32)
    image = np.where(out < 128, COPPER, BACKGROUND).astype(np.uint8)
    if conditions.noise > 0:
        flip = rng.random(image.shape) < conditions.noise
        image[flip] = BACKGROUND - image[flip]
    return image


def jpeg_roundtrip(image: np.ndarray, quality: int = 90) -> np.ndarray:
    """``image`` encoded as JPEG and decoded again, as DeepPCB's images were stored."""
    ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
        raise RuntimeError("JPEG encoding failed")
    return np.asarray(cv2.imdecode(jpg, cv2.IMREAD_GRAYSCALE), np.uint8)


def simulate_good_board(
    template: np.ndarray,
    rng: np.random.Generator,
    conditions: ScanConditions = GOOD_BOARD_SCAN,
    jpeg_quality: int = 90,
) -> np.ndarray:
    """A defect-free board as a scanner would deliver it: the template misregistered,
    scanned and JPEG-encoded (DeepPCB's images are binarised JPEGs). Same shape and dtype
    as ``template``."""
    moved = misregister(template, rng, conditions)
    return jpeg_roundtrip(scan_image(moved, rng, conditions), jpeg_quality)
