"""The learned locator alone (no classifier): train its network as `linecheck train --roi
locator` does, then measure its ROI recall on the held-out board groups — for trying target
and training settings in minutes instead of a whole locator-mode model.

    python benchmarks/locator_trial.py [--data ../shared/datasets/deeppcb]
        [--split FILE | --held-out group20085,group44000]
        [--head centre|region] [--epochs 40] [--box-radius 1] [--shrink 0.2]
        [--crops-per-board 2] [--widths 16,32,64,96] [--thresholds 0.15,0.2]
        [--max-candidates 32] [--seed 0] [--threads 2]

Defaults as `linecheck train --roi locator` trains it. Training groups and held-out groups
as it splits them (held out: 13000 and 92000, the groups of the pairs a `--split` file
lists, or the `--held-out` groups). The held-out boards' maps come from the torch network
(`training.locator_train.torch_locator_maps`, what the served IR computes); regions as served
(`inspection.locator.regions_from_outputs`: for the region head components above the
threshold, grown back by the shrink; for the centre head one box per local maximum; 5 %
margins). Prints one JSON object: the settings, training seconds and last-epoch
losses, and per threshold the recall at IoU > 0.33 (type-blind, as
`training.detection_metrics.roi_recall`), per held-out group too, candidates per board
(mean, max) and the missed boxes by kind (:func:`miss_kinds`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from board_data.deeppcb import read_gray  # noqa: E402
from inspection.locator import (  # noqa: E402
    HEAD_OUTPUTS,
    LocatorParams,
    centre_detections,
    regions_from_outputs,
)
from inspection.model.locator_net import DEFAULT_WIDTHS  # noqa: E402
from schemas.events import Box, DefectType  # noqa: E402
from training.detection_metrics import (  # noqa: E402
    IOU_THRESHOLD,
    ImageResult,
    detection_metrics,
    roi_recall,
)
from training.locator_model import BOX_RADIUS  # noqa: E402
from training.locator_train import torch_locator_maps, train_locator_net  # noqa: E402
from training.splits import samples_of, split_deeppcb  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "deeppcb"


def miss_kinds(found: Sequence[Sequence[Box]], truths: Sequence[Sequence[Box]]) -> dict[str, int]:
    """The truth boxes no candidate matches (IoU <= 0.33), by kind: ``merged`` (a candidate
    covers >= 60 % of it and of another truth of the board: neighbours in one region),
    ``misfit`` (some candidate overlaps it, IoU >= 0.1, but too loosely or only in part),
    ``not_found`` (no candidate with IoU >= 0.1)."""
    kinds = {"merged": 0, "misfit": 0, "not_found": 0}
    for boxes, ts in zip(found, truths, strict=True):
        for t in ts:
            if any(b.iou(t) > IOU_THRESHOLD for b in boxes):
                continue
            merged = any(
                b.intersection(t) >= 0.6 * t.area
                and any(o is not t and b.intersection(o) >= 0.6 * o.area for o in ts)
                for b in boxes
            )
            if merged:
                kinds["merged"] += 1
            elif any(b.iou(t) >= 0.1 for b in boxes):
                kinds["misfit"] += 1
            else:
                kinds["not_found"] += 1
    return kinds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument(
        "--split", type=Path, default=None, help="pairs to hold out (DeepPCB's split format)"
    )
    ap.add_argument("--held-out", default="", help="board groups to hold out, e.g. group20085")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--shrink", type=float, default=LocatorParams().target_shrink)
    ap.add_argument("--crops-per-board", type=int, default=2)
    ap.add_argument("--thresholds", default="0.15,0.2")
    ap.add_argument("--head", choices=sorted(HEAD_OUTPUTS), default=LocatorParams().head)
    ap.add_argument("--box-radius", type=int, default=BOX_RADIUS)
    ap.add_argument(
        "--max-candidates", default="32", help="caps on the boxes a board keeps, e.g. 15,32"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--widths", default="", help="the network's four stage widths, e.g. 32,64,128,192"
    )
    args = ap.parse_args()
    if not args.data.is_dir():
        ap.error(f"no DeepPCB folder at {args.data}")
    if not 0 <= args.shrink < 0.5:
        ap.error(f"--shrink must be in [0, 0.5), got {args.shrink}")
    levels = [float(t) for t in args.thresholds.split(",") if t.strip()]
    widths = tuple(int(w) for w in args.widths.split(",") if w.strip())
    if widths and len(widths) != 4:
        ap.error(f"--widths takes four stage widths, got {args.widths!r}")
    if args.held_out:
        held = {g.strip() for g in args.held_out.split(",") if g.strip()}
        train_s = [s for s in samples_of(args.data) if s.group not in held]
        val_s = [s for s in samples_of(args.data) if s.group in held]
        if not train_s or not val_s:
            ap.error(f"--held-out {args.held_out}: {len(val_s)} held-out, {len(train_s)} left")
    else:
        train_s, val_s = split_deeppcb(samples_of(args.data), args.data, args.split)
    started = time.monotonic()
    net, history = train_locator_net(
        [read_gray(s.test_path) for s in train_s],
        [[t.box for t in s.truths] for s in train_s],
        kinds=[[t.defect_type.deeppcb_id - 1 for t in s.truths] for s in train_s],
        epochs=args.epochs,
        crops_per_board=args.crops_per_board,
        target_shrink=args.shrink,
        widths=widths or DEFAULT_WIDTHS,  # type: ignore[arg-type]
        head=args.head,
        box_radius=args.box_radius,
        seed=args.seed,
        threads=args.threads,
        progress=lambda e, n, row: print(
            f"epoch {e}/{n}: area loss {row['area_loss']:.3f} map loss {row['map_loss']:.3f} "
            f"({row['seconds']:.0f}s)",
            file=sys.stderr,
        ),
    )
    train_seconds = time.monotonic() - started
    images = [read_gray(s.test_path) for s in val_s]
    maps = [torch_locator_maps(net, im) for im in images]
    out: dict[str, object] = {
        "epochs": args.epochs,
        "head": args.head,
        "box_radius": args.box_radius,
        "shrink": args.shrink,
        "widths": list(net.widths),
        "crops_per_board": args.crops_per_board,
        "seed": args.seed,
        "train_boards": len(train_s),
        "held_out_boards": len(val_s),
        "train_seconds": round(train_seconds, 1),
        "last_epoch": history[-1],
    }
    groups = sorted({s.group for s in val_s})
    caps = [int(c) for c in args.max_candidates.split(",") if c.strip()]
    for level, cap in ((level, cap) for level in levels for cap in caps):
        params = LocatorParams(
            threshold=level, target_shrink=args.shrink, head=args.head, max_candidates=cap
        )
        found = [
            regions_from_outputs(m, im.shape[:2], params)
            for m, im in zip(maps, images, strict=True)
        ]
        counts = [len(f) for f in found]
        out[f"threshold_{level}" + (f"_max_{cap}" if len(caps) > 1 else "")] = {
            "recall": roi_recall(found, [s.truths for s in val_s]),
            "by_group": {
                g: roi_recall(
                    [f for f, s in zip(found, val_s, strict=True) if s.group == g],
                    [s.truths for s in val_s if s.group == g],
                )
                for g in groups
            },
            "candidates_per_board": float(np.mean(counts)),
            "max_candidates": int(max(counts)),
            "misses": miss_kinds(found, [[t.box for t in s.truths] for s in val_s]),
        }
        if args.head == "typed":  # the locator alone as a detector: its boxes, types, scores
            types = list(DefectType)
            detections = [
                [(b, p, types[k]) for b, p, k in centre_detections(m, im.shape[:2], params)]
                for m, im in zip(maps, images, strict=True)
            ]
            metrics = detection_metrics(
                [ImageResult(d, s.truths) for d, s in zip(detections, val_s, strict=True)]
            )
            row = out[f"threshold_{level}" + (f"_max_{cap}" if len(caps) > 1 else "")]
            row.update(  # type: ignore[union-attr]
                {f"detector_{k}": metrics[k] for k in ("precision", "recall", "f_score", "map")}
            )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
