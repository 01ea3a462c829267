"""Reader and writer for DeepPCB's folder layout and file formats.

Layout (from the data set's root):
    groupG/G/NNNNNNNN_test.jpg    board under test
    groupG/G/NNNNNNNN_temp.jpg    its aligned defect-free template
    groupG/G_not/NNNNNNNN.txt     annotations, one defect a line: x1 y1 x2 y2 type
Split files (trainval.txt, test.txt) list `groupG/G/NNNNNNNN.jpg groupG/G_not/NNNNNNNN.txt`.
Detection files for DeepPCB's evaluation script hold `x1,y1,x2,y2,confidence,type` lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.events import Box, DefectType, GroundTruth


@dataclass(frozen=True)
class DeepPcbSample:
    image_id: str
    group: str
    test_path: Path
    template_path: Path
    truths: tuple[GroundTruth, ...]

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(board, template) as grayscale uint8."""
        return read_gray(self.test_path), read_gray(self.template_path)


def read_gray(path: Path) -> np.ndarray:
    import cv2  # lazily: listing and parsing a data set needs no OpenCV

    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return image


_SEP = re.compile(r"[,\s]+")


def read_annotations(path: Path | str) -> tuple[GroundTruth, ...]:
    """Parse `x1 y1 x2 y2 type` lines (spaces or commas); blank lines are skipped."""
    path = Path(path)
    truths = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = _SEP.split(line.strip())
        try:
            if len(fields) != 5:
                raise ValueError(f"expected 5 fields (x1 y1 x2 y2 type), got {len(fields)}")
            x1, y1, x2, y2, kind = (int(f) for f in fields)
            truths.append(
                GroundTruth(Box(x1=x1, y1=y1, x2=x2, y2=y2), DefectType.from_deeppcb_id(kind))
            )
        except ValueError as exc:  # pydantic's ValidationError is a ValueError too
            raise ValueError(f"{path}:{number}: malformed annotation {line!r}: {exc}") from None
    return tuple(truths)


def _sample(root: Path, image_rel: str, annotation_rel: str) -> DeepPcbSample:
    """A sample from the split file's `groupG/G/NNNNNNNN.jpg` and annotation paths."""
    image_path = root / image_rel
    stem = image_path.stem
    return DeepPcbSample(
        image_id=stem,
        group=image_path.parent.parent.name,
        test_path=image_path.with_name(f"{stem}_test.jpg"),
        template_path=image_path.with_name(f"{stem}_temp.jpg"),
        truths=read_annotations(root / annotation_rel),
    )


def read_split(root: Path | str, split_file: Path | str) -> list[DeepPcbSample]:
    """The samples a split file (e.g. trainval.txt) lists, relative to `root`."""
    root, split_file = Path(root), Path(split_file)
    samples = []
    for number, line in enumerate(split_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[0].endswith(".jpg") or not fields[1].endswith(".txt"):
            raise ValueError(
                f"{split_file}:{number}: expected 'groupG/G/NNNNNNNN.jpg"
                f" groupG/G_not/NNNNNNNN.txt', got {line!r}"
            )
        samples.append(_sample(root, *fields))
    return samples


def iter_samples(root: Path | str) -> Iterator[DeepPcbSample]:
    """Every pair under `root` that has a test image, a template and annotations, sorted."""
    root = Path(root)
    for test_path in sorted(root.glob("group*/*/*_test.jpg")):
        stem = test_path.name.removesuffix("_test.jpg")
        folder = test_path.parent
        annotation = folder.with_name(f"{folder.name}_not") / f"{stem}.txt"
        template = test_path.with_name(f"{stem}_temp.jpg")
        if not (annotation.exists() and template.exists()):
            continue
        rel_image = f"{folder.parent.name}/{folder.name}/{stem}.jpg"
        rel_annotation = f"{folder.parent.name}/{annotation.parent.name}/{annotation.name}"
        yield _sample(root, rel_image, rel_annotation)


def write_annotations(path: Path | str, truths: Iterable[GroundTruth]) -> None:
    """Write truths in DeepPCB's annotation format (space separated, type ids)."""
    lines = [
        f"{t.box.x1} {t.box.y1} {t.box.x2} {t.box.y2} {t.defect_type.deeppcb_id}\n" for t in truths
    ]
    Path(path).write_text("".join(lines))


def write_detections(path: Path | str, detections: Sequence[tuple[Box, float, DefectType]]) -> None:
    """Write `x1,y1,x2,y2,confidence,type` lines, as DeepPCB's evaluation script reads them."""
    lines = []
    for box, confidence, kind in detections:
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {confidence}")
        lines.append(f"{box.x1},{box.y1},{box.x2},{box.y2},{confidence:.6f},{kind.value}\n")
    Path(path).write_text("".join(lines))


def read_detections(path: Path | str) -> list[tuple[Box, float, DefectType]]:
    """Read back a detection file written by `write_detections`."""
    path = Path(path)
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().split(",")
        try:
            if len(fields) != 6:
                raise ValueError(f"expected 6 comma-separated fields, got {len(fields)}")
            x1, y1, x2, y2 = (int(f) for f in fields[:4])
            out.append((Box(x1=x1, y1=y1, x2=x2, y2=y2), float(fields[4]), DefectType(fields[5])))
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: malformed detection {line!r}: {exc}") from None
    return out
