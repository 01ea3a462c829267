"""DeepPCB's six defect types painted on a binary copper mask, one at a time and apart:
opens, shorts, mousebites, spurs, spurious copper and pin-holes, each returning the box a
DeepPCB annotator would draw (the defect's pixels plus ``BOX_MARGIN_PX``)."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from schemas.events import Box

BOX_MARGIN_PX = 10  # DeepPCB's annotations extend ~10 px beyond the defect on every side

_DIRS = ((1, 0), (0, 1), (1, 1), (1, -1))  # crossing directions, and their opposites


class DefectPainter:
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
