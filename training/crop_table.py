"""DeepPCB pairs → labelled region crops for training, cached once under ``.linecheck/cache``.

Per pair (board under test + its template) the rows are:

- ``CANDIDATE``: the ROI stage's candidate regions on the board, labelled by IoU > 0.33
  with a ground-truth box of the same type (:func:`inspection.crops.label_candidates`), else
  "none" — exactly what the classifier sees when serving;
- ``TRUTH``: the ground-truth boxes themselves, and ``JITTER``: copies with their edges moved
  a little (ROI boxes never fit an annotation exactly);
- ``GOOD``: candidates the ROI stage finds on a *good* board, the pair's template moved by a
  small misregistration and scanner noise (:func:`board_data.scan.simulate_good_board`): all
  "none", the false calls a real line produces;
- ``RANDOM``: random defect-free squares ("none").

Crops are made through the serving path (:func:`inspection.crops.make_crops` on the template
the ROI stage aligned), so training and serving see the same pixels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from board_data.deeppcb import DeepPcbSample
from board_data.scan import simulate_good_board
from inspection.crops import CROP_SIZE, label_candidates, make_crops
from inspection.roi import RoiParams, find_regions_aligned
from schemas.events import Box, GroundTruth
from training.splits import samples_of

CANDIDATE, TRUTH, JITTER, GOOD, RANDOM = 0, 1, 2, 3, 4
KINDS = ("candidate", "truth", "jitter", "good", "random")
CACHE_VERSION = "deeppcb-crops-v2"  # v2: good boards scanned by board_data.scan


def jitter_box(box: Box, rng: np.random.Generator, shape: tuple[int, int], amount: float) -> Box:
    """``box`` with each edge moved by up to ``amount`` of the box's size, inside the image."""
    h, w = shape
    bw, bh = box.x2 - box.x1, box.y2 - box.y1
    dx = rng.uniform(-amount, amount, size=2) * bw
    dy = rng.uniform(-amount, amount, size=2) * bh
    x1 = int(np.clip(round(box.x1 + dx[0]), 0, w - 2))
    y1 = int(np.clip(round(box.y1 + dy[0]), 0, h - 2))
    x2 = int(np.clip(round(box.x2 + dx[1]), x1 + 2, w))
    y2 = int(np.clip(round(box.y2 + dy[1]), y1 + 2, h))
    return Box(x1=x1, y1=y1, x2=x2, y2=y2)


def random_boxes(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    avoid: Sequence[Box],
    n: int,
    sizes: tuple[int, int] = (20, 80),
) -> list[Box]:
    """Up to ``n`` random squares (side in ``sizes``, px) overlapping none of ``avoid``:
    defect-free regions, the "none" examples of training."""
    h, w = shape[:2]
    out: list[Box] = []
    for _ in range(n * 20):
        if len(out) == n:
            break
        size = int(rng.integers(*sizes))
        x, y = int(rng.integers(0, w - size)), int(rng.integers(0, h - size))
        box = Box(x1=x, y1=y, x2=x + size, y2=y + size)
        if all(box.iou(a) == 0.0 for a in avoid):
            out.append(box)
    return out


@dataclass
class CropTable:
    """All rows of a data set: one crop each, with its pair, kind, label and box."""

    crops: np.ndarray  # (N, 3, S, S) uint8
    labels: np.ndarray  # (N,) int64, index into CLASSES
    kinds: np.ndarray  # (N,) int8, CANDIDATE..RANDOM
    pairs: np.ndarray  # (N,) int32, index into image_ids
    boxes: np.ndarray  # (N, 4) int32, x1 y1 x2 y2
    image_ids: np.ndarray  # (P,) str
    groups: np.ndarray  # (P,) str

    def select(self, mask: np.ndarray) -> CropTable:
        return CropTable(
            self.crops[mask],
            self.labels[mask],
            self.kinds[mask],
            self.pairs[mask],
            self.boxes[mask],
            self.image_ids,
            self.groups,
        )

    def in_groups(self, groups: Sequence[str]) -> np.ndarray:
        """Row mask: rows whose pair belongs to one of ``groups``."""
        return np.isin(self.groups[self.pairs], list(groups))

    def in_images(self, image_ids: Sequence[str]) -> np.ndarray:
        return np.isin(self.image_ids[self.pairs], list(image_ids))


