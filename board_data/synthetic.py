"""Synthetic PCB boards in DeepPCB's style, for the demo and for tests without real data.

Images are binarised uint8 in DeepPCB's polarity: copper is black (0), the substrate white
(255). Each generator holds a few product designs (defect-free templates made of traces
with 45° bends, rectangular and round pads, and vias); a board is one design seen through
a scanner (small shift and rotation, edge blur, speckle), with 3–12 defects of DeepPCB's six
types on a defective board. Ground-truth boxes follow DeepPCB's annotations: the defect's
pixels plus a 10 px margin. Everything is deterministic from (seed, index).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np

from board_data.scan import BACKGROUND, COPPER, ScanConditions, misregister, scan_image
from board_data.synthetic_defects import DefectPainter
from schemas.events import DefectType, GroundTruth


@dataclass(frozen=True)
class SyntheticBoard:
    image: np.ndarray
    template: np.ndarray
    defects: tuple[GroundTruth, ...]
    template_id: str
    product: str

    @property
    def defective(self) -> bool:
        return bool(self.defects)


@dataclass
class _Design:
    """A template under construction: copper mask plus a label per feature for clearance."""

    size: int
    labels: np.ndarray = field(init=False)
    count: int = 0

    def __post_init__(self) -> None:
        self.labels = np.zeros((self.size, self.size), np.int32)

    def try_add(self, mask: np.ndarray, clearance: int, allowed: tuple[int, ...] = ()) -> int:
        """Add a feature if it keeps `clearance` from all features except `allowed` ones."""
        x, y, w, h = cv2.boundingRect(mask)
        if w == 0:
            return 0
        # only the feature's neighbourhood matters: dilate a window, not the whole board
        x0, y0 = max(0, x - clearance), max(0, y - clearance)
        x1, y1 = min(self.size, x + w + clearance), min(self.size, y + h + clearance)
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * clearance + 1,) * 2)
        near = self.labels[y0:y1, x0:x1][cv2.dilate(mask[y0:y1, x0:x1], k) > 0]
        if np.isin(near, (0, *allowed), invert=True).any():
            return 0
        self.count += 1
        self.labels[mask > 0] = self.count
        return self.count


def _route(p: tuple[int, int], q: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A path from p to q made of straight runs and one 45° diagonal, like routed traces."""
    (x0, y0), (x1, y1) = p, q
    dx, dy = x1 - x0, y1 - y0
    diag = min(abs(dx), abs(dy))
    sx, sy = int(np.sign(dx)), int(np.sign(dy))
    # split the straight part of the longer axis before and after the diagonal
    straight = max(abs(dx), abs(dy)) - diag
    before = int(rng.integers(0, straight + 1))
    pts = [(x0, y0)]
    if abs(dx) >= abs(dy):
        pts.append((x0 + sx * before, y0))
        pts.append((x0 + sx * (before + diag), y1))
    else:
        pts.append((x0, y0 + sy * before))
        pts.append((x1, y0 + sy * (before + diag)))
    pts.append((x1, y1))
    return np.array(pts, np.int32)


def _make_design(size: int, rng: np.random.Generator) -> np.ndarray:
    """One defect-free template: buses, pads and vias, then traces routed between pads."""
    d = _Design(size)
    s = size / 640  # feature sizes are for DeepPCB's 640 px crops at ~48 px/mm
    widths = rng.choice([5, 6, 8, 10, 12, 16], size=3, replace=False) * s
    clearance = max(3, round(rng.uniform(6, 12) * s))
    anchors: list[tuple[tuple[int, int], int]] = []  # pad centre and its label
    holes: list[tuple[tuple[int, int], int]] = []
    edge_points = lambda: (  # noqa: E731 - a point just outside a random board edge
        [
            (-20, int(rng.integers(0, size))),
            (size + 20, int(rng.integers(0, size))),
            (int(rng.integers(0, size)), -20),
            (int(rng.integers(0, size)), size + 20),
        ][int(rng.integers(0, 4))]
    )
    for _ in range(int(rng.integers(1, 4))):
        # a bus: parallel traces at a tight pitch, the usual home of shorts
        width = max(2, int(widths.min()))
        pitch = width + clearance + int(rng.integers(0, 6))
        p, q = edge_points(), edge_points()
        route = _route(p, q, rng)
        vertical = abs(q[1] - p[1]) > abs(q[0] - p[0])
        step = np.array((pitch, 0) if vertical else (0, pitch), np.int32)
        for i in range(int(rng.integers(3, 8))):
            m = np.zeros((size, size), np.uint8)
            cv2.polylines(m, [route + i * step], False, 1, width, cv2.LINE_AA)
            d.try_add(m, clearance)
    for _ in range(int(rng.integers(10, 30)) * 20):
        if len(anchors) >= 30:
            break
        m = np.zeros((size, size), np.uint8)
        c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        kind = rng.choice(["rect", "round", "via"], p=[0.4, 0.3, 0.3])
        if kind == "rect":
            hw, hh = (rng.uniform(8, 26, size=2) * s).astype(int)
            cv2.rectangle(m, (c[0] - hw, c[1] - hh), (c[0] + hw, c[1] + hh), 1, -1)
        else:
            cv2.circle(m, c, max(4, int(rng.uniform(9, 24) * s)), 1, -1, cv2.LINE_AA)
        label = d.try_add(m, clearance * 2)
        if label:
            anchors.append((c, label))
            if kind == "via":
                holes.append((c, max(3, int(rng.uniform(3, 7) * s))))
    for _ in range(400):
        # connect two pads, or a pad to the board edge (traces leave DeepPCB's crops too)
        (p, lp) = anchors[int(rng.integers(len(anchors)))]
        if rng.random() < 0.6 and len(anchors) > 1:
            (q, lq) = anchors[int(rng.integers(len(anchors)))]
        else:
            q, lq = edge_points(), 0
        if lp == lq or np.hypot(p[0] - q[0], p[1] - q[1]) < 40 * s:
            continue
        m = np.zeros((size, size), np.uint8)
        width = max(2, int(widths[int(rng.integers(len(widths)))]))
        cv2.polylines(m, [_route(p, q, rng)], False, 1, width, cv2.LINE_AA)
        d.try_add(m, clearance, (lp, lq))
    image = np.where(d.labels > 0, COPPER, BACKGROUND).astype(np.uint8)
    for c, r in holes:
        cv2.circle(image, c, r, BACKGROUND, -1, cv2.LINE_AA)
    return np.where(image < 128, COPPER, BACKGROUND).astype(np.uint8)  # binary, like DeepPCB


