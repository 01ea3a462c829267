"""Would a cheap variance reduction or another decision rule lift a weak CV fold?

For each fold G: train the recipe's model (SmallCNN + topology prior, the cross-validation's
nested split: the inner group, the next one after G, chooses the epoch) once per seed, then
score G's pairs — and the inner group's, which is what would choose among the variants —
through the serving path (ROI → crops → classifier, pieces merged) with:

- ``s<seed>``: each seed's model alone (the recipe);
- ``s<seed>+flip4`` / ``+d8``: test-time augmentation, the mean probabilities over the 4
  flips or the 8 dihedral transforms of each crop (the training augmentation's group);
- ``ensemble`` / ``ensemble+flip4``: the mean probabilities of every seed's model;
- ``none<τ>``: the first seed's model with another decision rule: a region is a defect when
  P(none) < τ, instead of when its most likely defect type beats "none";
- with ``--min-sides A,B`` (crop geometries, ``ModelCard.crop_min_side``; the first is the
  one the other variants use): ``s<seed>@<B>``, the first seed's model trained and served on
  crops cut from at least B px, and ``views``, the mean probabilities of those models, each
  on its own crops of the same candidates.

One JSON line per (fold, scored group, variant) with F-score, mAP and per-class AP:

    python benchmarks/fold_variants.py --folds group44000,group50600 --seeds 0,1 \\
        --out out/fold-variants

A fold's models are kept under ``OUT/<fold>/models-<seed>`` (``models-<seed>-m<side>`` for a
crop geometry other than the recipe's) and reused by a rerun.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from inspection.backends import Classifier, load_classifier
from training.cross_validation import inner_group, split_file
from training.detection_metrics import Detection, ImageResult, detection_metrics
from training.scoring import PairResult, detections_of, score_pairs
from training.splits import samples_of

FLIPS4 = (0, 1, 2, 3)
DIHEDRAL8 = tuple(range(8))


def transformed(crops: np.ndarray, code: int) -> np.ndarray:
    """One dihedral transform of (N, C, S, S) crops: bit 0 flips x, bit 1 flips y, bit 2
    transposes."""
    out = crops
    if code & 1:
        out = out[:, :, :, ::-1]
    if code & 2:
        out = out[:, :, ::-1, :]
    if code & 4:
        out = out.transpose(0, 1, 3, 2)
    return np.ascontiguousarray(out)


class Averaged:
    """The mean probabilities of ``members`` over the dihedral transforms ``codes``."""

    def __init__(self, members: Sequence[Classifier], codes: Sequence[int] = (0,)) -> None:
        self.members, self.codes = list(members), tuple(codes)
        self.input_size = members[0].input_size
        self.crop_min_side = members[0].crop_min_side
        self.version = "+".join(m.version for m in self.members) + f" x{len(self.codes)}"

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        probs = [m.predict_proba(transformed(crops, c)) for m in self.members for c in self.codes]
        return np.asarray(np.mean(probs, axis=0), np.float32)


def detections_below(r: PairResult, tau: float) -> list[Detection]:
    """A pair's detections when a region is a defect as soon as P(none) < ``tau``."""
    probs = r.probs.copy()
    defect = probs[:, 0] < tau
    # P(none) pinned to 0 or 1 so that the worker's rule (best type vs "none") says what τ
    # says; the types' probabilities, and so the confidences, stay as they were
    probs[:, 0] = np.where(defect, 0.0, 1.0)
    return detections_of(r.boxes, probs)


def row(
    fold: str,
    group: str,
    variant: str,
    results: Sequence[PairResult],
    detections: Callable[[PairResult], list[Detection]] = PairResult.detections,
) -> dict[str, Any]:
    m = detection_metrics([ImageResult(detections(r), r.sample.truths) for r in results])
    per_class: dict[str, dict[str, float]] = m["per_class"]  # type: ignore[assignment]
    return {
        "fold": fold,
        "scored": group,
        "variant": variant,
        "f_score": round(float(m["f_score"]), 4),  # type: ignore[arg-type]
        "map": round(float(m["map"]), 4),  # type: ignore[arg-type]
        "ap": {c: round(float(v["ap"]), 3) for c, v in per_class.items()},
    }