def pair_rows(
    sample: DeepPcbSample,
    rng: np.random.Generator,
    size: int = CROP_SIZE,
    jitters: int = 2,
    random_negatives: int = 2,
    params: RoiParams = RoiParams(),
    min_side: int = 0,
) -> tuple[np.ndarray, list[int], list[int], list[Box]]:
    """(crops, labels, kinds, boxes) of one DeepPCB pair (see the module's docstring)."""
    image, template = sample.load()
    truths: list[GroundTruth] = list(sample.truths)
    candidates, aligned = find_regions_aligned(image, template, params)
    labels = label_candidates(candidates, truths)
    boxes: list[Box] = list(candidates)
    kinds = [CANDIDATE] * len(candidates)
    for t in truths:
        boxes.append(t.box)
        labels.append(t.defect_type.deeppcb_id)
        kinds.append(TRUTH)
        for _ in range(jitters):
            boxes.append(jitter_box(t.box, rng, image.shape, 0.15))
            labels.append(t.defect_type.deeppcb_id)
            kinds.append(JITTER)
    gt_boxes = [t.box for t in truths]
    rand = random_boxes(rng, image.shape, gt_boxes, random_negatives)
    boxes += rand
    labels += [0] * len(rand)
    kinds += [RANDOM] * len(rand)
    crops = [make_crops(image, aligned, boxes, size, aligned=True, min_side=min_side)]
    good = simulate_good_board(template, rng)
    good_boxes, good_aligned = find_regions_aligned(good, template, params)
    crops.append(make_crops(good, good_aligned, good_boxes, size, aligned=True, min_side=min_side))
    boxes += good_boxes
    labels += [0] * len(good_boxes)
    kinds += [GOOD] * len(good_boxes)
    return np.concatenate(crops), labels, kinds, boxes


def _roi_source_digest() -> str:
    """The ROI stage's code itself: crops cut by another version of it are not reused, even
    when its parameters did not change."""
    import inspection.roi
    import inspection.roi_align
    import inspection.roi_warp

    h = hashlib.sha256()
    for module in (inspection.roi, inspection.roi_align, inspection.roi_warp):
        h.update(Path(str(module.__file__)).read_bytes())
    return h.hexdigest()


def _cache_key(
    root: Path, samples: Sequence[DeepPcbSample], size: int, seed: int, min_side: int
) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [
                CACHE_VERSION,
                str(Path(root).resolve()),
                size,
                min_side,
                seed,
                repr(RoiParams()),
                _roi_source_digest(),
                cv2.__version__,  # its alignment and resizing cut the crops
            ]
        ).encode()
    )
    for s in samples:
        st = s.test_path.stat()
        h.update(f"{s.image_id}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def build_table(
    root: Path,
    samples: Sequence[DeepPcbSample] | None = None,
    size: int = CROP_SIZE,
    seed: int = 0,
    cache_dir: Path | None = Path(".linecheck/cache"),
    progress: Callable[[int, int], None] | None = None,
    min_side: int = 0,
) -> CropTable:
    """The crop table of ``samples`` (default: every pair under ``root``), from the cache
    when it holds the same pairs, crop size and smallest square, seed and ROI parameters."""
    samples = list(samples) if samples is not None else samples_of(root)
    if not samples:
        raise ValueError(f"no DeepPCB pairs under {root}")
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"deeppcb-{_cache_key(root, samples, size, seed, min_side)}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return CropTable(**{k: z[k] for k in z.files})
    rng = np.random.default_rng(seed)
    crops, labels, kinds, pairs, boxes = [], [], [], [], []
    for i, sample in enumerate(samples):
        c, lab, kin, box = pair_rows(sample, rng, size, min_side=min_side)
        crops.append(c)
        labels += lab
        kinds += kin
        pairs += [i] * len(lab)
        boxes += [(b.x1, b.y1, b.x2, b.y2) for b in box]
        if progress is not None:
            progress(i + 1, len(samples))
    table = CropTable(
        crops=np.concatenate(crops),
        labels=np.asarray(labels, np.int64),
        kinds=np.asarray(kinds, np.int8),
        pairs=np.asarray(pairs, np.int32),
        boxes=np.asarray(boxes, np.int32).reshape(-1, 4),
        image_ids=np.asarray([s.image_id for s in samples]),
        groups=np.asarray([s.group for s in samples]),
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **table.__dict__)
        tmp.replace(path)
    return table
