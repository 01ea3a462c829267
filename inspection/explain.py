"""Explanations of verdicts: class-activation heatmaps (:mod:`inspection.cam`) drawn over the
board and its enlarged regions.

- :func:`class_activation_maps`: a torch module's maps, crops in, (N, S, S) in [0, 1] out;
- :func:`render_board`: a picture of a board with its regions, types and heatmaps, and
  :func:`zoom_panel`: the explained crops enlarged with their heatmaps;
- :func:`save_explanation`: the picture of one board's failed or doubtful regions (what a worker
  writes beside a verdict);
- :class:`Explainer`: a model folder's CAM model loaded once, for a worker (OpenVINO by
  default: a worker serving with OpenVINO never loads torch).

torch and openvino are imported lazily: importing this module is cheap.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from inspection.cam import CamModel, OpenVINOCam, TorchCam, cam_from_features, normalise_maps
from inspection.crops import CONTEXT, crop_square
from schemas.events import Box, RegionVerdict

if TYPE_CHECKING:
    from inspection.backends.base import FeatureClassifier
    from inspection.model.nets import ClassifierNet
    from inspection.model.registry import Thresholds


def class_activation_maps(
    module: ClassifierNet,
    crops: np.ndarray,
    classes: Sequence[int] | np.ndarray | None = None,
    normalise: bool = True,
) -> np.ndarray:
    """CAM of each crop for its class (default: the predicted class), (N, S, S) float32,
    from a torch module. ``crops``: uint8 (N, 3, S, S), as the classifier takes them. With
    ``normalise`` each map is scaled to [0, 1] (:func:`inspection.cam.normalise_maps`);
    without it the raw class evidence is returned (its mean over the map, plus the bias, is
    the class's logit)."""
    maps = TorchCam(module).maps(crops, classes)
    return normalise_maps(maps) if normalise else maps


# The jet colours as a lookup table, computed once: cv2.applyColorMap rebuilds its table on
# every call (0.2 ms; ~3 ms per explained board of 7 regions).
_JET = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET)


def heat_colours(cam: np.ndarray) -> np.ndarray:
    """A [0, 1] map as a BGR uint8 image (jet colour map)."""
    grey = np.clip(cam * 255.0, 0, 255).astype(np.uint8)
    return cv2.LUT(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), _JET)


def _blend(base: np.ndarray, cam: np.ndarray, alpha: float) -> np.ndarray:
    """``base`` (BGR uint8) with the jet colours of ``cam`` (a [0, 1] map of the same size)
    laid over it, each pixel weighted ``alpha`` × its map value."""
    a = np.ascontiguousarray(alpha * cam, dtype=np.float32)
    return cv2.blendLinear(base, heat_colours(cam), 1.0 - a, a)


