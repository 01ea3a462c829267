"""Train, calibrate, quantize and evaluate region classifiers on real, labelled data.

- DeepPCB (``groupG/G/*_test.jpg`` + ``*_temp.jpg`` + ``G_not/*.txt``): region crops from the
  ROI stage labelled by overlap with the annotations, plus the annotated boxes, plus "none"
  examples (:mod:`training.crop_table`); validation = whole board groups held out.
- A folder of class-labelled images (NEU-DET: the class is the file name's prefix,
  ``crazing_12.jpg``): the multi-class case, through the same trainer.

Board-level decisions on DeepPCB: every tested image is defective; each pair's template,
moved by a small misregistration and scanner noise, is scored as a good board.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from rich.console import Console

from board_data.deeppcb import DeepPcbSample, read_split, write_detections
from infra.progress import new_progress
from inspection.verdict import DEFECT_TYPES, board_score, decide, region_verdicts
from schemas.events import Box, DefectType

if TYPE_CHECKING:
    from inspection.backends.base import Classifier
    from inspection.model.nets import Arch
    from inspection.model.registry import Thresholds

CROP_SIZE = 64


@contextmanager
def progress_bar(console: Console, description: str, total: int) -> Iterator[Callable[..., None]]:
    """A rich progress bar; yields ``advance(n=1, description=None)``."""
    with new_progress(console) as progress:
        task = progress.add_task(description, total=total)

        def advance(n: int = 1, description: str | None = None) -> None:
            progress.update(
                task, advance=n, description=description or progress.tasks[0].description
            )

        yield advance


# --------------------------------------------------------------------------- data layout


def is_deeppcb(root: Path) -> bool:
    return any(Path(root).glob("group*/*/*_test.jpg"))


_CLASS_RE = re.compile(r"^(?P<cls>.+?)_\d+$")


def labelled_images(root: Path) -> list[tuple[Path, str]]:
    """(path, class) of every image under ``root`` (or ``root/images``) whose name is
    ``<class>_<number>.<ext>``, sorted by path."""
    root = Path(root)
    folder = root / "images" if (root / "images").is_dir() else root
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"):
            continue
        m = _CLASS_RE.match(p.stem)
        if m:
            out.append((p, m["cls"]))
    return out


def split_deeppcb(
    samples: Sequence[DeepPcbSample], root: Path, split_file: Path | None
) -> tuple[list[DeepPcbSample], list[DeepPcbSample]]:
    """(train, validation): the split file lists the validation pairs (DeepPCB's split
    format); without one, the board groups of ``DEFAULT_VAL_GROUPS`` are held out. A board
    group is never in both: training drops every pair of a validation group."""
    from training.crop_table import DEFAULT_VAL_GROUPS

    if split_file is not None:
        val_ids = {s.image_id for s in read_split(root, split_file)}
        val_groups = {s.group for s in samples if s.image_id in val_ids}
    else:
        val_groups = set(DEFAULT_VAL_GROUPS)
        val_ids = {s.image_id for s in samples if s.group in val_groups}
    val = [s for s in samples if s.image_id in val_ids]
    train = [s for s in samples if s.group not in val_groups]
    if not val or not train:
        raise ValueError(f"empty split: {len(train)} training and {len(val)} validation pairs")
    return train, val


def eval_samples(
    root: Path, split_file: Path | None, groups: Sequence[str] = ()
) -> list[DeepPcbSample]:
    """The pairs a split file lists; without one, the pairs of ``groups`` (e.g. the model's
    validation groups, from its card) when any are under ``root``, else the default
    validation groups."""
    from training.crop_table import samples_of

    samples = samples_of(root)
    if split_file is None and groups:
        chosen = [s for s in samples if s.group in set(groups)]
        if chosen:
            return chosen
    return split_deeppcb(samples, root, split_file)[1]


def _val_groups(card: Any) -> list[str]:
    groups = card.metrics.get("val_groups", [])
    return [str(g) for g in groups] if isinstance(groups, list) else []


# --------------------------------------------------------------------------- scoring


@dataclass
class PairResult:
    """One DeepPCB pair through the serving path: the board and its simulated good twin."""

    sample: DeepPcbSample
    boxes: list[Box]
    probs: np.ndarray
    good_boxes: list[Box]
    good_probs: np.ndarray
    seconds: float  # ROI + crops + classifier on the board under test
    crops: np.ndarray | None = field(default=None, repr=False)
    image: np.ndarray | None = field(default=None, repr=False)

    @property
    def score(self) -> float:
        return board_score(region_verdicts(self.boxes, self.probs))

    @property
    def good_score(self) -> float:
        return board_score(region_verdicts(self.good_boxes, self.good_probs))

    def detections(self) -> list[tuple[Box, float, DefectType]]:
        return detections_of(self.boxes, self.probs)


def detections_of(boxes: Sequence[Box], probs: np.ndarray) -> list[tuple[Box, float, DefectType]]:
    """Regions the classifier calls a defect: (box, P(type), type)."""
    out = []
    for box, p in zip(boxes, probs, strict=True):
        k = int(np.argmax(p))
        if k > 0:
            out.append((box, float(p[k]), DEFECT_TYPES[k - 1]))
    return out


def good_board_rng(image_id: str, seed: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(image_id.encode())])


def score_pairs(
    samples: Sequence[DeepPcbSample],
    classifier: Classifier,
    console: Console,
    seed: int = 0,
    keep: Callable[[int], bool] = lambda i: False,
) -> list[PairResult]:
    """Each pair's board (and its simulated good twin) through ROI → crops → classifier,
    as a worker runs them. ``keep(i)`` keeps the crops and image of pair ``i`` (to draw it)."""
    from training.crop_table import crops_for, regions, simulate_good_board

    out = []
    size = classifier.input_size
    with progress_bar(console, "inspecting boards", len(samples)) as advance:
        for i, sample in enumerate(samples):
            image, template = sample.load()
            t0 = time.perf_counter()
            aligned, boxes = regions(image, template)
            crops = crops_for(image, aligned, boxes, size)
            probs = classifier.predict_proba(crops)
            seconds = time.perf_counter() - t0
            good = simulate_good_board(template, good_board_rng(sample.image_id, seed))
            g_aligned, g_boxes = regions(good, template)
            g_probs = classifier.predict_proba(crops_for(good, g_aligned, g_boxes, size))
            kept = keep(i)
            out.append(
                PairResult(
                    sample,
                    boxes,
                    probs,
                    g_boxes,
                    g_probs,
                    seconds,
                    crops if kept else None,
                    image if kept else None,
                )
            )
            advance()
    return out


def board_arrays(results: Sequence[PairResult]) -> tuple[np.ndarray, np.ndarray]:
    """(scores, defective) over every tested board (defective) and every good twin."""
    scores = [r.score for r in results] + [r.good_score for r in results]
    defective = [True] * len(results) + [False] * len(results)
    return np.asarray(scores), np.asarray(defective)


def board_rates(
    scores: np.ndarray, defective: np.ndarray, thresholds: Thresholds
) -> dict[str, float]:
    """FNR (defective boards passed), FPR (good boards failed) and review rate."""
    verdicts = np.asarray([decide(thresholds, float(s)).value for s in scores])
    defective = np.asarray(defective, bool)
    n_pos, n_neg = int(defective.sum()), int((~defective).sum())
    return {
        "board_fnr": float((verdicts[defective] == "pass").sum() / max(n_pos, 1)),
        "board_fpr": float((verdicts[~defective] == "fail").sum() / max(n_neg, 1)),
        "review_rate": float((verdicts == "review").mean()) if len(verdicts) else 0.0,
        "defective_boards": n_pos,
        "good_boards": n_neg,
    }


# --------------------------------------------------------------------------- metrics


def evaluation_metrics(
    results: Sequence[PairResult], thresholds: Thresholds | None
) -> dict[str, Any]:
    """Detection metrics (DeepPCB protocol), ROI recall, board-level rates, speed, and the
    same per validation group."""
    from training.detection_metrics import ImageResult, detection_metrics, roi_recall

    def block(rs: Sequence[PairResult]) -> dict[str, Any]:
        det = detection_metrics([ImageResult(r.detections(), r.sample.truths) for r in rs])
        det["roi_recall"] = roi_recall([r.boxes for r in rs], [r.sample.truths for r in rs])
        det["candidates_per_board"] = float(np.mean([len(r.boxes) for r in rs]))
        det["boards"] = len(rs)
        if thresholds is not None:
            det.update(board_rates(*board_arrays(rs), thresholds))
        return det

    out = block(results)
    seconds = sum(r.seconds for r in results)
    out["images_per_s"] = len(results) / seconds if seconds > 0 else float("nan")
    groups = sorted({r.sample.group for r in results})
    out["per_group"] = {
        g: {
            k: v
            for k, v in block([r for r in results if r.sample.group == g]).items()
            if k != "per_class"
        }
        for g in groups
    }
    return out


def cross_group_board_rates(
    results: Sequence[PairResult], target_fnr: float = 0.001
) -> dict[str, dict[str, float]]:
    """Honest board-level rates: calibrate on every validation group but one, measure on that
    one (needs ≥ 2 groups). Keyed by the group measured."""
    from training.calibration import calibrate_thresholds

    groups = sorted({r.sample.group for r in results})
    out: dict[str, dict[str, float]] = {}
    if len(groups) < 2:
        return out
    for g in groups:
        fit = [r for r in results if r.sample.group != g]
        test = [r for r in results if r.sample.group == g]
        th = calibrate_thresholds(*board_arrays(fit), target_fnr=target_fnr)
        out[g] = board_rates(*board_arrays(test), th)
    return out


# --------------------------------------------------------------------------- DeepPCB training


# The evaluation figures worth a line in a model card or a table, in reading order.
HEADLINE_METRICS = (
    "precision",
    "recall",
    "f_score",
    "map",
    "roi_recall",
    "candidates_per_board",
    "board_fnr",
    "board_fpr",
    "review_rate",
    "boards",
)


def _card_metrics_row(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in HEADLINE_METRICS if k in m}


def train_deeppcb(
    models_dir: Path,
    data: Path,
    split_file: Path | None = None,
    *,
    arch: Arch = "small",
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    threads: int | None = None,
    version: str | None = None,
    target_fnr: float = 0.001,
    int8: bool = True,
    cache_dir: Path | None = Path(".linecheck/cache"),
    console: Console | None = None,
) -> Path:
    """Train on the training groups, keep the best epoch by validation loss, register the
    model, calibrate its thresholds on the validation groups (board level), quantize to INT8,
    and record validation metrics in the card. Returns the model folder."""
    import torch

    from inspection.backends import load_classifier
    from inspection.model.registry import ModelCard, data_hash, save_model, update_card
    from training.calibration import calibrate_thresholds
    from training.crop_table import build_table, samples_of
    from training.trainer import train_classifier

    console = console or Console(stderr=True)
    started = time.monotonic()
    samples = samples_of(data)
    train_s, val_s = split_deeppcb(samples, data, split_file)
    with progress_bar(console, "cropping DeepPCB pairs", len(samples)) as advance:
        table = build_table(
            data, samples, CROP_SIZE, seed, cache_dir, progress=lambda i, n: advance()
        )
    train_t = table.select(table.in_images([s.image_id for s in train_s]))
    val_t = table.select(table.in_images([s.image_id for s in val_s]))
    val_groups = sorted({s.group for s in val_s})
    console.log(
        f"{len(train_s)} training pairs ({len(train_t.labels)} crops), {len(val_s)} validation "
        f"pairs in {', '.join(val_groups)} ({len(val_t.labels)} crops)"
    )
    result = _train_with_bar(
        console,
        arch,
        epochs,
        train_t.crops,
        train_t.labels,
        val_t.crops,
        val_t.labels,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        threads=threads,
        train_fn=train_classifier,
    )
    version = version or time.strftime(f"deeppcb-{arch}-%Y%m%d-%H%M%S", time.gmtime())
    card = ModelCard(
        version=version,
        arch=arch,
        input_size=CROP_SIZE,
        metrics={
            "region_val": result.metrics,
            "data": str(data),
            "train_groups": sorted({s.group for s in train_s}),
            "val_groups": val_groups,
            "train_pairs": len(train_s),
            "val_pairs": len(val_s),
        },
        training_data_hash=data_hash(f"deeppcb:{s.group}/{s.image_id}" for s in train_s),
        torch_version=torch.__version__,
    )
    model_dir = save_model(result.module, card, models_dir)
    classifier = load_classifier(model_dir, backend="openvino", threads=threads)
    results = score_pairs(val_s, classifier, console, seed=seed)
    thresholds = calibrate_thresholds(*board_arrays(results), target_fnr=target_fnr)
    metrics = evaluation_metrics(results, thresholds)
    card_metrics: dict[str, Any] = {**card.metrics, "val": _card_metrics_row(metrics)}
    if int8:
        from training.quantize import quantize_int8

        quantize_int8(model_dir, train_t.crops, seed=seed)
        q = load_classifier(model_dir, backend="openvino", threads=threads, variant="int8")
        card_metrics["val_int8"] = _card_metrics_row(
            evaluation_metrics(score_pairs(val_s, q, console, seed=seed), thresholds)
        )
    card_metrics["train_seconds"] = round(time.monotonic() - started, 1)
    update_card(
        model_dir, card.model_copy(update={"thresholds": thresholds, "metrics": card_metrics})
    )
    console.log(
        f"model {version} in {model_dir} · val F {metrics['f_score']:.4f} mAP "
        f"{metrics['map']:.4f} · thresholds pass<{thresholds.pass_below:.4f} "
        f"fail≥{thresholds.fail_at_or_above:.4f} · {time.monotonic() - started:.0f}s"
    )
    return model_dir


def _train_with_bar(
    console: Console,
    arch: str,
    epochs: int,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    train_fn: Callable[..., Any],
    **kwargs: Any,
) -> Any:
    with progress_bar(console, f"training {arch}", epochs) as advance:

        def on_epoch(epoch: int, total: int, row: dict[str, float]) -> None:
            advance(
                description=(
                    f"training {arch} · epoch {epoch} val loss {row['val_loss']:.4f} "
                    f"acc {row['val_accuracy']:.4f} ({row['seconds']:.0f}s)"
                )
            )

        return train_fn(
            train_x, train_y, val_x, val_y, arch=arch, epochs=epochs, progress=on_epoch, **kwargs
        )


def calibrate_model(
    model_dir: Path,
    data: Path,
    split_file: Path | None = None,
    *,
    target_fnr: float = 0.001,
    seed: int = 0,
    threads: int | None = None,
    console: Console | None = None,
) -> tuple[Thresholds, dict[str, Any]]:
    """Re-choose a registered model's thresholds on labelled DeepPCB-layout data and store
    them in its card (never in the graph). Returns the thresholds and the rates they give."""
    from inspection.backends import load_classifier
    from inspection.model.registry import load_card, update_card
    from training.calibration import calibrate_thresholds

    console = console or Console(stderr=True)
    samples = eval_samples(data, split_file, _val_groups(load_card(model_dir)))
    classifier = load_classifier(model_dir, backend="openvino", threads=threads)
    results = score_pairs(samples, classifier, console, seed=seed)
    scores, defective = board_arrays(results)
    thresholds = calibrate_thresholds(scores, defective, target_fnr=target_fnr)
    rates = board_rates(scores, defective, thresholds)
    card = load_card(model_dir)
    metrics = {
        **card.metrics,
        "calibration": {"data": str(data), "pairs": len(samples), **rates},
    }
    update_card(model_dir, card.model_copy(update={"thresholds": thresholds, "metrics": metrics}))
    return thresholds, rates


# --------------------------------------------------------------------------- evaluation


def evaluate_model(
    model_dir: Path,
    data: Path,
    split_file: Path | None,
    out: Path,
    *,
    variant: str = "fp32",
    draw: int = 0,
    seed: int = 0,
    threads: int | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Write ``out/detections/<image id>.txt`` and ``out/metrics.json``; with ``draw`` N,
    pictures of N boards (boxes, types, CAM heatmaps of failed/doubtful regions) in
    ``out/boards/``. Returns the metrics."""
    from inspection.backends import load_classifier
    from inspection.model.registry import load_card

    console = console or Console(stderr=True)
    card = load_card(model_dir)
    samples = eval_samples(data, split_file, _val_groups(card))
    classifier = load_classifier(
        model_dir,
        backend="openvino",
        threads=threads,
        variant=variant,  # type: ignore[arg-type]
    )
    # spread the drawn boards over the set (several groups), worst-looking first is not needed
    drawn = (
        set(np.linspace(0, len(samples) - 1, draw).round().astype(int).tolist()) if draw else set()
    )
    results = score_pairs(samples, classifier, console, seed=seed, keep=lambda i: i in drawn)
    det_dir = Path(out) / "detections"
    det_dir.mkdir(parents=True, exist_ok=True)
    for r in results:
        write_detections(det_dir / f"{r.sample.image_id}.txt", r.detections())
    metrics = evaluation_metrics(results, card.thresholds)
    metrics["board_rates_cross_group"] = cross_group_board_rates(
        results, card.thresholds.target_fnr if card.thresholds else 0.001
    )
    metrics.update(
        {
            "model": card.version,
            "variant": variant,
            "data": str(data),
            "split": str(split_file) if split_file else None,
            "groups": sorted({s.group for s in samples}),
            "thresholds": card.thresholds.model_dump() if card.thresholds else None,
        }
    )
    if drawn:
        _draw(model_dir, [r for r in results if r.crops is not None], Path(out) / "boards", card)
    (Path(out) / "metrics.json").write_text(
        json.dumps(_json_ready(metrics), indent=2, allow_nan=False) + "\n"
    )
    return metrics


