"""Synthetic part surfaces for the anomaly mode, after the magnetic-tile set: grayscale tiles
of varying size with a smooth shading, a fine grinding texture and sensor noise (no two good
tiles alike, so there is no template), some with a defect and its pixel mask:

- ``blowhole``: a dark round pit with a bright rim;
- ``crack``: a thin dark polyline across part of the tile;
- ``fray``: a ragged bright patch at an edge.

``write_class_folders`` lays a set out as the anomaly trainer reads it
(``<root>/<class>/<name>.jpg`` + ``<name>.png`` masks; the good class is ``good``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DEFECTS = ("blowhole", "crack", "fray")
GOOD_CLASS = "good"


@dataclass(frozen=True)
class SyntheticTile:
    image: np.ndarray  # uint8 (H, W)
    mask: np.ndarray  # uint8 (H, W): 255 on the defect, 0 elsewhere
    defect: str | None  # one of DEFECTS, None for a good tile

    @property
    def defective(self) -> bool:
        return self.defect is not None


class TileGenerator:
    """Tiles of one product; ``tile(i)`` is the same for the same seed and index."""

    def __init__(self, seed: int = 0, defect_rate: float = 0.5) -> None:
        if not 0.0 <= defect_rate <= 1.0:
            raise ValueError(f"defect_rate must be in [0, 1], got {defect_rate}")
        self.seed = seed
        self.defect_rate = defect_rate
        self.product = f"TILE-{seed}"

    def surface(self, rng: np.random.Generator) -> np.ndarray:
        h, w = int(rng.integers(150, 230)), int(rng.integers(180, 280))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        shade = 110 + 25 * np.sin(xx / w * np.pi * rng.uniform(0.5, 1.5) + rng.uniform(0, 6))
        shade += 10 * (yy / h - 0.5)
        angle = rng.uniform(0, np.pi)
        stripes = 6 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * rng.uniform(0.6, 0.9))
        noise = cv2.GaussianBlur(rng.normal(0, 9, (h, w)).astype(np.float32), (0, 0), 1.0)
        return np.asarray(shade + stripes + noise, np.float32)

    def tile(self, index: int) -> SyntheticTile:
        if index < 0:
            raise ValueError(f"tile index must be ≥ 0, got {index}")
        rng = np.random.default_rng((self.seed, 7, index))
        surface = self.surface(rng)
        mask = np.zeros(surface.shape, np.uint8)
        defect = None
        if rng.random() < self.defect_rate:
            defect = DEFECTS[int(rng.integers(len(DEFECTS)))]
            self._draw(surface, mask, defect, rng)
        image = np.clip(surface, 0, 255).astype(np.uint8)
        return SyntheticTile(image, mask, defect)

    @staticmethod
    def _draw(surface: np.ndarray, mask: np.ndarray, defect: str, rng: np.random.Generator) -> None:
        h, w = surface.shape
        layer = np.zeros_like(surface)
        if defect == "blowhole":
            r = int(rng.integers(5, 10))
            c = (int(rng.integers(r + 8, w - r - 8)), int(rng.integers(r + 8, h - r - 8)))
            cv2.circle(layer, c, r + 2, 35.0, -1)
            cv2.circle(layer, c, r, -80.0, -1)
            cv2.circle(mask, c, r + 2, 255, -1)
        elif defect == "crack":
            pts = [np.array([rng.integers(10, w - 10), rng.integers(10, h - 10)], float)]
            direction = rng.uniform(0, 2 * np.pi)
            for _ in range(int(rng.integers(4, 8))):
                direction += rng.normal(0, 0.4)
                step = rng.uniform(8, 14) * np.array([np.cos(direction), np.sin(direction)])
                pts.append(np.clip(pts[-1] + step, 2, [w - 3, h - 3]))
            poly = np.round(np.array(pts)).astype(np.int32)
            cv2.polylines(layer, [poly], False, -70.0, 2)
            cv2.polylines(mask, [poly], False, 255, 3)
        else:  # fray: a ragged bright patch on the top or bottom edge
            x0 = int(rng.integers(10, w - 40))
            top = rng.random() < 0.5
            ys = [int(y) for y in rng.integers(6, 16, 6)]
            xs = np.linspace(x0, x0 + int(rng.integers(20, 35)), len(ys)).astype(int)
            edge = 0 if top else h - 1
            ragged = [(int(x), edge + (y if top else -y)) for x, y in zip(xs, ys, strict=True)]
            patch = np.array([(int(xs[0]), edge), *ragged, (int(xs[-1]), edge)], np.int32)
            cv2.fillPoly(layer, [patch], 70.0)
            cv2.fillPoly(mask, [patch], 255)
        surface += cv2.GaussianBlur(layer, (0, 0), 0.8)

    def write_class_folders(self, root: Path, tiles: int, start: int = 0) -> Path:
        """Tiles ``start`` … ``start + tiles - 1`` under ``root``: good ones in ``good/``, each
        defect type in its own folder with its mask."""
        root = Path(root)
        for i in range(start, start + tiles):
            t = self.tile(i)
            folder = root / (t.defect or GOOD_CLASS)
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"tile{i:05d}.jpg"), t.image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(folder / f"tile{i:05d}.png"), t.mask)
        return root
