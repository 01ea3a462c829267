"""Anomaly mode at serving time: a PatchCore model of good images (Roth et al., 2022).

A model folder ``<models_dir>/<version>/`` (card mode ``anomaly``) holds

- ``features.xml`` / ``features.bin``: the patch-feature extractor as OpenVINO IR. Input
  ``image`` (1, 1, H, W) float32 grey levels 0..255, H and W multiples of
  :data:`SIZE_MULTIPLE` (dynamic); output ``patches`` (1, C, H/8, W/8): EfficientNet-Lite0
  features of two stages (stride 8 and 16, the deeper one upsampled), each averaged over a
  3×3 neighbourhood;
- one memory bank per *view* (``memory_bank.npy``, ``memory_bank_1.npy``, …): (M, C) float32,
  a greedy coreset of the good training images' patches seen that way;
- ``anomaly.json``: :class:`AnomalyParams` (the views, blur, pixel threshold);
- ``model.json``: the :class:`ModelCard` (mode "anomaly", thresholds on the image score).

A *view* is one way of showing the image to the extractor (:class:`AnomalyView`: a size, the
aspect ratio kept or not, grey levels standardised or not): small views judge a patch
against the whole part's texture and brightness, large ones see small holes and cracks.
Per view, a patch's raw score is its distance to the nearest patch of that view's bank; the
raw map is those scores upsampled to the image and blurred, normalised into [0, 1) by
:func:`normalise` (an ordinary good patch → 0, the 99th percentile of good images' maxima →
0.5; both fixed per view at training time). The anomaly map is the pixel-wise maximum over
the views, the image score its maximum, so the card's thresholds live in [0, 1].

No torch here: numpy, OpenCV and OpenVINO only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from inspection.model.registry import CARD_FILE, ModelCard, load_card
from schemas.events import Box

FEATURES_XML = "features.xml"
FEATURES_BIN = "features.bin"
BANK_FILE = "memory_bank.npy"
PARAMS_FILE = "anomaly.json"
IR_INPUT = "image"
IR_OUTPUT = "patches"
SIZE_MULTIPLE = 16  # the extractor's deepest stride: inputs are resized to multiples of it
FEATURE_STRIDE = 8
MIN_SIDE = 32
_KNN_CHUNK = 2048


class AnomalyView(BaseModel):
    """One way of feeding images to the extractor, with its memory bank and normalisation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int | None = Field(
        default=None, gt=0, description="square side; with keep_aspect, the side of the square "
        "of the same area; None: the image scaled by `scale`"
    )  # fmt: skip
    scale: float = Field(default=1.0, gt=0.0, description="resize factor when size is None")
    keep_aspect: bool = Field(default=False, description="keep the image's aspect ratio")
    standardise: bool = Field(
        default=False, description="grey levels to the image's mean 128 and sd 40 first"
    )
    bank: str = Field(default=BANK_FILE, description="this view's memory-bank file")
    floor: float = Field(
        default=0.0, ge=0.0, description="raw level of an ordinary good patch: normalises to 0"
    )
    image_ref: float = Field(default=1.0, gt=0.0, description="raw score that normalises to 0.5")

    @classmethod
    def parse(cls, spec: str) -> AnomalyView:
        """``96`` → squeezed to 96², ``96a`` → aspect kept at 96² of area, ``96as`` → and grey
        levels standardised (``linecheck train --views``)."""
        text = spec.strip()
        size = text.rstrip("as")
        flags = text[len(size) :]
        if not size.isdigit() or int(size) < 2 * SIZE_MULTIPLE or len(set(flags)) != len(flags):
            raise ValueError(
                f"view {spec!r} is not SIZE[a][s] with SIZE >= {2 * SIZE_MULTIPLE} "
                "(e.g. 96as, 128a, 256)"
            )
        return cls(size=int(size), keep_aspect="a" in flags, standardise="s" in flags)


class AnomalyParams(BaseModel):
    """The views, the map's blur and the level above which pixels form regions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    views: tuple[AnomalyView, ...] = Field(min_length=1)
    blur_sigma: float = Field(ge=0.0, description="Gaussian blur of the map, original pixels")
    pixel_threshold: float = Field(
        ge=0.0, le=1.0, description="normalised map level above which pixels form regions"
    )
    min_region_px: int = Field(default=16, ge=1)
    layers: tuple[int, ...] = Field(description="Lite0 block indices the features come from")
    feature_dim: int = Field(gt=0)

    @model_validator(mode="before")
    @classmethod
    def _one_view_models(cls, data: object) -> object:
        """Models trained before views existed kept one view's fields at the top level."""
        if isinstance(data, dict) and "views" not in data:
            data = dict(data)
            view = {k: data.pop(k) for k in ("scale", "floor", "image_ref") if k in data}
            if data.get("input_size") is not None:
                view["size"] = data["input_size"]
            data.pop("input_size", None)
            data["views"] = [view]
        return data