def _json_ready(value: Any) -> Any:
    """NaN (a class without truths) becomes null; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _draw(model_dir: Path, results: Sequence[PairResult], folder: Path, card: Any) -> None:
    from inspection.explain import Explainer, save_explanation

    explainer = Explainer(model_dir)
    for r in results:
        assert r.image is not None and r.crops is not None
        regions = region_verdicts(r.boxes, r.probs)
        save_explanation(
            folder / f"{r.sample.image_id}.png",
            r.image,
            r.crops,
            regions,
            explainer.module,
            card.thresholds,
            truths=[(t.box, t.defect_type.value) for t in r.sample.truths],
            title=f"{r.sample.group}/{r.sample.image_id} score {r.score:.3f} "
            f"green: truth, red: defect called",
        )


# --------------------------------------------------------------------------- image folders


def load_labelled_images(items: Sequence[tuple[Path, str]], size: int) -> np.ndarray:
    """(N, 3, size, size) uint8: each image in grayscale, resized, in all three channels."""
    out = np.zeros((len(items), 3, size, size), np.uint8)
    for i, (path, _) in enumerate(items):
        g = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if g is None:
            raise ValueError(f"cannot read image {path}")
        out[i] = cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA)[None]
    return out


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), ``val_fraction`` of every class held out."""
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(len(idx) * val_fraction))
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


