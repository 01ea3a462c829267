"""The cost of template-free crops on DeepPCB boards: the median reference
(``make_crops(board, None, …)``, the default) against each square's best copy on the board
(:func:`inspection.self_reference.copy_crops`, ``--crop-reference copy``), on the truth boxes
of the first boards of a group, one thread.

    python benchmarks/copy_crops.py [--data ../shared/datasets/deeppcb] [--group group13000]
        [--boards 50] [--runs 3]

Prints one JSON object: crops, ms per crop for each reference (best of ``--runs``), and the
share of the copy's time spent in ``cv2.matchTemplate`` (cProfile of one pass).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from board_data.deeppcb import iter_samples, read_gray  # noqa: E402
from inspection.crops import make_crops  # noqa: E402
from inspection.self_reference import copy_crops  # noqa: E402
from schemas.events import Box  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "deeppcb"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--group", default="group13000")
    ap.add_argument("--boards", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no DeepPCB data at {args.data}")
    cv2.setNumThreads(1)
    samples = [s for s in iter_samples(args.data) if s.group == args.group][: args.boards]
    if not samples:
        sys.exit(f"no boards of {args.group} in {args.data}")
    boards = [(read_gray(s.test_path), [t.box for t in s.truths]) for s in samples]
    crops = sum(len(b) for _, b in boards)

    def best_ms(cut: Callable[[np.ndarray, list[Box]], object]) -> float:
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            for image, boxes in boards:
                cut(image, boxes)
            times.append(time.perf_counter() - t)
        return 1e3 * min(times) / crops

    median_ms = best_ms(lambda im, b: make_crops(im, None, b, 64))
    copy_ms = best_ms(lambda im, b: copy_crops(im, b, 64))
    prof = cProfile.Profile()
    prof.enable()
    for image, boxes in boards:
        copy_crops(image, boxes, 64)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]  # typeshed lacks it
    total = sum(v[2] for v in stats.values())
    match = sum(v[2] for k, v in stats.items() if "matchTemplate" in str(k[2]))
    print(json.dumps({
        "group": args.group, "boards": len(boards), "crops": crops,
        "median_ms_per_crop": round(median_ms, 3), "copy_ms_per_crop": round(copy_ms, 3),
        "copy_match_template_share": round(match / total, 3) if total else None,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