class BoardGenerator:
    """Deterministic source of synthetic boards: `board(i)` is the same for the same seed."""

    def __init__(
        self,
        seed: int = 0,
        n_designs: int = 4,
        size: int = 640,
        defect_rate: float = 0.5,
        scan: ScanConditions = ScanConditions(),
        defect_mix: dict[DefectType, float] | None = None,
    ) -> None:
        if n_designs < 1:
            raise ValueError(f"n_designs must be ≥ 1, got {n_designs}")
        if size < 128:
            raise ValueError(f"size must be ≥ 128 px, got {size}")
        if not 0.0 <= defect_rate <= 1.0:
            raise ValueError(f"defect_rate must be in [0, 1], got {defect_rate}")
        mix = defect_mix or {t: 1.0 for t in DefectType}
        if any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError(f"defect_mix needs non-negative weights with a positive sum: {mix}")
        self.seed = seed
        self.n_designs = n_designs
        self.size = size
        self.defect_rate = defect_rate
        self.scan = scan
        self._types = list(mix)
        w = np.array([mix[t] for t in self._types], float)
        self._weights = w / w.sum()

    @cached_property
    def template_ids(self) -> tuple[str, ...]:
        return tuple(f"syn{self.seed}-d{d}" for d in range(self.n_designs))

    @cached_property
    def products(self) -> tuple[str, ...]:
        """One product per design, in the order of ``template_ids``."""
        return tuple(f"SYN-{self.seed}-{d}" for d in range(self.n_designs))

    @cached_property
    def _templates(self) -> dict[str, np.ndarray]:
        out = {}
        for d, tid in enumerate(self.template_ids):
            image = _make_design(self.size, np.random.default_rng((self.seed, 0, d)))
            image.setflags(write=False)
            out[tid] = image
        return out

    def template(self, template_id: str) -> np.ndarray:
        """The clean, aligned design image for a template id (read-only)."""
        try:
            return self._templates[template_id]
        except KeyError:
            raise KeyError(
                f"unknown template_id {template_id!r}; this generator has {self.template_ids}"
            ) from None

    def board(self, index: int) -> SyntheticBoard:
        if index < 0:
            raise ValueError(f"board index must be ≥ 0, got {index}")
        rng = np.random.default_rng((self.seed, 1, index))
        d = int(rng.integers(self.n_designs))
        tid = self.template_ids[d]
        template = self.template(tid)
        copper = misregister(template, rng, self.scan) < 128
        defective = rng.random() < self.defect_rate
        truths: list[GroundTruth] = []
        if defective:
            copper, truths = self._add_defects(copper, int(rng.integers(3, 13)), rng)
        image = scan_image(np.where(copper, COPPER, BACKGROUND), rng, self.scan)
        return SyntheticBoard(image, template, tuple(truths), tid, self.products[d])

    def _add_defects(
        self, copper: np.ndarray, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, list[GroundTruth]]:
        defects = DefectPainter(copper, rng)
        makers = {
            DefectType.OPEN: defects.open,
            DefectType.SHORT: defects.short,
            DefectType.MOUSEBITE: defects.mousebite,
            DefectType.SPUR: defects.spur,
            DefectType.COPPER: defects.copper,
            DefectType.PIN_HOLE: defects.pin_hole,
        }
        truths: list[GroundTruth] = []
        for _ in range(n * 8):  # some draws fail (no room, bad geometry): retry
            if len(truths) >= n:
                break
            kind = self._types[int(rng.choice(len(self._types), p=self._weights))]
            box = makers[kind]()
            if box is not None:
                truths.append(GroundTruth(box, kind))
        return defects.cu, truths
