"""``linecheck train --data DIR --task anomaly --good-class NAME``: a PatchCore model of the
good class of a class-folder set (:mod:`inspection.anomaly` serves it).

1. Seeded split (:func:`board_data.class_folders.split_anomaly_set`): good images into
   training / calibration / test; defective images into calibration / test halves.
2. The patch-feature extractor (EfficientNet-Lite0 with its ImageNet weights, two stages,
   3×3 neighbourhood averaging) is exported as OpenVINO IR with dynamic height and width;
   every later step runs through that IR, exactly as serving does.
3. Per view (:data:`DEFAULT_VIEWS`): patches of the good training images → greedy k-center
   coreset (torch) → that view's memory bank.
4. Calibration images scored: per view the normalisation (good images' median patch level
   → 0, the 99th percentile of their raw image scores → 0.5), then on the views' combined
   map the pixel threshold (best F1 on the defect masks) and the card's thresholds for the
   FNR target (:func:`training.calibration.calibrate_thresholds`).
5. Registered atomically as ``<models_dir>/<version>/``, beside the other modes' models.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from rich.console import Console

from board_data.class_folders import ClassImage, class_images, split_anomaly_set
from infra.progress import progress_bar
from inspection.anomaly import (
    BANK_FILE,
    FEATURE_STRIDE,
    FEATURES_XML,
    IR_INPUT,
    IR_OUTPUT,
    PARAMS_FILE,
    SIZE_MULTIPLE,
    AnomalyParams,
    AnomalyView,
    PatchScorer,
    normalise,
)
from inspection.model.registry import CARD_FILE
from training.anomaly_evaluation import auroc

if TYPE_CHECKING:
    import torch
    from torch import nn

    from inspection.model.nets import LiteVariant

DEFAULT_LAYERS = (4, 10)  # Lite0 blocks: end of stage 3 (stride 8, 40 ch), stage 5 (16, 112)
# Chosen on the magnetic-tile calibration part (BENCHMARKS "Anomaly mode"): the image at
# 96² of area, aspect kept, grey levels standardised (brightness and texture of the whole
# tile); at 128² of area (aspect kept); squeezed to 256² (holes and cracks of a few pixels).
DEFAULT_VIEWS = (
    AnomalyView(size=96, keep_aspect=True, standardise=True),
    AnomalyView(size=128, keep_aspect=True),
    AnomalyView(size=256),
)


def patch_feature_net(
    layers: Sequence[int] = DEFAULT_LAYERS, backbone_variant: str = "lite0", pool: int = 3
) -> nn.Module:
    """The extractor as a torch module: (N, 1, H, W) grey levels → (N, C, H/8, W/8), from
    blocks ``layers`` of EfficientNet-Lite ``backbone_variant`` (lite0, lite1, lite2), each
    feature averaged over its ``pool`` × ``pool`` neighbours (odd; PatchCore's patch)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from inspection.model.nets import EfficientNetLite, lite_block_strides

    variant = cast("LiteVariant", backbone_variant)
    strides = lite_block_strides(variant)
    top = max(i for i, s in enumerate(strides) if s <= 16)  # deeper: too coarse for patches
    layers = tuple(sorted(set(layers)))
    if not layers or min(layers) < 1 or max(layers) > top:
        raise ValueError(f"layers must be {variant} block indices in 1..{top}, got {layers}")
    if pool < 1 or pool % 2 == 0:
        raise ValueError(f"the patch pool must be an odd size >= 1, got {pool}")
    backbone = EfficientNetLite(num_classes=1, pretrained=True, variant=variant)

    class PatchFeatures(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = backbone._conv_stem
            self.bn0 = backbone._bn0
            self.blocks = nn.ModuleList(list(backbone._blocks)[: max(layers) + 1])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = ((x - 127.5) / 127.5).expand(-1, 3, -1, -1)
            x = F.relu6(self.bn0(self.stem(x)))
            out = []
            for i, block in enumerate(self.blocks):
                x = block(x)
                if i in layers:
                    f = F.avg_pool2d(x, pool, stride=1, padding=pool // 2, count_include_pad=False)
                    up = strides[i] // FEATURE_STRIDE
                    if up > 1:
                        f = F.interpolate(f, scale_factor=up, mode="bilinear", align_corners=False)
                    elif up < 1:
                        f = F.avg_pool2d(f, FEATURE_STRIDE // strides[i])
                    out.append(f)
            return torch.cat(out, dim=1)

    return PatchFeatures().eval()


def export_features(module: nn.Module, folder: Path) -> int:
    """Write ``features.xml``/``.bin`` (dynamic H, W); returns the feature dimension."""
    import openvino as ov
    import torch

    example = torch.full((1, 1, 128, 160), 100.0)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.trace", category=DeprecationWarning
        )
        dim = int(module(example).shape[1])
        ov_model = ov.convert_model(
            module, example_input=example, input=[ov.PartialShape([1, 1, -1, -1])]
        )
    ov_model.inputs[0].get_tensor().set_names({IR_INPUT})
    ov_model.outputs[0].get_tensor().set_names({IR_OUTPUT})
    ov.save_model(ov_model, folder / FEATURES_XML, compress_to_fp16=False)
    return dim


def greedy_coreset(features: torch.Tensor, n: int, seed: int = 0, proj_dim: int = 128) -> Any:
    """Indices (numpy) of ``n`` rows chosen by greedy k-center on a random projection."""
    import torch

    total = len(features)
    if n >= total:
        return np.arange(total)
    g = torch.Generator().manual_seed(seed)
    z = features
    if features.shape[1] > proj_dim:
        proj = torch.randn(features.shape[1], proj_dim, generator=g) / proj_dim**0.5
        z = features @ proj
    z_sq = (z * z).sum(1)
    start = int(torch.randint(total, (1,), generator=g))
    chosen = [start]
    mind = z_sq - 2 * (z @ z[start]) + z_sq[start]
    for _ in range(n - 1):
        i = int(torch.argmax(mind))
        chosen.append(i)
        mind = torch.minimum(mind, z_sq - 2 * (z @ z[i]) + z_sq[i])
    return np.asarray(chosen, np.int64)


def best_f1_threshold(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """The map level with the best pixel F1 over the images' masks (200 candidate levels)."""
    values = np.concatenate([m.ravel() for m in maps])
    truth = np.concatenate([k.ravel() for k in masks])
    if not truth.any():
        return float(np.quantile(values, 0.999))
    levels = np.quantile(values, np.linspace(0.5, 0.9999, 200))
    pos_hist = np.histogram(values[truth], bins=np.r_[levels, np.inf])[0][::-1].cumsum()[::-1]
    all_hist = np.histogram(values, bins=np.r_[levels, np.inf])[0][::-1].cumsum()[::-1]
    f1 = 2 * pos_hist / np.maximum(all_hist + truth.sum(), 1)
    return float(levels[int(np.argmax(f1))])


def _image_key(item: ClassImage) -> str:
    import hashlib

    return f"{item.cls}/{item.path.name}:{hashlib.sha256(item.path.read_bytes()).hexdigest()}"


def _features_of(
    scorer: PatchScorer, items: Sequence[ClassImage], view: AnomalyView, console: Console, what: str
) -> np.ndarray:
    """(P, C) float32: every patch of every image seen through ``view``."""
    chunks = []
    with progress_bar(console, what, len(items)) as step:
        for item in items:
            f = scorer.patches(item.load(), view)
            chunks.append(f.reshape(f.shape[0], -1).T.copy())
            step()
    return np.concatenate(chunks)


def _calibrate(
    scorer: PatchScorer, items: Sequence[ClassImage], good_class: str, console: Console
) -> tuple[list[AnomalyView], np.ndarray, np.ndarray, float]:
    """The views with their normalisation set on the calibration part's good images, the
    part's normalised image scores and defective flags, and the best-F1 normalised pixel
    level of the combined maps on the defect masks."""
    views = scorer.params.views
    maxima = np.zeros((len(items), len(views)))
    medians: list[list[float]] = [[] for _ in views]
    labels, halves, masks = [], [], []
    with progress_bar(console, "scoring calibration images", len(items)) as step:
        for i, item in enumerate(items):
            image = item.load()
            raws = [scorer.raw(image, k) for k in range(len(views))]
            maxima[i] = [float(r.max()) for r in raws]
            labels.append(item.cls != good_class)
            if item.cls == good_class:
                for k, r in enumerate(raws):
                    medians[k].append(float(np.median(r)))
            mask = item.load_mask(image.shape)
            if item.cls != good_class and mask is not None and mask.any():
                halves.append([r[::2, ::2] for r in raws])
                masks.append(mask[::2, ::2])
            step()
    defective = np.asarray(labels, bool)
    if defective.all():
        raise ValueError(f"no images of the good class {good_class!r} to calibrate on")
    fitted = []
    for k, view in enumerate(views):
        ref = float(np.quantile(maxima[~defective, k], 0.99))
        floor = min(float(np.median(medians[k])), 0.9 * ref)
        fitted.append(view.model_copy(update={"image_ref": ref, "floor": floor}))
    # the combined map's maximum is the maximum over views of each view's normalised maximum
    scores = np.max(
        [normalise(maxima[:, k], v.image_ref, v.floor) for k, v in enumerate(fitted)], axis=0
    )
    if halves:
        maps = [
            np.max(
                [normalise(r, v.image_ref, v.floor) for r, v in zip(rs, fitted, strict=True)],
                axis=0,
            )
            for rs in halves
        ]
        level = best_f1_threshold(maps, masks)
    else:
        level = float(np.quantile(scores, 0.5))
    return fitted, scores, defective, level


def train_anomaly(
    models_dir: Path,
    data: Path,
    good_class: str,
    *,
    views: Sequence[AnomalyView] = DEFAULT_VIEWS,
    layers: Sequence[int] = DEFAULT_LAYERS,
    coreset_ratio: float = 0.1,
    max_pool: int = 100_000,
    max_bank: int = 4000,
    blur_sigma: float = 4.0,
    target_fnr: float = 0.001,
    seed: int = 0,
    threads: int | None = None,
    version: str | None = None,
    console: Console | None = None,
) -> Path:
    """Train, calibrate and register an anomaly model; returns its folder.

    Each view's memory bank is a greedy coreset of ``coreset_ratio`` of its good training
    patches (at most ``max_bank``), chosen from at most ``max_pool`` of them (drawn at random)
    to bound the time."""
    import openvino as ov
    import torch

    from inspection.model.registry import _VERSION_RE, ModelCard, assembled, data_hash
    from training.calibration import calibrate_thresholds

    console = console or Console(stderr=True)
    started = time.monotonic()
    if threads is not None:
        torch.set_num_threads(threads)
    if not 0 < coreset_ratio <= 1:
        raise ValueError(f"coreset ratio must be in (0, 1], got {coreset_ratio}")
    if not views:
        raise ValueError("an anomaly model needs at least one view")
    views = [
        v.model_copy(update={"bank": BANK_FILE if k == 0 else f"memory_bank_{k}.npy"})
        for k, v in enumerate(views)
    ]
    parts = split_anomaly_set(class_images(data), good_class, seed=seed)
    console.log(
        f"{data}: good class {good_class!r}; "
        + ", ".join(f"{k} {len(v)}" for k, v in parts.items())
        + " images (defective ones only in calibration and test)"
    )
    version = version or f"anom-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    if not _VERSION_RE.match(version):
        raise ValueError(f"model version {version!r} is not a valid folder name")
    final = Path(models_dir) / version
    if final.exists():
        raise FileExistsError(f"model version {version!r} already exists: {final}")
    final.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with assembled(final) as tmp:
        dim = export_features(patch_feature_net(layers), tmp)
        params = AnomalyParams(
            views=tuple(views), blur_sigma=blur_sigma, pixel_threshold=0.5,
            layers=tuple(layers), feature_dim=dim,
        )  # fmt: skip
        empty = [np.zeros((1, dim), np.float32)] * len(views)
        probe = PatchScorer(tmp / FEATURES_XML, empty, params, threads=threads)
        banks = []
        for k, view in enumerate(views):
            what = f"view {k + 1}/{len(views)}: patch features of good training images"
            feats = torch.from_numpy(_features_of(probe, parts["train"], view, console, what))
            if len(feats) > max_pool:
                g = torch.Generator().manual_seed(seed)
                feats = feats[torch.randperm(len(feats), generator=g)[:max_pool]]
            n_bank = max(1, min(max_bank, round(coreset_ratio * len(feats))))
            t0 = time.monotonic()
            bank = feats[torch.from_numpy(greedy_coreset(feats, n_bank, seed=seed))].numpy()
            console.log(f"view {k + 1} memory bank: {n_bank} of {len(feats)} patches ({dim}-d), "
                        f"coreset in {time.monotonic() - t0:.0f} s")  # fmt: skip
            np.save(tmp / view.bank, bank.astype(np.float32))
            banks.append(bank)
        scorer = PatchScorer(tmp / FEATURES_XML, banks, params, threads=threads)
        fitted, scores, defective, pixel_level = _calibrate(
            scorer, parts["calibration"], good_class, console
        )
        thresholds = calibrate_thresholds(scores, defective, target_fnr=target_fnr)
        params = params.model_copy(
            update={
                "views": tuple(fitted),
                "pixel_threshold": min(pixel_level, thresholds.pass_below),
            }
        )
        (tmp / PARAMS_FILE).write_text(params.model_dump_json(indent=2) + "\n")
        metrics = {
            "good_class": good_class,
            "split_seed": seed,
            "split": {k: len(v) for k, v in parts.items()},
            "memory_banks": [list(b.shape) for b in banks],
            "calibration_image_auroc": auroc(scores, defective),
            "training_seconds": round(time.monotonic() - started, 1),
        }
        card = ModelCard(
            version=version,
            arch="efficientnet_lite0",
            input_size=SIZE_MULTIPLE,
            classes=("good", "anomalous"),
            preprocessing="2-D uint8 grey image resized per view in anomaly.json (multiples of "
            "16), float32 grey levels into features.xml ((x - 127.5) / 127.5 inside)",
            mode="anomaly",
            thresholds=thresholds,
            metrics=metrics,
            training_data_hash=data_hash(_image_key(i) for i in parts["train"]),
            torch_version=torch.__version__,
            openvino_version=ov.get_version(),
        )
        rows = {k: [f"{i.cls}/{i.path.name}" for i in v] for k, v in parts.items()}
        (tmp / "split.json").write_text(json.dumps({"data": str(data), **rows}, indent=1) + "\n")
        (tmp / CARD_FILE).write_text(card.model_dump_json(indent=2) + "\n")
    console.log(
        f"registered {final} in {time.monotonic() - started:.0f} s: thresholds "
        f"{thresholds.pass_below:.3f} / {thresholds.fail_at_or_above:.3f}, calibration "
        f"AUROC {metrics['calibration_image_auroc']}"
    )
    return final
