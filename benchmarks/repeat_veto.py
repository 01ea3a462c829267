"""The repeat veto (:mod:`inspection.self_reference`) on a locator's candidates, without a
classifier: how many of the candidates that are no defect, and how many of those that are,
it would call "none", on DeepPCB board groups the locator never saw.

    python benchmarks/repeat_veto.py --locator DIR --groups group20085,group44000
                                     [--data ../shared/datasets/deeppcb] [--px 1,4,10]

``DIR``: a folder with ``locator.xml`` + ``locator.json`` (a locator-mode model, or a fold
locator kept from training). A candidate is a defect's when it overlaps a truth at
IoU > 0.33 (any type), false when it overlaps none at all. Serving vetoes only regions the
classifier calls defects, so these are the veto's own odds on each kind. Prints one JSON
object and a Markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from board_data.deeppcb import read_gray  # noqa: E402
from inspection.locator import Locator  # noqa: E402
from inspection.self_reference import coarse_board, unexplained_area  # noqa: E402
from training.splits import samples_of  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "deeppcb"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--locator", type=Path, required=True)
    ap.add_argument("--groups", required=True, help="comma-separated board groups")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--px", default="1,4,10", help="repeat_px values to count at")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    groups = [g for g in args.groups.split(",") if g]
    levels = [int(v) for v in args.px.split(",")]
    locator = Locator(args.locator, threads=1)
    areas: dict[str, dict[str, list[int]]] = {g: {"defect": [], "false": []} for g in groups}
    seconds, regions = 0.0, 0
    for s in (s for s in samples_of(args.data) if s.group in groups):
        image = read_gray(s.test_path)
        small = coarse_board(image)
        for box in locator.find_regions(image):
            overlaps = [box.iou(t.box) for t in s.truths]
            kind = "defect" if max(overlaps, default=0) > 0.33 else None
            kind = kind or ("false" if max(overlaps, default=0) == 0 else None)
            if kind is not None:
                t1 = time.perf_counter()
                areas[s.group][kind].append(unexplained_area(image, box, small))
                seconds += time.perf_counter() - t1
                regions += 1
    report: dict[str, Any] = {"locator": str(args.locator), "groups": groups,
                              "ms_per_region": 1000 * seconds / max(regions, 1)}  # fmt: skip
    lines = ["| group | repeat_px | false candidates vetoed | defects' candidates vetoed |",
             "|---|---|---|---|"]  # fmt: skip
    for g in [*groups, "all"]:
        kinds = areas[g] if g != "all" else {
            k: [a for grp in groups for a in areas[grp][k]] for k in ("defect", "false")
        }  # fmt: skip
        row: dict[str, Any] = {f"{k}_candidates": len(v) for k, v in kinds.items()}
        for px in levels:
            shares = {k: float(np.mean(np.asarray(v) < px)) if v else None
                      for k, v in kinds.items()}  # fmt: skip
            row[f"vetoed_at_{px}"] = shares
            lines.append(
                f"| {g} | {px} | {_pct(shares['false'])} of {len(kinds['false'])} | "
                f"{_pct(shares['defect'])} of {len(kinds['defect'])} |"
            )
        report[g] = row
    print(json.dumps(report, indent=2))
    print("\n".join(lines), file=sys.stderr)


def _pct(share: float | None) -> str:
    return "—" if share is None else f"{100 * share:.1f} %"


if __name__ == "__main__":
    main()
