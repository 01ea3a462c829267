"""Anomaly mode: PatchCore at several extractor input sizes, alone and with their maps
averaged, on the held-out magnetic-tile images (the split `linecheck train --task anomaly`
uses: seed 0, calibration and test parts never in the memory bank).

    python benchmarks/anomaly_scales.py [--data ../shared/datasets/magnetic-tile]
        [--sizes 48,64,96,128,160,224] [--bank 2000] [--top 12]

Per size: Lite0 blocks 4+10 patch features (torch, the extractor the trainer exports), a
greedy k-center coreset of `--bank` good training patches, nearest-neighbour distances
resized to a 64×64 grid and blurred (σ 1 cell). Each size's maps are put on a common scale
by the calibration *good* images only (median → 0, 99th percentile of their maxima → 1);
combinations average those maps and score an image by the averaged map's maximum. Combos
are ranked by calibration image AUROC (chosen without the test part); prints one JSON
object with the calibration and test AUROC of each single size and the `--top` combos.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from board_data.class_folders import class_images, split_anomaly_set  # noqa: E402
from inspection.anomaly import model_input, nearest_distances  # noqa: E402
from training.anomaly_evaluation import auroc  # noqa: E402
from training.anomaly_model import greedy_coreset, patch_feature_net  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "magnetic-tile"
GRID = 64
PARTS = ("calibration", "test")


def size_maps(
    images: dict[str, list[np.ndarray]], size: int, bank_size: int
) -> dict[str, np.ndarray]:
    """(N, GRID, GRID) raw maps of the calibration and test images at one input size."""
    import torch

    net = patch_feature_net()

    def features(image: np.ndarray) -> torch.Tensor:
        return net(torch.from_numpy(model_input(image, 1.0, size)))[0]

    with torch.no_grad():
        train = torch.cat([f.reshape(f.shape[0], -1).T for f in map(features, images["train"])])
        bank = train[torch.from_numpy(greedy_coreset(train, bank_size))].numpy()
        bank_sq = (bank * bank).sum(1)
        out = {}
        for part in PARTS:
            maps = []
            for image in images[part]:
                f = features(image)
                c, h, w = f.shape
                d = nearest_distances(f.reshape(c, -1).T.numpy(), bank, bank_sq).reshape(h, w)
                grid = cv2.resize(d, (GRID, GRID), interpolation=cv2.INTER_LINEAR)
                maps.append(cv2.GaussianBlur(grid, (0, 0), 1.0))
            out[part] = np.stack(maps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--sizes", default="48,64,96,128,160,224")
    ap.add_argument("--bank", type=int, default=2000, help="memory-bank patches per size")
    ap.add_argument("--top", type=int, default=12, help="combinations to print")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    started = time.monotonic()
    parts = split_anomaly_set(class_images(args.data), "MT_Free", seed=0)
    images = {k: [i.load() for i in v] for k, v in parts.items()}
    labels = {k: np.array([i.cls != "MT_Free" for i in v]) for k, v in parts.items()}
    sizes = [int(s) for s in args.sizes.split(",")]
    scaled: dict[int, dict[str, np.ndarray]] = {}
    single = {}
    for size in sizes:
        raw = size_maps(images, size, args.bank)
        good = raw["calibration"][~labels["calibration"]]
        lo = float(np.median(good))
        hi = float(np.quantile(good.reshape(len(good), -1).max(1), 0.99))
        scaled[size] = {p: (raw[p] - lo) / (hi - lo) for p in PARTS}
        single[size] = {p: auroc(raw[p].reshape(len(raw[p]), -1).max(1), labels[p]) for p in PARTS}
        print(f"{size}²: calibration {single[size]['calibration']:.3f} test "
              f"{single[size]['test']:.3f}", file=sys.stderr, flush=True)  # fmt: skip
    combos = []
    for r in range(2, min(4, len(sizes)) + 1):
        for combo in itertools.combinations(sizes, r):
            score = {
                p: (sum(scaled[s][p] for s in combo) / r).reshape(len(labels[p]), -1).max(1)
                for p in PARTS
            }
            combos.append({"sizes": list(combo), **{p: auroc(score[p], labels[p]) for p in PARTS}})
    combos.sort(key=lambda c: -c["calibration"])
    report = {
        "data": str(args.data),
        "bank": args.bank,
        "split": {k: len(v) for k, v in parts.items()},
        "single": {str(s): v for s, v in single.items()},
        "combined_by_calibration": combos[: args.top],
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
