"""Template-free ROI: the learned locator (a locator-mode model folder's ``locator.xml``)
served on OpenVINO.

The network (:mod:`inspection.model.locator_net`) maps a grayscale board to maps at 1/4
resolution. Its heads:

- ``region``: one defect-region map; regions are its connected components above a
  threshold, boxed, grown back by what training shrank the targets by;
- ``centre``: a defect-centre heat map and, per cell, the box of a defect centred there
  (offset and log size); each local maximum of the heat above a threshold is one box, so
  touching defects stay apart instead of merging into one region;
- ``typed``: the same with one centre map per defect type (a trial option: the locator
  alone as a detector).

Either way boxes get 5 % margins and are clipped to the board. ``locator.json`` beside the
IR holds those parameters. After the classifier, :meth:`Locator.veto_repeats` calls
"none" the regions that repeat the design elsewhere on the board
(:mod:`inspection.self_reference`, ``repeat_px``). No torch here: serving needs OpenVINO only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from inspection.crops import CropGeometry, make_crops
from inspection.self_reference import copy_crops, veto_repeats
from schemas.events import Box

LOCATOR_XML = "locator.xml"
LOCATOR_PARAMS = "locator.json"
OUTPUT_STRIDE = 4  # the network's map is 1/4 of its input
PAD_MULTIPLE = 16  # the network's deepest stride: inputs are padded up to a multiple
LocatorHead = Literal["region", "centre", "typed"]
CropReference = Literal["median", "copy"]
# a head's probability maps come first: one (region, centre) or one per defect type (typed);
# a centre head's four box maps follow (dx, dy, log w, log h)
HEAT_MAPS: dict[str, int] = {"region": 1, "centre": 1, "typed": 6}
HEAD_OUTPUTS: dict[str, int] = {h: n + (h != "region") * 4 for h, n in HEAT_MAPS.items()}


def head_of(outputs: int) -> LocatorHead:
    """The head a network with ``outputs`` output maps has."""
    for head, n in HEAD_OUTPUTS.items():
        if n == outputs:
            return head  # type: ignore[return-value]
    raise ValueError(f"no locator head has {outputs} output maps")


@dataclass(frozen=True)
class LocatorParams:
    """How a locator's map becomes boxes (``locator.json``)."""

    input_scale: float = 1.0
    """the board is resized by this before the network (1.0: native resolution)"""
    head: LocatorHead = "centre"
    """what the network outputs: defect centres with their boxes, or a region map (the
    first locators'; a ``locator.json`` without a head is one of those)"""
    threshold: float = 0.175
    """probability above which a centre is kept (a cell belongs to a region); the centre
    head's default was chosen on DeepPCB groups 13000 + 92000 (BENCHMARKS.md)"""
    target_shrink: float = 0.2
    """training targets were the boxes shrunk by this share of their size on each side (so
    that neighbouring defects stay apart in the map) ..."""
    margin: float = 0.05
    """... regions are grown back by that, then get this share of their size on each side"""
    min_side_px: int = 8
    """a region's box is at least this wide and high (before the margin)"""
    max_candidates: int = 32
    """most confident regions kept (by peak probability)"""
    nms_iou: float = 0.5
    """``centre`` head: of two boxes overlapping more than this, the weaker is dropped"""
    repeat_px: int = 0
    """a region called a defect whose unexplained area is under this many pixels repeats
    the design elsewhere on the board and is called "none"
    (:mod:`inspection.self_reference`); 0: off (a ``locator.json`` without it). Training
    sets it from the training defects (``training.locator_model.repeat_threshold``)"""
    crop_reference: CropReference = "median"
    """the second channel of the classifier's template-free crops: "median", the board
    median-filtered (:func:`inspection.crops.make_crops`), or "copy", each crop square's
    best copy elsewhere on the board (:func:`inspection.self_reference.copy_crops`); a
    ``locator.json`` without it: the median"""

    def save(self, model_dir: Path) -> None:
        (Path(model_dir) / LOCATOR_PARAMS).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, model_dir: Path) -> LocatorParams:
        path = Path(model_dir) / LOCATOR_PARAMS
        if not path.is_file():
            raise FileNotFoundError(f"no {LOCATOR_PARAMS} in {model_dir}: not a locator model")
        raw: dict[str, Any] = json.loads(path.read_text())
        raw.setdefault("head", "region")  # written before the centre head existed
        params = cls(**raw)
        if params.head not in HEAD_OUTPUTS:
            raise ValueError(f"{path}: unknown locator head {params.head!r}")
        if params.crop_reference not in ("median", "copy"):
            raise ValueError(f"{path}: crop_reference must be median or copy, "
                             f"got {params.crop_reference!r}")  # fmt: skip
        return params


