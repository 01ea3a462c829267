"""The classify stage alone, on the regions the ROI stage finds on the bench boards: OpenVINO
vs torch eager, INT8 vs FP32 (speed and detection F-score), in the worker's batches (the
crops of a polled batch in one call) and per board or per crop. One thread, as a worker
runs it."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inspection.backends import Classifier, load_classifier
from inspection.crops import CropGeometry, crops_for, label_candidates, split_views
from inspection.roi import find_regions_aligned
from schemas.events import Box, GroundTruth
from training.detection_metrics import ImageResult, detection_metrics
from training.scoring import detections_of


@dataclass(frozen=True)
class BoardCrops:
    boxes: list[Box]
    crops: np.ndarray
    truths: list[GroundTruth]


INT8_BOARDS = 240
"""Synthetic boards whose candidates calibrate the INT8 copy (generator seed 0) and those
its accuracy control measures (seed 1): ~900 crops each. With 60 boards (~210 crops) the
calibration saw fewer crops than NNCF's 300-sample subset and the INT8 F-score fell 0.9
points; one control crop weighed 0.45 points, as coarse as the 0.5-point tolerance."""


def candidate_crops(seed: int, boards: int, model: CropGeometry) -> list[BoardCrops]:
    """The ROI candidates and their classifier crops (as ``model``, a classifier or its card,
    takes them) on ``boards`` synthetic boards of generator ``seed`` (boards the synthetic
    model was not trained on for seed ≠ 0)."""
    from board_data.synthetic import BoardGenerator

    gen = BoardGenerator(seed=seed)
    out = []
    for i in range(boards):
        board = gen.board(i)
        boxes, aligned = find_regions_aligned(board.image, board.template)
        crops = crops_for(model, board.image, aligned, boxes)
        out.append(BoardCrops(boxes, crops, list(board.defects)))
    return out


def calls_of(
    boards: list[BoardCrops], per_call: int = 1, per_crop: bool = False
) -> list[np.ndarray]:
    """The classifier calls for ``boards``: ``per_call`` boards' crops in one call (the
    worker classifies a polled batch at once), or one crop per call."""
    if per_crop:
        return [c[None] for b in boards for c in b.crops]
    return [np.concatenate([b.crops for b in boards[i : i + per_call]])
            for i in range(0, len(boards), per_call)]  # fmt: skip


ROUNDS = 5
"""Passes over the boards per setup, interleaved with the other setups' (see
:func:`interleaved_ms`)."""


def interleaved_ms(
    setups: dict[str, tuple[Classifier, list[np.ndarray]]], boards: int, rounds: int = ROUNDS
) -> dict[str, float]:
    """Mean ms per board of each setup (a classifier and its calls over ``boards`` boards),
    the best of ``rounds`` passes; the setups take turns pass by pass, so that a drift of the
    machine's speed (a shared host's) weighs on all of them alike and their ratios compare
    like with like (measured one setup after the other, OpenVINO / torch moved 1.2–1.7)."""
    for classifier, calls in setups.values():
        classifier.predict_proba(calls[0])  # warm-up
    best = dict.fromkeys(setups, float("inf"))
    for _ in range(rounds):
        for name, (classifier, calls) in setups.items():
            start = time.perf_counter()
            for crops in calls:
                classifier.predict_proba(crops)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds / boards * 1e3 for name, seconds in best.items()}


def f_score(classifier: Classifier, boards: list[BoardCrops]) -> float:
    """Detection F-score (DeepPCB protocol, IoU > 0.33, same type) on the boards."""
    results = [
        ImageResult(detections_of(b.boxes, classifier.predict_proba(b.crops)), b.truths)
        for b in boards
    ]
    return float(detection_metrics(results)["f_score"])  # type: ignore[arg-type]


def ensure_int8(
    model_dir: Path, work_dir: Path, model: CropGeometry, boards: int = INT8_BOARDS
) -> Path:
    """A folder with the model and its INT8 IR: the model's own when it has one, else a copy
    in ``work_dir`` quantized by :func:`quantize_copy` on :func:`int8_samples` (the registry
    is left as it is)."""
    from inspection.model.registry import IR_INT8_XML, clone_model
    from inspection.model.views import view_dirs

    def quantized(folder: Path) -> bool:
        return folder.is_dir() and all((d / IR_INT8_XML).is_file() for d in view_dirs(folder))

    if quantized(model_dir):
        return model_dir
    copy = work_dir / "bench-models" / model_dir.name
    if not quantized(copy):
        if not copy.is_dir():
            copy = clone_model(model_dir, model_dir.name, work_dir / "bench-models")
        quantize_copy(copy, int8_samples(model, boards))
    return copy


Int8Samples = tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]
"""Calibration crops, and labelled crops for the accuracy control."""


def int8_samples(model: CropGeometry, boards: int = INT8_BOARDS) -> Int8Samples:
    """The crops (as ``model`` takes them) of the ROI candidates of ``boards`` synthetic
    training boards (calibration) and, labelled, of as many boards of another generator seed
    (accuracy control)."""
    calibration = np.concatenate(
        [b.crops for b in candidate_crops(0, boards, model) if len(b.crops)]
    )
    held_out = [b for b in candidate_crops(1, boards, model) if len(b.crops)]
    validation = (
        np.concatenate([b.crops for b in held_out]),
        np.concatenate([label_candidates(b.boxes, b.truths) for b in held_out]),
    )
    return calibration, validation


def quantize_copy(copy: Path, samples: Int8Samples, fast_bias_correction: bool = False) -> None:
    """Quantize the model folder ``copy`` with NNCF on :func:`int8_samples`; each network of
    a model of views on its own view of the crops."""
    from inspection.model.views import view_dirs
    from training.quantize import quantize_int8

    calibration, validation = samples
    # NNCF draws progress bars on stdout: keep `linecheck bench --json`'s stdout JSON only
    with contextlib.redirect_stdout(sys.stderr):
        folders = view_dirs(copy)
        views = zip(split_views(calibration, len(folders)),
                    split_views(validation[0], len(folders)), strict=True)  # fmt: skip
        for folder, (calibrate, control) in zip(folders, views, strict=True):
            quantize_int8(
                folder,
                calibrate,
                validation=(control, validation[1]),
                fast_bias_correction=fast_bias_correction,
            )


def compare(
    model_dir: Path,
    work_dir: Path,
    boards: list[BoardCrops],
    batch: int,
    int8_boards: int = INT8_BOARDS,
) -> dict[str, float]:
    """Classify-stage ms per board for each runtime with ``batch`` boards' crops per call (as
    the workers are configured), their ratios, INT8's F-score, and other call sizes.
    ``int8_boards``: see :func:`ensure_int8`."""
    fp32 = load_classifier(model_dir, backend="openvino", threads=1)
    torch_eager = load_classifier(model_dir, backend="torch", threads=1)
    int8 = load_classifier(
        ensure_int8(model_dir, work_dir, fp32, int8_boards),
        backend="openvino",
        threads=1,
        variant="int8",
    )
    ms = interleaved_ms(
        {
            "openvino_fp32": (fp32, calls_of(boards, batch)),
            "torch_eager": (torch_eager, calls_of(boards, batch)),
            "openvino_int8": (int8, calls_of(boards, batch)),
            "openvino_fp32_per_board": (fp32, calls_of(boards)),
            "openvino_fp32_16_boards": (fp32, calls_of(boards, 16)),
            "openvino_fp32_per_crop": (fp32, calls_of(boards, per_crop=True)),
        },
        len(boards),
    )
    f32, f8 = f_score(fp32, boards), f_score(int8, boards)
    return {
        "classify_ms_openvino": ms["openvino_fp32"],
        "classify_ms_torch": ms["torch_eager"],
        "classify_ms_int8": ms["openvino_int8"],
        "classify_ms_per_crop_calls": ms["openvino_fp32_per_crop"],
        "classify_ms_per_board_calls": ms["openvino_fp32_per_board"],
        "openvino_over_torch": ms["torch_eager"] / ms["openvino_fp32"],
        "classify_ms_16_board_calls": ms["openvino_fp32_16_boards"],
        "int8_over_fp32": ms["openvino_fp32"] / ms["openvino_int8"],
        "fp32_f_score": f32,
        "int8_f_score": f8,
        "int8_f_score_delta": f8 - f32,
        "classify_batched_over_per_crop": ms["openvino_fp32_per_crop"] / ms["openvino_fp32"],
        "classify_batched_over_per_board": ms["openvino_fp32_per_board"]
        / ms["openvino_fp32_16_boards"],
    }
