"""Folders of class subfolders (magnetic-tile's layout): ``<root>/<class>/<name>.jpg`` with an
optional same-name pixel mask ``<name>.png`` (0 background, non-zero defect), for the anomaly
mode; and the seeded split of such a set into training, calibration and test parts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from board_data.deeppcb import read_gray

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".png")

Part = Literal["train", "calibration", "test"]


@dataclass(frozen=True)
class ClassImage:
    """One image of a class-folder set; ``mask`` is its pixel mask file, if it has one."""

    path: Path
    cls: str
    mask: Path | None

    def load(self) -> np.ndarray:
        """The image as 2-D uint8 grayscale."""
        return read_gray(self.path)

    def load_mask(self, shape: tuple[int, int]) -> np.ndarray | None:
        """The mask as a bool array of ``shape`` (resized if it differs), or None."""
        if self.mask is None:
            return None
        import cv2

        m = read_gray(self.mask)
        if m.shape != shape:
            m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        return m > 0


def is_class_folder_set(root: Path) -> bool:
    """True when ``root`` holds at least two subfolders with images (and no DeepPCB layout)."""
    root = Path(root)
    if not root.is_dir():
        return False
    with_images = [d for d in root.iterdir() if d.is_dir() and _images_in(d)]
    return len(with_images) >= 2


def _images_in(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    stems_jpg = {p.stem for p in files if p.suffix.lower() != ".png"}
    # A .png beside a same-name image is that image's mask, not an image.
    return [
        p
        for p in files
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not (p.suffix.lower() == ".png" and p.stem in stems_jpg)
    ]


def class_images(root: Path) -> list[ClassImage]:
    """Every image of every class subfolder of ``root``, sorted by (class, file name)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no folder {root}")
    out: list[ClassImage] = []
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for p in _images_in(folder):
            mask = p.with_suffix(".png")
            out.append(ClassImage(p, folder.name, mask if mask != p and mask.is_file() else None))
    return out


def split_anomaly_set(
    items: Sequence[ClassImage],
    good_class: str,
    *,
    seed: int = 0,
    good_test: float = 0.25,
    good_calibration: float = 0.15,
    defect_calibration: float = 0.5,
) -> dict[Part, list[ClassImage]]:
    """Seeded split: the good class into train / calibration / test fractions; every other
    class into calibration / test halves (defective images never go into training).

    The same items and seed always give the same split, whatever order they come in.
    """
    classes = sorted({i.cls for i in items})
    if good_class not in classes:
        raise ValueError(f"good class {good_class!r} is not among the folders {classes}")
    if len(classes) < 2:
        raise ValueError("an anomaly set needs the good class and at least one defect class")
    rng = np.random.default_rng(seed)
    parts: dict[Part, list[ClassImage]] = {"train": [], "calibration": [], "test": []}
    for cls in classes:
        members = sorted((i for i in items if i.cls == cls), key=lambda i: i.path.name)
        order = [members[k] for k in rng.permutation(len(members))]
        if cls == good_class:
            n_test = max(1, round(len(order) * good_test))
            n_cal = max(1, round(len(order) * good_calibration))
            if len(order) < n_test + n_cal + 2:
                raise ValueError(f"too few good images ({len(order)}) to split")
            parts["test"] += order[:n_test]
            parts["calibration"] += order[n_test : n_test + n_cal]
            parts["train"] += order[n_test + n_cal :]
        else:
            n_cal = round(len(order) * defect_calibration)
            parts["calibration"] += order[:n_cal]
            parts["test"] += order[n_cal:]
    for key in parts:
        parts[key].sort(key=lambda i: (i.cls, i.path.name))
    return parts
