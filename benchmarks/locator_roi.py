"""ROI recall side by side on DeepPCB board groups a locator model never saw: the learned
locator (no template), the recipe (no template) and the reference ROI (with templates).

    python benchmarks/locator_roi.py --model DIR [--data ../shared/datasets/deeppcb]
                                     [--groups group13000,group92000] [--threads 1]
                                     [--thresholds 0.15,0.25]

Default groups: the model card's validation groups (held out of its training).
``--thresholds``: the locator's boxes at these map thresholds too (the same maps; its own
threshold is in ``locator.json``). Prints one
JSON object (per method: recall at IoU > 0.33, type-blind as
`training.detection_metrics.roi_recall`, candidates per board mean and max, ms per board)
and a Markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from inspection.locator import Locator, regions_from_outputs  # noqa: E402
from inspection.model.registry import load_card  # noqa: E402
from inspection.roi import find_regions_aligned, find_regions_recipe  # noqa: E402
from schemas.events import Box  # noqa: E402
from training.detection_metrics import roi_recall  # noqa: E402
from training.splits import model_val_groups, samples_of  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "deeppcb"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a locator-mode model folder")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--groups", default="", help="comma-separated (default: the card's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--thresholds", default="", help="locator map thresholds to try too")
    args = ap.parse_args()
    cv2.setNumThreads(args.threads)
    groups = [g for g in args.groups.split(",") if g] or model_val_groups(load_card(args.model))
    samples = [s for s in samples_of(args.data) if s.group in groups]
    locator = Locator(args.model, threads=args.threads)
    methods: dict[str, Callable[[np.ndarray, np.ndarray], list[Box]]] = {
        "locator (no template)": lambda image, template: locator.find_regions(image),
        "recipe (no template)": lambda image, template: find_regions_recipe(image),
        "reference (template)": lambda image, template: find_regions_aligned(image, template)[0],
    }
    levels = {
        f"locator at {t} (no template)": replace(locator.params, threshold=float(t))
        for t in args.thresholds.split(",")
        if t.strip()
    }
    found: dict[str, list[list[Box]]] = {m: [] for m in [*methods, *levels]}
    seconds = dict.fromkeys(found, 0.0)
    for s in samples:
        image, template = s.load()
        for name, method in methods.items():
            t0 = time.perf_counter()
            found[name].append(method(image, template))
            seconds[name] += time.perf_counter() - t0
        maps = locator.maps(image) if levels else np.zeros(0)
        for name, params in levels.items():
            t0 = time.perf_counter()  # the boxes from the maps only: the network ran once
            found[name].append(regions_from_outputs(maps, image.shape[:2], params))
            seconds[name] += time.perf_counter() - t0
    truths = [s.truths for s in samples]
    report: dict[str, Any] = {"model": args.model.name, "groups": groups, "boards": len(samples)}
    for name in found:
        row: dict[str, Any] = {
            "recall": roi_recall(found[name], truths),
            "candidates_per_board": float(np.mean([len(b) for b in found[name]])),
            "max_candidates": max(len(b) for b in found[name]),
            "ms_per_board": 1000 * seconds[name] / len(samples),
        }
        for g in groups:
            idx = [i for i, s in enumerate(samples) if s.group == g]
            row[g] = {
                "recall": roi_recall([found[name][i] for i in idx], [truths[i] for i in idx]),
                "candidates_per_board": float(np.mean([len(found[name][i]) for i in idx])),
            }
        report[name] = row
    print(json.dumps(report, indent=2))
    lines = ["| ROI | recall (IoU > 0.33) | candidates / board (max) | ms / board |"]
    lines.append("|---|---|---|---|")
    for name in found:
        r = report[name]
        lines.append(
            f"| {name} | {100 * r['recall']:.2f} % | {r['candidates_per_board']:.2f} "
            f"({r['max_candidates']}) | {r['ms_per_board']:.1f} |"
        )
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