def fold_models(
    data: Path,
    fold: str,
    every: list[str],
    seeds: Sequence[int],
    out: Path,
    console: Console,
    min_side: int = 0,
) -> list[Path]:
    """Each seed's model of the fold: trained as the cross-validation trains it (crops cut
    from at least ``min_side`` px), or reused. ``every``: the data's board groups, sorted."""
    from training.deeppcb_model import train_deeppcb

    dirs = []
    for seed in seeds:
        tail = "" if min_side == 0 else f"-m{min_side}"
        models = out / fold / f"models-{seed}{tail}"
        found = sorted(models.glob("*/model.json"))
        if found:
            dirs.append(found[0].parent)
            continue
        (out / fold).mkdir(parents=True, exist_ok=True)
        split = split_file(out / fold, data, inner_group(every, fold))
        model = train_deeppcb(
            models, data, split, seed=seed, version=f"{fold}-s{seed}{tail}", int8=False,
            exclude_groups=(fold,), views=(min_side,), console=console,
        )  # fmt: skip
        dirs.append(model)
    return dirs


def mean_views(per_view: Sequence[Sequence[PairResult]]) -> list[PairResult]:
    """Each pair's result with the mean probabilities of several models, each of which cut
    its own crops of the same candidates (the ROI stage is deterministic: same boxes)."""
    out = []
    for results in zip(*per_view, strict=True):
        first = results[0]
        if any(r.boxes != first.boxes or r.good_boxes != first.good_boxes for r in results):
            raise RuntimeError(f"{first.sample.image_id}: the views saw other candidates")
        out.append(
            replace(
                first,
                probs=np.mean([r.probs for r in results], axis=0),
                good_probs=np.mean([r.good_probs for r in results], axis=0),
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/deeppcb"))
    ap.add_argument("--folds", default="group44000,group50600", help="comma-separated groups")
    ap.add_argument("--seeds", default="0,1", help="comma-separated; the first is the recipe's")
    ap.add_argument("--taus", default="0.7,0.9", help="P(none) thresholds of the none<τ rule")
    ap.add_argument(
        "--min-sides",
        default="0",
        help="crop geometries (px), comma-separated; the first is used by the other variants",
    )
    ap.add_argument("--out", type=Path, default=Path("out/fold-variants"))
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"no DeepPCB folder {args.data} (--data)")
    console = Console(stderr=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    taus = [float(t) for t in args.taus.split(",")]
    sides = [int(m) for m in args.min_sides.split(",")]
    samples = samples_of(args.data)  # read once: every fold and group selects from it
    every = sorted({s.group for s in samples})
    for fold in args.folds.split(","):
        if fold not in every:
            raise SystemExit(f"no board group {fold} in {args.data} (groups: {every})")
        dirs = fold_models(args.data, fold, every, seeds, args.out, console, sides[0])
        other_views = {
            side: load_classifier(
                fold_models(args.data, fold, every, seeds[:1], args.out, console, side)[0]
            )
            for side in sides[1:]
        }
        members = [load_classifier(d) for d in dirs]
        variants = {f"s{s}": Averaged([m]) for s, m in zip(seeds, members, strict=True)}
        variants[f"s{seeds[0]}+flip4"] = Averaged(members[:1], FLIPS4)
        variants[f"s{seeds[0]}+d8"] = Averaged(members[:1], DIHEDRAL8)
        if len(members) > 1:
            variants["ensemble"] = Averaged(members)
            variants["ensemble+flip4"] = Averaged(members, FLIPS4)
        for group in (fold, inner_group(every, fold)):
            pairs = [s for s in samples if s.group == group]
            for name, clf in variants.items():
                results = score_pairs(pairs, clf, console)
                lines = [row(fold, group, name, results)]
                if name == f"s{seeds[0]}":  # the other rule and crop views, beside the recipe
                    lines += [
                        row(fold, group, f"none<{t}", results, partial(detections_below, tau=t))
                        for t in taus
                    ]
                    views = [
                        results,
                        *(score_pairs(pairs, v, console) for v in other_views.values()),
                    ]
                    lines += [
                        row(fold, group, f"s{seeds[0]}@{side}", r)
                        for side, r in zip(other_views, views[1:], strict=True)
                    ]
                    if other_views:
                        lines.append(row(fold, group, "views", mean_views(views)))
                for line in lines:
                    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