def input_planes(image: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """(H', W', 3) uint8: the board resized by ``scale``, and its absolute differences from
    its 5×5 and 9×9 median filters. A median erases specks, thin spurs, pin-holes and bites
    up to about half its size, so the differences point the network at small defects
    directly (the template-free reference of :func:`inspection.crops.make_crops`); it
    still has to learn which of them are a design's own corners and line ends."""
    if image.ndim != 2 or image.size == 0 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be a non-empty 2-D uint8 array, got {image.shape} {image.dtype}"
        )
    if scale != 1.0:
        h, w = image.shape
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    diffs = [cv2.absdiff(image, cv2.medianBlur(image, k)) for k in (5, 9)]
    return np.stack([image, *diffs], axis=-1)


def planes_to_input(planes: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 planes → (N, 3, H, W) float32 network input: the board scaled to
    [-1, 1], the differences to [0, 2]."""
    x = planes.astype(np.float32).transpose(0, 3, 1, 2) / 127.5
    x[:, 0] -= 1.0
    return x


def normalise(image: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, tuple[int, int]]:
    """(1, 3, H', W') float32 network input of a board (:func:`input_planes`), edge-padded
    to multiples of ``PAD_MULTIPLE``; and the resized (h, w) before padding."""
    planes = input_planes(image, scale)
    h, w = planes.shape[:2]
    ph, pw = -h % PAD_MULTIPLE, -w % PAD_MULTIPLE
    # replicate: a board's edge continues its copper; a constant frame would look like a defect
    if ph or pw:
        planes = cv2.copyMakeBorder(planes, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
    return planes_to_input(planes[None]), (h, w)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))).astype(np.float32)


def output_maps(out: np.ndarray, resized: tuple[int, int]) -> np.ndarray:
    """The network's (1, C, H/4, W/4) output for a padded board as (C, h, w) maps of the
    ``resized`` board (padding cut off), its head's probability maps through a sigmoid."""
    h, w = resized
    maps = np.array(out[0, :, : -(-h // OUTPUT_STRIDE), : -(-w // OUTPUT_STRIDE)])
    k = HEAT_MAPS[head_of(len(maps))]
    maps[:k] = sigmoid(maps[:k])
    return maps


def _clipped(
    x1: float, y1: float, x2: float, y2: float, margin: float, shape: tuple[int, int]
) -> Box:
    """The box grown by ``margin`` of its size on each side, in whole pixels, on the board."""
    height, width = shape
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    bx1 = int(np.clip(np.floor(x1 - dx), 0, width - 1))
    by1 = int(np.clip(np.floor(y1 - dy), 0, height - 1))
    bx2 = int(np.clip(np.ceil(x2 + dx), bx1 + 1, width))
    by2 = int(np.clip(np.ceil(y2 + dy), by1 + 1, height))
    return Box(x1=bx1, y1=by1, x2=bx2, y2=by2)


def regions_from_map(
    prob: np.ndarray, image_shape: tuple[int, int], params: LocatorParams
) -> list[Box]:
    """Boxes in board pixels from a (h, w) probability map at 1/(4·scale) of the board:
    connected components above the threshold, grown back by the target shrink, with
    ``margin`` of their size on each side, clipped to the board; most confident first."""
    mask = (prob >= params.threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    cell = OUTPUT_STRIDE / params.input_scale
    # a box shrunk by s per side keeps 1 − 2s of its size: grow each side by s / (1 − 2s)
    grow = params.target_shrink / max(1e-6, 1.0 - 2.0 * params.target_shrink)
    found: list[tuple[float, Box]] = []
    for k in range(1, n):
        cx, cy, cw, ch = (int(v) for v in stats[k, :4])
        x1, y1, x2, y2 = cx * cell, cy * cell, (cx + cw) * cell, (cy + ch) * cell
        bw = max((x2 - x1) * (1 + 2 * grow), params.min_side_px)
        bh = max((y2 - y1) * (1 + 2 * grow), params.min_side_px)
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        box = _clipped(
            mx - bw / 2, my - bh / 2, mx + bw / 2, my + bh / 2, params.margin, image_shape
        )
        peak = float(
            prob[cy : cy + ch, cx : cx + cw][labels[cy : cy + ch, cx : cx + cw] == k].max()
        )
        found.append((peak, box))
    found.sort(key=lambda f: -f[0])
    return [b for _, b in found[: params.max_candidates]]


def centre_detections(
    maps: np.ndarray, image_shape: tuple[int, int], params: LocatorParams
) -> list[tuple[Box, float, int]]:
    """(box in board pixels, probability, type index) from a centre head's maps (its
    probability maps, then the cell's box: centre offset x, y in cells, log width, log
    height in cells): each 3×3 local maximum of the probability (the largest over the
    types) at or above the threshold is one box, of the type whose map peaks there (0 for
    the untyped ``centre`` head); boxes overlapping a stronger one by more than ``nms_iou``
    are dropped; then margins, clipping and ``max_candidates``, most confident first."""
    k = HEAT_MAPS[params.head]
    heat = np.ascontiguousarray(maps[:k].max(0), np.float32)
    peaks = (heat >= cv2.dilate(heat, np.ones((3, 3), np.uint8))) & (heat >= params.threshold)
    ys, xs = np.nonzero(peaks)
    if len(ys) == 0:
        return []
    scores = heat[ys, xs]
    kinds = maps[:k, ys, xs].argmax(0)
    cell = OUTPUT_STRIDE / params.input_scale
    cx = (xs + 0.5 + maps[k, ys, xs]) * cell
    cy = (ys + 0.5 + maps[k + 1, ys, xs]) * cell
    bw = np.maximum(np.exp(np.clip(maps[k + 2, ys, xs], -4.0, 6.0)) * cell, params.min_side_px)
    bh = np.maximum(np.exp(np.clip(maps[k + 3, ys, xs], -4.0, 6.0)) * cell, params.min_side_px)
    rects = [[float(x - w / 2), float(y - h / 2), float(w), float(h)]
             for x, y, w, h in zip(cx, cy, bw, bh, strict=True)]  # fmt: skip
    keep = cv2.dnn.NMSBoxes(rects, scores.tolist(), params.threshold, params.nms_iou)
    order = sorted(np.asarray(keep, int).ravel(), key=lambda k: -scores[k])
    return [
        (_clipped(x, y, x + w, y + h, params.margin, image_shape), float(scores[n]), int(kinds[n]))
        for n, (x, y, w, h) in ((n, rects[n]) for n in order[: params.max_candidates])
    ]


def boxes_from_centres(
    maps: np.ndarray, image_shape: tuple[int, int], params: LocatorParams
) -> list[Box]:
    """The boxes of :func:`centre_detections`, most confident first."""
    return [box for box, _, _ in centre_detections(maps, image_shape, params)]


def regions_from_outputs(
    maps: np.ndarray, image_shape: tuple[int, int], params: LocatorParams
) -> list[Box]:
    """Boxes from the network's (C, h, w) maps (channel 0 a probability) by its head."""
    if params.head != "region":
        return boxes_from_centres(maps, image_shape, params)
    return regions_from_map(maps[0], image_shape, params)


REGION_PARAMS = LocatorParams(head="region", threshold=0.5, target_shrink=0.2)
"""the region head's defaults (measured in BENCHMARKS.md, "Template-free inspection")"""


class Locator:
    """A locator-mode model folder's region network on OpenVINO: ``find_regions(board)``."""

    def __init__(self, model_dir: Path, device: str = "CPU", threads: int | None = None) -> None:
        import openvino as ov

        model_dir = Path(model_dir)
        xml = model_dir / LOCATOR_XML
        if not xml.is_file():
            raise FileNotFoundError(f"no {LOCATOR_XML} in {model_dir}: not a locator model")
        self.params = LocatorParams.load(model_dir)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if device.upper().startswith("CPU"):
            config["INFERENCE_PRECISION_HINT"] = "f32"  # match the torch model, no bf16
            if threads is not None:
                if threads < 1:
                    raise ValueError(f"threads must be >= 1, got {threads}")
                config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        self._compiled = core.compile_model(core.read_model(xml), device, config)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    def maps(self, image: np.ndarray) -> np.ndarray:
        """(C, h, w) float32 maps at 1/(4·scale) of the board, the head's probability maps
        first (the region or the centre map, or one per type), the others as it outputs
        them."""
        x, resized = normalise(image, self.params.input_scale)
        with self._lock:
            self._request.infer({0: x})
            return output_maps(self._request.output_tensors[0].data, resized)

    def region_map(self, image: np.ndarray) -> np.ndarray:
        """(h, w) float32 region (or centre) probabilities at 1/(4·scale) of the board."""
        return self.maps(image)[: HEAT_MAPS[self.params.head]].max(0)

    def find_regions(self, image: np.ndarray, params: LocatorParams | None = None) -> list[Box]:
        """Candidate defect boxes on a 2-D uint8 grayscale board of any size (no template);
        ``params`` overrides the model's own (e.g. a lower threshold)."""
        return regions_from_outputs(self.maps(image), image.shape[:2], params or self.params)

    def veto_repeats(
        self, image: np.ndarray, boxes: Sequence[Box], probs: np.ndarray
    ) -> np.ndarray:
        """The classifier's ``probs`` of ``boxes`` on ``image`` with the regions that repeat
        the design elsewhere on the board called "none" (``params.repeat_px``)."""
        return veto_repeats(image, boxes, probs, self.params.repeat_px)

    @property
    def crop_reference(self) -> CropReference:
        """What the classifier's crops are cut against (``params.crop_reference``)."""
        return self.params.crop_reference

    def crops(self, model: CropGeometry, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """The classifier's template-free crops of ``boxes`` as ``model`` takes them (its
        input size and each view's smallest square), with ``params.crop_reference``."""
        views = [self.cut(image, boxes, model.input_size, side) for side in model.crop_sides]
        return views[0] if len(views) == 1 else np.concatenate(views, axis=1)

    def cut(
        self, image: np.ndarray, boxes: Sequence[Box], size: int, min_side: int = 0
    ) -> np.ndarray:
        """(N, 3, size, size) template-free crops of ``boxes`` (``params.crop_reference``)."""
        if self.params.crop_reference == "copy":
            return copy_crops(image, boxes, size, min_side)
        return make_crops(image, None, boxes, size, min_side=min_side)