@dataclass(frozen=True)
class AnomalyResult:
    score: float  # normalised image score in [0, 1], compared with the card's thresholds
    amap: np.ndarray  # float32 (H, W), same size as the input image, values in [0, 1]
    regions: list[Box]  # connected areas of amap above the model's pixel threshold
    region_scores: list[float]  # in [0, 1], one per region


def load_params(model_dir: Path) -> AnomalyParams:
    path = Path(model_dir) / PARAMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {PARAMS_FILE} in {model_dir}: not an anomaly model")
    return AnomalyParams.model_validate(json.loads(path.read_text(encoding="utf-8")))


def check_image(image: np.ndarray) -> np.ndarray:
    """The image as 2-D uint8, or a ``ValueError`` naming what is wrong with it."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D grayscale, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if min(image.shape) < MIN_SIDE:
        raise ValueError(
            f"image {image.shape[1]}×{image.shape[0]} px is too small: the anomaly model "
            f"needs at least {MIN_SIDE} px a side"
        )
    return image


def model_input(image: np.ndarray, view: AnomalyView) -> np.ndarray:
    """(1, 1, H', W') float32: the image as ``view`` shows it, sides multiples of 16 px."""
    import cv2

    h, w = image.shape
    m = SIZE_MULTIPLE
    if view.size is None:
        th, tw = h * view.scale, w * view.scale
    elif view.keep_aspect:
        f = view.size / float(np.sqrt(h * w))
        th, tw = h * f, w * f
    else:
        th = tw = view.size
    th, tw = max(2 * m, round(th / m) * m), max(2 * m, round(tw / m) * m)
    interp = cv2.INTER_AREA if th * tw < h * w else cv2.INTER_LINEAR
    resized = cv2.resize(image, (tw, th), interpolation=interp).astype(np.float32)
    if view.standardise:
        resized = np.clip((resized - resized.mean()) / (resized.std() + 1e-3) * 40 + 128, 0, 255)
    return resized[None, None]


def nearest_distances(queries: np.ndarray, bank: np.ndarray, bank_sq: np.ndarray) -> np.ndarray:
    """Euclidean distance of each query row (P, C) to its nearest bank row (M, C)."""
    out = np.empty(len(queries), np.float32)
    for start in range(0, len(queries), _KNN_CHUNK):
        q = queries[start : start + _KNN_CHUNK]
        d2 = (q * q).sum(1, keepdims=True) - 2.0 * (q @ bank.T) + bank_sq[None]
        out[start : start + len(q)] = np.sqrt(np.maximum(d2.min(1), 0.0))
    return out


def raw_map(
    patches: np.ndarray, bank: np.ndarray, bank_sq: np.ndarray, shape: tuple[int, int], sigma: float
) -> np.ndarray:
    """Raw anomaly map (H, W) float32 from patch features (C, h, w): nearest-neighbour
    distances upsampled bilinearly to ``shape`` and blurred."""
    import cv2

    c, h, w = patches.shape
    dist = nearest_distances(patches.reshape(c, -1).T.astype(np.float32), bank, bank_sq)
    amap = cv2.resize(dist.reshape(h, w), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    if sigma > 0:
        amap = cv2.GaussianBlur(amap, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return np.asarray(amap, np.float32)


def normalise(raw: np.ndarray | float, ref: float, floor: float = 0.0) -> np.ndarray:
    """Monotone map of raw distances into [0, 1): ``z / (1 + z)`` with
    ``z = max(raw - floor, 0) / (ref - floor)``: ``floor`` and below → 0, ``ref`` → 0.5."""
    if not 0.0 <= floor < ref:
        raise ValueError(f"normalisation needs 0 <= floor < ref, got {floor}, {ref}")
    z = np.maximum(np.asarray(raw, np.float64) - floor, 0.0) / (ref - floor)
    return np.asarray(z / (1.0 + z), np.float32)


def find_regions(
    amap: np.ndarray, threshold: float, min_px: int = 16
) -> tuple[list[Box], list[float]]:
    """Boxes of the connected areas of ``amap >= threshold`` (at least ``min_px`` pixels),
    strongest first, with each area's peak value."""
    import cv2

    mask = (amap >= threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    found: list[tuple[float, Box]] = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < min_px:
            continue
        peak = float(amap[labels == k].max())
        found.append((peak, Box(x1=x, y1=y, x2=x + w, y2=y + h)))
    found.sort(key=lambda t: -t[0])
    return [b for _, b in found], [min(1.0, max(0.0, p)) for p, _ in found]


def overlay(image: np.ndarray, amap: np.ndarray) -> np.ndarray:
    """BGR uint8: the anomaly map as a JET heatmap blended over the (grayscale or BGR) image;
    pixels where the map is low keep the image."""
    import cv2

    if image.ndim == 2:
        base = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 3:
        base = image
    else:
        raise ValueError(f"image must be grayscale or BGR, got shape {image.shape}")
    if amap.shape != image.shape[:2]:
        raise ValueError(f"map {amap.shape} and image {image.shape[:2]} differ in size")
    from inspection.explain import heat_colours

    a = np.clip(amap, 0.0, 1.0).astype(np.float32)
    heat = heat_colours(a)
    alpha = (0.25 + 0.5 * a)[:, :, None]
    out = base.astype(np.float32) * (1.0 - alpha) + heat.astype(np.float32) * alpha
    return np.clip(out, 0, 255).astype(np.uint8)


class PatchScorer:
    """The extractor IR and one memory bank per view: raw anomaly maps, no card (training
    uses it on a half-built model). One inference at a time; safe to share between threads."""

    def __init__(
        self,
        xml: Path,
        banks: Sequence[np.ndarray],
        params: AnomalyParams,
        device: str = "CPU",
        threads: int | None = None,
    ) -> None:
        import threading

        import openvino as ov

        if len(banks) != len(params.views):
            raise ValueError(f"{len(banks)} memory banks for {len(params.views)} views")
        for bank in banks:
            if bank.ndim != 2 or bank.shape[1] != params.feature_dim:
                raise ValueError(f"memory bank {bank.shape} does not fit {params.feature_dim}-d")
        self.params = params
        self.banks = [np.ascontiguousarray(b, np.float32) for b in banks]
        self.banks_sq = [(b * b).sum(1) for b in self.banks]
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if device.upper().startswith("CPU"):
            config["INFERENCE_PRECISION_HINT"] = "f32"
            if threads is not None:
                if threads < 1:
                    raise ValueError(f"threads must be >= 1, got {threads}")
                config["INFERENCE_NUM_THREADS"] = threads
        if not Path(xml).is_file():
            raise FileNotFoundError(f"no OpenVINO model {xml}")
        self._compiled = ov.Core().compile_model(Path(xml), device, config)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    def patches(self, image: np.ndarray, view: AnomalyView) -> np.ndarray:
        """Patch features (C, h, w) of a 2-D uint8 image seen through ``view``."""
        x = model_input(check_image(image), view)
        with self._lock:
            self._request.infer({0: x})
            return np.array(self._request.get_output_tensor(0).data[0], np.float32)

    def raw(self, image: np.ndarray, k: int) -> np.ndarray:
        """View ``k``'s raw (unnormalised) anomaly map, the image's size."""
        image = check_image(image)
        view = self.params.views[k]
        return raw_map(
            self.patches(image, view), self.banks[k], self.banks_sq[k], image.shape,
            self.params.blur_sigma,
        )  # fmt: skip

    def amap(self, image: np.ndarray) -> np.ndarray:
        """The normalised anomaly map: the pixel-wise maximum of the views' maps."""
        out: np.ndarray | None = None
        for k, view in enumerate(self.params.views):
            m = normalise(self.raw(image, k), view.image_ref, view.floor)
            out = m if out is None else np.maximum(out, m)
        assert out is not None  # params have at least one view
        return out


class AnomalyDetector:
    """A registered anomaly model served with OpenVINO: one image in, score and map out.

    ``score`` is safe to call from several threads (one inference at a time)."""

    def __init__(self, model_dir: Path, device: str = "CPU", threads: int | None = None) -> None:
        model_dir = Path(model_dir)
        if not (model_dir / CARD_FILE).is_file():
            raise FileNotFoundError(f"no model card {CARD_FILE} in {model_dir}")
        self.card: ModelCard = load_card(model_dir)
        if self.card.mode != "anomaly":
            raise ValueError(f"model {self.card.version} is a {self.card.mode!r} model")
        self.thresholds = self.card.require_thresholds()
        self.params = load_params(model_dir)
        banks = []
        for view in self.params.views:
            if not (model_dir / view.bank).is_file():
                raise FileNotFoundError(f"no memory bank {view.bank} in {model_dir}")
            banks.append(np.load(model_dir / view.bank))
        self.scorer = PatchScorer(model_dir / FEATURES_XML, banks, self.params, device, threads)

    def score(self, image: np.ndarray) -> AnomalyResult:
        amap = self.scorer.amap(image)
        regions, region_scores = find_regions(
            amap, self.params.pixel_threshold, self.params.min_region_px
        )
        return AnomalyResult(float(amap.max()), amap, regions, region_scores)
