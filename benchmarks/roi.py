"""Recall and cost of the reference ROI stage (`inspection.roi.find_regions_aligned`).

    python benchmarks/roi.py [--data ../shared/datasets/deeppcb] [--pairs N] [--synthetic N]
                             [--runs 3] [--profile] [--impl path/to/roi.py] [--by-group]

Prints one JSON object: per data set, recall of the ground-truth boxes at IoU > 0.33
(type-blind, as `training.detection_metrics.roi_recall`), candidates per board, and ms per
board on one core (`cv2.setNumThreads(1)`): mean, p50 and p95, each the median over `--runs`
timing runs; with `--profile`, mean ms per step of the stage; with `--by-group`, DeepPCB
recall and candidates per board group (the cross-validation folds). `--impl` measures another copy
of roi.py (e.g. an earlier version saved to /tmp) for before/after figures. DeepPCB is
skipped with `--pairs 0`, the synthetic boards (seed 7, half of them defective) with
`--synthetic 0`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from board_data.deeppcb import iter_samples  # noqa: E402
from board_data.synthetic import BoardGenerator  # noqa: E402
from schemas.events import Box, GroundTruth  # noqa: E402
from training.detection_metrics import roi_recall  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "deeppcb"
STEPS = ("phase_correlation", "ecc", "local_tiles", "refine", "warp", "difference_mask", "boxing")
"""the stage's steps as --profile reports them: global phase correlation (with the
downscaling), ECC, the per-tile shifts and rigid fit, their Lucas–Kanade refinement, the
warp/remap of the template, the difference mask, and merging/boxing"""

Pair = tuple[np.ndarray, np.ndarray, tuple[GroundTruth, ...]]


def load_impl(path: Path | None) -> ModuleType:
    """`inspection.roi`, or the roi.py at `path` loaded under its own name."""
    if path is None:
        import inspection.roi

        return inspection.roi
    spec = importlib.util.spec_from_file_location("roi_under_test", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@contextmanager
def profiling(roi: ModuleType) -> Iterator[dict[str, float]]:
    """Seconds per step while inside, for this repository's roi.py (its step hook) or for
    an earlier one (its functions wrapped: phase correlation = estimate_alignment − ECC,
    warp = align_template − estimate_alignment − _local_residual)."""
    seconds: dict[str, float] = dict.fromkeys(STEPS, 0.0)
    if hasattr(roi, "_align"):
        roi._align.PROFILE = seconds
        try:
            yield seconds
        finally:
            roi._align.PROFILE = None
        return
    names = ["estimate_alignment", "_local_residual", "align_template"]
    names += ["difference_mask", "boxes_from_mask"]
    saved = {name: getattr(roi, name) for name in names}
    saved_cv2 = getattr(roi, "cv2")  # noqa: B009 (a module attribute mypy cannot see)
    spent: dict[str, float] = dict.fromkeys([*names, "ecc"], 0.0)

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0

        return call

    class Cv2WithTimedEcc:
        findTransformECC = staticmethod(timed("ecc", cv2.findTransformECC))

        def __getattr__(self, name: str) -> Any:
            return getattr(cv2, name)

    for name in names:
        setattr(roi, name, timed(name, saved[name]))
    setattr(roi, "cv2", Cv2WithTimedEcc())  # noqa: B010
    try:
        yield seconds
    finally:
        for name, fn in saved.items():
            setattr(roi, name, fn)
        setattr(roi, "cv2", saved_cv2)  # noqa: B010
        seconds["ecc"] = spent["ecc"]
        seconds["phase_correlation"] = spent["estimate_alignment"] - spent["ecc"]
        seconds["local_tiles"] = spent["_local_residual"]
        seconds["warp"] = (
            spent["align_template"] - spent["estimate_alignment"] - spent["_local_residual"]
        )
        seconds["difference_mask"] = spent["difference_mask"]
        seconds["boxing"] = spent["boxes_from_mask"]


def measure(roi: ModuleType, pairs: list[Pair], runs: int, profile: bool) -> dict[str, Any]:
    """Recall, candidates and per-board ms of `roi.find_regions_aligned` over `pairs`."""
    params = roi.RoiParams()
    found: list[list[Box]] = []
    per_board = np.zeros((runs, len(pairs)))
    for r in range(runs):
        for i, (image, template, _) in enumerate(pairs):
            t0 = time.perf_counter()
            boxes, _ = roi.find_regions_aligned(image, template, params)
            per_board[r, i] = time.perf_counter() - t0
            if r == 0:
                found.append(boxes)
    ms = np.median(per_board, axis=0) * 1000  # each board's median over the runs
    truths = [t for _, _, t in pairs]
    defective = [len(f) for f, t in zip(found, truths, strict=True) if t]
    good = [len(f) for f, t in zip(found, truths, strict=True) if not t]
    out: dict[str, Any] = {
        "boards": len(pairs),
        "truths": sum(len(t) for t in truths),
        "recall": round(roi_recall(found, truths), 5),
        "candidates_per_board": round(float(np.mean([len(f) for f in found])), 3),
        "candidates_per_defective_board": round(float(np.mean(defective)), 3)
        if defective
        else None,
        "candidates_per_good_board": round(float(np.mean(good)), 3) if good else None,
        "ms_mean": round(float(np.median(per_board.mean(axis=1)) * 1000), 2),
        "ms_p50": round(float(np.percentile(ms, 50)), 2),
        "ms_p95": round(float(np.percentile(ms, 95)), 2),
    }
    if profile:
        with profiling(roi) as seconds:
            for image, template, _ in pairs:
                roi.find_regions_aligned(image, template, params)
        out["ms_per_step"] = {k: round(v / len(pairs) * 1000, 2) for k, v in seconds.items()}
    return out


def deeppcb_pairs(root: Path, limit: int | None) -> list[Pair]:
    pairs: list[Pair] = []
    for sample in iter_samples(root):
        if limit is not None and len(pairs) >= limit:
            break
        board, template = sample.load()
        pairs.append((board, template, sample.truths))
    return pairs


def by_group(roi: ModuleType, root: Path, limit: int | None) -> dict[str, dict[str, Any]]:
    """Recall and candidates per DeepPCB board group (each group is one board design: the
    folds of `linecheck train --cv groups`)."""
    params = roi.RoiParams()
    found: dict[str, list[list[Box]]] = {}
    truths: dict[str, list[list[GroundTruth]]] = {}
    for n, sample in enumerate(iter_samples(root)):
        if limit is not None and n >= limit:
            break
        board, template = sample.load()
        boxes, _ = roi.find_regions_aligned(board, template, params)
        found.setdefault(sample.group, []).append(boxes)
        truths.setdefault(sample.group, []).append(list(sample.truths))
    return {
        group: {
            "boards": len(found[group]),
            "recall": round(roi_recall(found[group], truths[group]), 5),
            "candidates_per_board": round(float(np.mean([len(f) for f in found[group]])), 3),
        }
        for group in sorted(found)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="DeepPCB's folder")
    parser.add_argument("--pairs", type=int, default=None, help="first N pairs (default all)")
    parser.add_argument("--synthetic", type=int, default=200, help="synthetic boards, seed 7")
    parser.add_argument("--runs", type=int, default=3, help="timing runs; medians are kept")
    parser.add_argument("--profile", action="store_true", help="also ms per step")
    parser.add_argument("--impl", type=Path, default=None, help="another roi.py to measure")
    parser.add_argument(
        "--by-group", action="store_true", help="also DeepPCB recall per board group"
    )
    args = parser.parse_args()
    if args.pairs != 0 and not args.data.is_dir():
        parser.error(
            f"DeepPCB not found at {args.data}: pass --data DIR (see "
            "../shared/datasets/README.md), or --pairs 0 for synthetic boards only"
        )
    cv2.setNumThreads(1)  # one core, as a worker runs
    roi = load_impl(args.impl)
    result: dict[str, Any] = {
        "impl": str(args.impl or "inspection/roi.py"),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]
        if os.path.exists("/proc/loadavg")
        else None,
    }
    if args.pairs != 0:
        result["deeppcb"] = measure(
            roi, deeppcb_pairs(args.data, args.pairs), args.runs, args.profile
        )
    if args.by_group and args.pairs != 0:
        result["deeppcb_by_group"] = by_group(roi, args.data, args.pairs)
    if args.synthetic > 0:
        gen = BoardGenerator(seed=7)
        boards = [gen.board(i) for i in range(args.synthetic)]
        pairs = [(b.image, b.template, b.defects) for b in boards]
        result["synthetic"] = measure(roi, pairs, args.runs, args.profile)
    if os.path.exists("/proc/loadavg"):
        result["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