def _paste_heat(
    canvas: np.ndarray, box: Box, cam: np.ndarray, min_side: int, alpha: float = 0.5
) -> None:
    """Blend ``cam`` (a crop's map) into ``canvas`` over the square the crop was cut from."""
    if not cam.any():  # an unexplained region: nothing to lay over the board
        return
    h, w = canvas.shape[:2]
    cx, cy, half = crop_square(box, CONTEXT, min_side)
    x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if cx0 >= cx1 or cy0 >= cy1:
        return
    big = cv2.resize(cam, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    part = big[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    canvas[cy0:cy1, cx0:cx1] = _blend(canvas[cy0:cy1, cx0:cx1], part, alpha)


def render_board(
    image: np.ndarray,
    regions: Sequence[RegionVerdict],
    cams: np.ndarray | None = None,
    truths: Sequence[tuple[Box, str]] = (),
    title: str = "",
    min_side: int = 0,
) -> np.ndarray:
    """BGR picture of a board: each region's heatmap (when ``cams`` has one per region), its
    box (red: called a defect, orange: "none" but scored ≥ 0.1, grey: clean) with type and
    score, and ground-truth boxes in green when given. ``min_side``: the crops' smallest
    square (the model card's ``crop_min_side``), where each heatmap is laid."""
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    canvas = cv2.convertScaleAbs(canvas, alpha=0.6, beta=255 * 0.4)  # lighten
    if cams is not None:
        if len(cams) != len(regions):
            raise ValueError(f"{len(cams)} heatmaps for {len(regions)} regions")
        for r, cam in zip(regions, cams, strict=True):
            _paste_heat(canvas, r.box, cam, min_side)
    for box, kind in truths:
        cv2.rectangle(canvas, (box.x1, box.y1), (box.x2 - 1, box.y2 - 1), (0, 160, 0), 1)
        cv2.putText(
            canvas, kind, (box.x1, box.y2 + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 120, 0), 1
        )
    for r in regions:
        b = r.box
        if r.defect_type is not None:
            colour, text = (0, 0, 230), f"{r.defect_type.value} {r.score:.2f}"
        elif r.score >= 0.1:
            colour, text = (0, 140, 255), f"none? {r.score:.2f}"
        else:
            colour, text = (150, 150, 150), ""
        cv2.rectangle(canvas, (b.x1, b.y1), (b.x2 - 1, b.y2 - 1), colour, 2)
        if text:
            y = b.y1 - 4 if b.y1 > 14 else b.y2 + 12
            cv2.putText(canvas, text, (b.x1, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
    if title:
        cv2.putText(canvas, title, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    return canvas


def zoom_panel(
    crops: np.ndarray,
    cams: np.ndarray,
    labels: Sequence[str],
    height: int,
    tile: int = 128,
) -> np.ndarray:
    """Columns of enlarged crops (board channel) with their heatmaps, ``height`` pixels tall,
    each tile captioned with its label; a BGR uint8 image (0 columns wide when no crops)."""
    per_col = max(1, height // tile)
    cols = -(-len(crops) // per_col) if len(crops) else 0
    panel = np.full((height, cols * tile, 3), 255, np.uint8)
    for i, (crop, cam, label) in enumerate(zip(crops, cams, labels, strict=True)):
        board = cv2.resize(crop[0], (tile, tile), interpolation=cv2.INTER_NEAREST)
        big = cv2.resize(cam, (tile, tile), interpolation=cv2.INTER_LINEAR)
        img = _blend(cv2.cvtColor(board, cv2.COLOR_GRAY2BGR), big, 0.6)
        cv2.rectangle(img, (0, 0), (tile - 1, tile - 1), (80, 80, 80), 1)
        cv2.putText(img, label, (3, tile - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 200), 1)
        r, c = i % per_col, i // per_col
        panel[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = img
    return panel


def needs_explaining(region: RegionVerdict, thresholds: Thresholds | None) -> bool:
    """A region is explained when it failed or is doubtful: called a defect, or scored at or
    above the pass threshold (so it alone would send the board to review or fail)."""
    if region.defect_type is not None:
        return True
    return thresholds is not None and region.score >= thresholds.pass_below


def explained_indices(regions: Sequence[RegionVerdict], thresholds: Thresholds | None) -> list[int]:
    return [i for i, r in enumerate(regions) if needs_explaining(r, thresholds)]


# A picture for people, written on the worker's hot path: JPEG at quality 90 encodes a
# 640×900 explanation in ~2 ms, PNG (fastest settings) in 11–16 ms.
_WRITE_PARAMS = {
    ".jpg": [cv2.IMWRITE_JPEG_QUALITY, 90],
    ".jpeg": [cv2.IMWRITE_JPEG_QUALITY, 90],
    ".png": [cv2.IMWRITE_PNG_COMPRESSION, 1],
}


def save_explanation(
    path: Path,
    image: np.ndarray,
    crops: np.ndarray,
    regions: Sequence[RegionVerdict],
    cam: CamModel | None,
    thresholds: Thresholds | None = None,
    truths: Sequence[tuple[Box, str]] = (),
    title: str = "",
    maps: np.ndarray | None = None,
    min_side: int = 0,
) -> Path | None:
    """Write ``path`` (JPEG or PNG, by its suffix): the board with CAM heatmaps of its
    failed or doubtful regions.

    ``crops`` are the regions' classifier crops (one per region, same order). The raw maps
    come from ``maps`` (one per region, already computed from the served inference) or else
    from ``cam``; ``min_side`` is the crops' (the card's ``crop_min_side``). Crops of a
    model of views (3·V channels) are drawn, and explained, by their first view. Returns the
    path, or None (nothing written) when no region needs explaining.
    """
    crops = crops[:, :3]  # the first view's channels (crops_for's layout)
    if len(crops) != len(regions):
        raise ValueError(f"{len(crops)} crops for {len(regions)} regions")
    chosen = explained_indices(regions, thresholds)
    if not chosen and not truths:
        return None
    cams = np.zeros((len(regions), crops.shape[-1], crops.shape[-1]), np.float32)
    if chosen:
        if maps is None:
            if cam is None:
                raise ValueError("no CAM model and no precomputed maps to explain with")
            maps = np.zeros_like(cams)
            maps[chosen] = cam.maps(crops[chosen])
        cams[chosen] = normalise_maps(maps[chosen])
    picture = render_board(image, regions, cams, truths, title, min_side)
    if chosen:  # the explained regions enlarged beside the board, so the heatmaps are legible
        kinds = [regions[i].defect_type for i in chosen]
        labels = [
            f"{k.value if k is not None else 'none'} {regions[i].score:.2f}"
            for i, k in zip(chosen, kinds, strict=True)
        ]
        panel = zoom_panel(crops[chosen], cams[chosen], labels, picture.shape[0])
        picture = np.concatenate([picture, panel], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), picture, _WRITE_PARAMS.get(path.suffix.lower(), [])):
        raise OSError(f"cannot write {path}")
    return path


class Explainer:
    """A model's CAM heatmaps, loaded once, to explain verdicts as pictures (JPEG or PNG).

    ``Explainer(model_dir).save(path, image, crops, verdict.regions, thresholds)`` writes the
    heatmaps of a board's failed or doubtful regions (``crops`` are the classifier's crops of
    ``verdict.regions``, e.g. from :func:`inspection.crops.make_crops`). ``backend``
    "openvino" (the default) reads the FP32 IR and never imports torch; "torch" loads the
    weights into the torch module. With ``served`` (a classifier loaded with its feature
    output) no second model is loaded: :meth:`save` is given the feature maps and
    probabilities of the inference that decided, so the heatmap explains the served model
    (INT8 included) at the cost of a few array operations.
    """

    def __init__(
        self,
        model_dir: Path,
        backend: Literal["openvino", "torch"] = "openvino",
        device: str = "CPU",
        threads: int | None = None,
        served: FeatureClassifier | None = None,
    ) -> None:
        from inspection.model.registry import load_card
        from inspection.model.views import view_dirs

        self.card = load_card(model_dir)
        model_dir = view_dirs(model_dir, self.card)[0]  # a model of views: its first view
        self._cam_lock = threading.Lock()  # one inference request: one CAM forward at a time
        self.cam: CamModel | None = None
        self.weight: np.ndarray | None = None
        if served is not None:
            if served.cam_weight is None:
                raise ValueError(f"model {served.version} was loaded without its feature output")
            self.weight = served.cam_weight
        elif backend == "openvino":
            self.cam = OpenVINOCam(model_dir, device, threads)
        elif backend == "torch":
            from inspection.backends.torch_backend import load_module

            self.cam = TorchCam(load_module(model_dir, self.card))
        else:
            raise ValueError(f"backend must be 'openvino' or 'torch', got {backend!r}")

    @property
    def uses_served_features(self) -> bool:
        return self.weight is not None

    def save(
        self,
        path: Path,
        image: np.ndarray,
        crops: np.ndarray,
        regions: Sequence[RegionVerdict],
        thresholds: Thresholds | None = None,
        features: np.ndarray | None = None,
        probs: np.ndarray | None = None,
    ) -> Path | None:
        """Write the explanation picture (see :func:`save_explanation`). ``features`` and
        ``probs``: the served inference's feature maps and probabilities of ``crops``
        (required when the explainer was built on a served classifier)."""
        thresholds = thresholds or self.card.thresholds
        maps = None
        if self.weight is not None:
            if features is None or probs is None:
                raise ValueError("this explainer needs the served model's features and probs")
            chosen = explained_indices(regions, thresholds)
            size = crops.shape[-1]
            maps = np.zeros((len(regions), size, size), np.float32)
            if chosen:
                maps[chosen] = cam_from_features(
                    features[chosen], self.weight, probs[chosen].argmax(1), size
                )
        min_side = self.card.crop_min_side
        if self.cam is None:  # maps from the served inference: nothing shared to guard
            return save_explanation(
                path, image, crops, regions, None, thresholds, maps=maps, min_side=min_side
            )
        with self._cam_lock:
            return save_explanation(
                path, image, crops, regions, self.cam, thresholds, maps=maps, min_side=min_side
            )
