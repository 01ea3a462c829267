"""Folders of class-labelled images (NEU-DET's layout: ``<class>_<number>.jpg``, in the
folder or in its ``images/`` subfolder), for the multi-class classifier."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

_CLASS_RE = re.compile(r"^(?P<cls>.+?)_\d+$")


def labelled_images(root: Path) -> list[tuple[Path, str]]:
    """(path, class) of every image under ``root`` (or ``root/images``) whose name is
    ``<class>_<number>.<ext>``, sorted by path."""
    root = Path(root)
    folder = root / "images" if (root / "images").is_dir() else root
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        m = _CLASS_RE.match(p.stem)
        if m:
            out.append((p, m["cls"]))
    return out


def load_labelled_images(items: Sequence[tuple[Path, str]], size: int) -> np.ndarray:
    """(N, 3, size, size) uint8: each image in grayscale, resized, in all three channels."""
    import cv2

    out = np.zeros((len(items), 3, size, size), np.uint8)
    for i, (path, _) in enumerate(items):
        g = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if g is None:
            raise ValueError(f"cannot read image {path}")
        out[i] = cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA)[None]
    return out
