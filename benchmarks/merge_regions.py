"""Re-score saved DeepPCB detections with the pieces of one defect merged.

A large defect (a long open, a hairy spur) can come out of the ROI stage as two candidates
more than ``RoiParams.merge_px`` apart; when the classifier gives both the same type, the
detection protocol (IoU > 0.33, one match per truth) counts one true and one false
positive. This reads the ``detections/`` folders that ``linecheck evaluate`` or
``linecheck train --cv groups`` wrote, merges same-type detections whose boxes share at
least a fraction F of the smaller box (:func:`inspection.verdict.split_groups`) and prints
F-score and mAP per folder for each F (``off``: as written):

    python benchmarks/merge_regions.py out/cv-small/group* --overlaps off,0.1,0.2,0.3

Detections written since merging exists are already merged at the default overlap.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from board_data.deeppcb import read_detections
from inspection.verdict import split_groups, union_box
from training.detection_metrics import Detection, ImageResult, detection_metrics
from training.splits import samples_of


def merged(dets: list[Detection], overlap: float | None) -> list[Detection]:
    groups = split_groups([d[0] for d in dets], [d[2] for d in dets], overlap)
    return [
        (union_box([dets[i][0] for i in g]), max(dets[i][1] for i in g), dets[g[0]][2])
        for g in groups
    ]


def rows_of(per: dict[float | None, tuple[float, float]]) -> list[tuple[str, tuple[float, float]]]:
    return [("off" if k is None else str(k), v) for k, v in per.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="folders holding detections/")
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/deeppcb"))
    ap.add_argument("--overlaps", default="off,0.1,0.2,0.3", help="comma-separated; off = none")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"no DeepPCB folder {args.data} (--data)")
    truths = {s.image_id: s.truths for s in samples_of(args.data)}
    overlaps = [None if g == "off" else float(g) for g in args.overlaps.split(",")]
    rows: dict[str, dict[float | None, tuple[float, float]]] = {}
    for folder in args.folders:
        files = sorted((folder / "detections").glob("*.txt"))
        if not files:
            raise SystemExit(f"no detections/*.txt in {folder}")
        per_overlap: dict[float | None, tuple[float, float]] = {}
        for overlap in overlaps:
            m = detection_metrics(
                [ImageResult(merged(read_detections(f), overlap), truths[f.stem]) for f in files]
            )
            per_overlap[overlap] = (float(m["f_score"]), float(m["map"]))  # type: ignore[arg-type]
        rows[folder.name] = per_overlap
        shown = {
            g: {"f_score": round(f, 4), "map": round(a, 4)} for g, (f, a) in rows_of(per_overlap)
        }
        print(folder.name, json.dumps(shown), flush=True)
    for overlap in overlaps:
        f = [r[overlap][0] for r in rows.values()]
        a = [r[overlap][1] for r in rows.values()]
        print(
            f"overlap {overlap or 'off'}: mean F {sum(f) / len(f):.4f} (min {min(f):.4f}), "
            f"mean mAP {sum(a) / len(a):.4f} (min {min(a):.4f})"
        )


if __name__ == "__main__":
    main()