def train_image_folder(
    models_dir: Path,
    data: Path,
    *,
    arch: Arch = "efficientnet_lite0",
    epochs: int = 10,
    size: int = 128,
    val_fraction: float = 0.2,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    threads: int | None = None,
    version: str | None = None,
    console: Console | None = None,
) -> Path:
    """Multi-class classifier on a folder of class-labelled images (class = file-name prefix),
    with a stratified held-out split; registered with its classes in the card."""
    import torch

    from inspection.backends import load_classifier
    from inspection.model.registry import ModelCard, data_hash, save_model, update_card
    from training.trainer import train_classifier

    console = console or Console(stderr=True)
    started = time.monotonic()
    items = labelled_images(data)
    if not items:
        raise ValueError(f"no <class>_<n>.<ext> images in {data}")
    classes = tuple(sorted({c for _, c in items}))
    y = np.asarray([classes.index(c) for _, c in items], np.int64)
    x = load_labelled_images(items, size)
    tr, va = stratified_split(y, val_fraction, seed)
    console.log(f"{len(items)} images, classes {classes}: {len(tr)} training, {len(va)} held out")
    result = _train_with_bar(
        console,
        arch,
        epochs,
        x[tr],
        y[tr],
        x[va],
        y[va],
        classes=classes,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        threads=threads,
        train_fn=train_classifier,
    )
    version = version or time.strftime(f"classify-{arch}-%Y%m%d-%H%M%S", time.gmtime())
    card = ModelCard(
        version=version,
        arch=arch,
        input_size=size,
        classes=classes,
        preprocessing=(
            f"grayscale image resized to {size}x{size} in all three channels, then float32 "
            "(x - 127.5) / 127.5"
        ),
        training_data_hash=data_hash(f"{p.name}:{c}" for (p, c) in (items[i] for i in tr)),
        torch_version=torch.__version__,
        metrics={"region_val": result.metrics, "data": str(data)},
    )
    model_dir = save_model(result.module, card, models_dir)
    served = load_classifier(model_dir, backend="openvino", threads=threads)
    acc = float((served.predict_proba(x[va]).argmax(1) == y[va]).mean())
    update_card(
        model_dir,
        card.model_copy(
            update={
                "metrics": {
                    **card.metrics,
                    "held_out_accuracy_openvino": acc,
                    "held_out_images": len(va),
                    "train_seconds": round(time.monotonic() - started, 1),
                }
            }
        ),
    )
    console.log(f"model {version} in {model_dir} · held-out accuracy {acc:.4f} (OpenVINO)")
    return model_dir
