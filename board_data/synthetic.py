"""Synthetic PCB boards in DeepPCB's style, for the demo and for tests without real data.

Images are binarised uint8 in DeepPCB's polarity: copper is black (0), the substrate white
(255). Each generator holds a few product designs (defect-free templates made of traces
with 45° bends, rectangular and round pads, and vias); a board is one design seen through
a scanner (small shift and rotation, edge blur, speckle), with 3–12 defects of DeepPCB's six
types on a defective board. Ground-truth boxes follow DeepPCB's annotations: the defect's
pixels plus a 10 px margin. Everything is deterministic from (seed, index).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np

from schemas.events import Box, DefectType, GroundTruth

COPPER = 0
BACKGROUND = 255
BOX_MARGIN_PX = 10  # DeepPCB's annotations extend ~10 px beyond the defect on every side

_DIRS = ((1, 0), (0, 1), (1, 1), (1, -1))  # crossing directions, and their opposites


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


class _Defects:
    """Puts defects on a binary copper mask (True = copper), one at a time, apart."""

    def __init__(self, copper: np.ndarray, rng: np.random.Generator) -> None:
        self.cu = copper
        self.rng = rng
        self.size = copper.shape[0]
        u8 = copper.astype(np.uint8)
        self.dist_in = cv2.distanceTransform(u8, cv2.DIST_L2, 3)  # depth inside copper
        self.dist_out = cv2.distanceTransform(1 - u8, cv2.DIST_L2, 3)  # distance to copper
        _, self.parts = cv2.connectedComponents(u8, connectivity=8)
        self.busy = np.zeros_like(u8)  # areas taken by earlier defects (with spacing)

    def _pick(self, where: np.ndarray) -> tuple[int, int] | None:
        m = 24  # keep defects off the border so their boxes stay whole-ish
        where = where.copy()
        where[:m], where[-m:], where[:, :m], where[:, -m:] = False, False, False, False
        ys, xs = np.nonzero(where & (self.busy == 0))
        if len(xs) == 0:
            return None
        i = int(self.rng.integers(len(xs)))
        return int(xs[i]), int(ys[i])

    def _run(self, x: int, y: int, dx: int, dy: int, copper: bool, limit: int) -> int:
        """Steps from (x, y) along (dx, dy) while the pixel stays `copper` (up to limit)."""
        n = 0
        while n < limit:
            u, v = x + (n + 1) * dx, y + (n + 1) * dy
            if not (0 <= u < self.size and 0 <= v < self.size) or self.cu[v, u] != copper:
                break
            n += 1
        return n

    def _commit(self, new: np.ndarray) -> Box | None:
        changed = new != self.cu
        if changed.sum() < 12:
            return None
        ys, xs = np.nonzero(changed)
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        if max(x2 - x1, y2 - y1) > 60:
            return None  # DeepPCB defects are small; a big change is a bad draw
        m = BOX_MARGIN_PX
        cv2.rectangle(self.busy, (x1 - 2 * m, y1 - 2 * m), (x2 + 2 * m, y2 + 2 * m), 1, -1)
        self.cu = new
        s = self.size
        return Box(x1=max(0, x1 - m), y1=max(0, y1 - m), x2=min(s, x2 + m), y2=min(s, y2 + m))

    def _draw(self, fn: Callable[[np.ndarray], object], value: bool) -> np.ndarray:
        m = np.zeros(self.cu.shape, np.uint8)
        fn(m)
        new = self.cu.copy()
        new[m > 0] = value
        return new

    def open(self) -> Box | None:
        # a trace centre line: deep enough to be copper, shallow enough to be a trace
        p = self._pick((self.dist_in >= 2.5) & (self.dist_in <= 8))
        if p is None:
            return None
        x, y = p
        # the crossing direction is the one with the shortest copper run through p
        runs = [
            (self._run(x, y, dx, dy, True, 30), self._run(x, y, -dx, -dy, True, 30), dx, dy)
            for dx, dy in _DIRS
        ]
        a, b, dx, dy = min(runs, key=lambda r: r[0] + r[1])
        if a + b > 24:
            return None
        gap = int(self.rng.integers(3, 9))
        p0 = (x - (a + 2) * dx, y - (a + 2) * dy)
        p1 = (x + (b + 2) * dx, y + (b + 2) * dy)
        return self._commit(self._draw(lambda m: cv2.line(m, p0, p1, 1, gap), False))

    def short(self) -> Box | None:
        # a narrow gap between two different conductors, bridged across; most picks are
        # near one conductor only, so try a few
        gaps = (self.dist_out >= 1.5) & (self.dist_out <= 9)
        for _ in range(12):
            p = self._pick(gaps)
            if p is None:
                return None
            box = self._bridge(*p)
            if box is not None:
                return box
        return None

    def _bridge(self, x: int, y: int) -> Box | None:
        best = None
        for dx, dy in _DIRS:
            a = self._run(x, y, -dx, -dy, False, 24)
            b = self._run(x, y, dx, dy, False, 24)
            u0, v0 = x - (a + 1) * dx, y - (a + 1) * dy
            u1, v1 = x + (b + 1) * dx, y + (b + 1) * dy
            inside = all(0 <= t < self.size for t in (u0, v0, u1, v1))
            if not inside or a >= 24 or b >= 24:
                continue
            if self.parts[v0, u0] != self.parts[v1, u1] and (best is None or a + b < best[0]):
                best = (a + b, (u0, v0), (u1, v1))
        if best is None:
            return None
        _, p0, p1 = best
        width = int(self.rng.integers(2, 7))
        return self._commit(self._draw(lambda m: cv2.line(m, p0, p1, 1, width), True))

    def _edge_normal(self, x: int, y: int) -> tuple[float, float] | None:
        """Unit vector from copper towards the substrate at an edge point."""
        dirs = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy]
        free = [(self._run(x, y, dx, dy, False, 30), dx, dy) for dx, dy in dirs]
        n, dx, dy = max(free)
        if n < 12:
            return None
        norm = float(np.hypot(dx, dy))
        return dx / norm, dy / norm

    def mousebite(self) -> Box | None:
        p = self._pick((self.dist_in >= 0.5) & (self.dist_in <= 1.5))
        if p is None:
            return None
        normal = self._edge_normal(*p)
        if normal is None:
            return None
        x, y = p
        tx, ty = -normal[1], normal[0]  # along the edge

        def bites(m: np.ndarray) -> None:
            for _ in range(int(self.rng.integers(1, 4))):
                t = self.rng.uniform(-6, 6)
                r = int(self.rng.integers(3, 7))  # ≥ 3 px deep: shallower ones vanish in the scan
                c = (round(x + t * tx), round(y + t * ty))
                cv2.circle(m, c, r, 1, -1)

        return self._commit(self._draw(bites, False))

    def spur(self) -> Box | None:
        p = self._pick((self.dist_in >= 0.5) & (self.dist_in <= 1.5))
        if p is None:
            return None
        normal = self._edge_normal(*p)
        if normal is None:
            return None
        x, y = p
        length = self.rng.uniform(6, 13)
        # a little sideways lean, as real spurs rarely stick out square
        lean = self.rng.uniform(-0.5, 0.5)
        ex = x + length * (normal[0] - lean * normal[1])
        ey = y + length * (normal[1] + lean * normal[0])
        width = int(self.rng.integers(3, 5))
        end = (round(ex), round(ey))
        return self._commit(self._draw(lambda m: cv2.line(m, (x, y), end, 1, width), True))

    def copper(self) -> Box | None:
        p = self._pick(self.dist_out >= 16)
        if p is None:
            return None
        axes = (int(self.rng.integers(2, 9)), int(self.rng.integers(2, 6)))
        angle = float(self.rng.uniform(0, 180))
        return self._commit(
            self._draw(lambda m: cv2.ellipse(m, p, axes, angle, 0, 360, 1, -1), True)
        )

    def pin_hole(self) -> Box | None:
        r = int(self.rng.integers(2, 6))
        p = self._pick(self.dist_in >= r + 4)
        if p is None:
            return None
        axes = (r, max(2, r - int(self.rng.integers(0, 2))))
        angle = float(self.rng.uniform(0, 180))
        return self._commit(
            self._draw(lambda m: cv2.ellipse(m, p, axes, angle, 0, 360, 1, -1), False)
        )


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
        copper = self._misregister(template, rng) < 128
        defective = rng.random() < self.defect_rate
        truths: list[GroundTruth] = []
        if defective:
            copper, truths = self._add_defects(copper, int(rng.integers(3, 13)), rng)
        image = self._scan(copper, rng)
        return SyntheticBoard(image, template, tuple(truths), tid, f"SYN-{self.seed}-{d}")

    def _misregister(self, template: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sc = self.scan
        dx, dy = rng.uniform(-sc.max_shift_px, sc.max_shift_px, size=2)
        angle = rng.uniform(-sc.max_rotation_deg, sc.max_rotation_deg)
        c = (self.size - 1) / 2
        m = cv2.getRotationMatrix2D((c, c), angle, 1.0)
        m[:, 2] += (dx, dy)
        return cv2.warpAffine(
            template,
            m,
            (self.size, self.size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )

    def _add_defects(
        self, copper: np.ndarray, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, list[GroundTruth]]:
        defects = _Defects(copper, rng)
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

    def _scan(self, copper: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sc = self.scan
        grey: np.ndarray = np.where(copper, COPPER, BACKGROUND).astype(np.float32)
        if sc.blur_sigma > 0:
            grey = cv2.GaussianBlur(grey, (0, 0), sc.blur_sigma)
        if sc.edge_noise > 0:
            grey += rng.normal(0.0, sc.edge_noise, grey.shape).astype(np.float32)
        image = np.where(grey < 128, COPPER, BACKGROUND).astype(np.uint8)
        if sc.noise > 0:
            flip = rng.random(image.shape) < sc.noise
            image[flip] = BACKGROUND - image[flip]
        return image
