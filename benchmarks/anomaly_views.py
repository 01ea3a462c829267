"""Anomaly mode: PatchCore through several *views* of each image (input size, aspect kept or
squeezed, grey levels standardised or not), alone and combined, on the held-out
magnetic-tile images (the split `linecheck train --task anomaly` uses: seed 0; calibration
and test parts never in a memory bank).

    python benchmarks/anomaly_views.py [--data ../shared/datasets/magnetic-tile]
        [--views 48,64,96,128,192,256,64a,96a,128a,192a,64as,96as] [--bank 4000] [--top 10]
        [--scores max,top0.5] [--bank-flips] [--backbone lite2 --layers 6,14] [--patch-pool 5]
        [--own-radius 2] [--disc-sigma 0.5 --disc-epochs 20] [--flat-sigma 0.125]
        [--combine mean,max,vmean]

A view is written SIZE[a][s][g|x|u|d][p][f]: SIZE² square; ``a`` keeps the aspect ratio at SIZE²
of area; ``s`` standardises the grey levels (:class:`inspection.anomaly.AnomalyView`); ``g``
scores a patch by its Mahalanobis distance to one Gaussian of every good training patch of the view
(PaDiM's statistics, pooled over positions) instead of its nearest memory-bank patch; each
``p`` mirrors the view's input out by 16 px on each side before the extractor (its features
then cut back to the image), so that the image's edge is not seen against zero padding; ``x``
scores a patch by its distance to the nearest patch of the same image outside the
(2 ``--own-radius`` + 1)² cells around it, ``u`` by the nearer of that and the memory bank;
``d`` by SimpleNet's discriminator (a linear adaptor and an MLP trained to tell the view's
good training patches from the same plus Gaussian noise of ``--disc-sigma`` channel sds, for
``--disc-epochs``) instead of the bank; ``f`` takes the tile's slow shading out of the view's
input (minus its Gaussian blur of sd ``--flat-sigma`` × the longer side, plus the blur's
mean: a flat field). ``BENCH_THREADS`` sets torch's threads (2). Per view:
Lite0 blocks 4+10 patch features (torch, the extractor the trainer exports), a greedy
k-center coreset of at most ``--bank`` good training patches (a quarter of them when fewer),
nearest-neighbour distances resized to a quarter of the image and blurred (σ 1 = 4 image px).
Each view's maps are put on a common scale by the calibration *good* images only (median → 0,
99th percentile of their maxima → 1); a combination takes the pixel-wise mean or maximum of
its views' maps and scores an image by the combined map's maximum (``--combine vmean``:
by the mean of the views' own maxima, the map their mean). Combinations of up to
four views are ranked by calibration image AUROC (chosen without the test part); prints one
JSON object with each view's and the `--top` combinations' calibration and test image AUROC
and test pixel AUROC (quarter-resolution masks). ``--scores``: the image scores compared
(``max``, the map's maximum, ranks the combinations; ``topQ``: the mean of the map's highest
Q % of pixels), each reported as ``calibration_<score>`` / ``test_<score>``.
``--bank-flips``: the memory banks also hold the patches of each training image mirrored
left-right, upside down and both (more of the good surface's variation; the pooled patches
are then subsampled at random to ``--pool`` before the coreset, as the trainer caps them).
``--backbone``/``--layers``: the patch features from another EfficientNet-Lite (lite1, lite2:
deeper and, lite2, wider; the same stages end at blocks 6 and 14 there). ``--patch-pool``: the
neighbourhood each feature is averaged over (3: the trainer's).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from board_data.class_folders import ClassImage, class_images, split_anomaly_set  # noqa: E402
from inspection.anomaly import AnomalyView, model_input, nearest_distances  # noqa: E402
from training.anomaly_evaluation import auroc  # noqa: E402
from training.anomaly_model import greedy_coreset, patch_feature_net  # noqa: E402

if TYPE_CHECKING:
    import torch

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "magnetic-tile"
DEFAULT_VIEWS = "48,64,96,128,192,256,64a,96a,128a,192a,64as,96as"
PARTS = ("calibration", "test")


def view_maps(
    images: dict[str, list[np.ndarray]],
    view: AnomalyView,
    bank_size: int,
    flips: bool = False,
    pool: int = 100_000,
    backbone: tuple[str, tuple[int, ...], int] = ("lite0", (4, 10), 3),
    gauss: bool = False,
    pad: int = 0,
    own: str = "",
    own_radius: int = 2,
    disc: tuple[float, int] | None = None,
    flat: float = 0.0,
) -> dict[str, list[np.ndarray]]:
    """Raw maps (a quarter of each image's size) of the calibration and test images; with
    ``gauss`` each patch's Mahalanobis distance to one Gaussian of all good training patches
    instead of its nearest memory-bank patch; ``pad``: the model input mirrored out by that
    many pixels on each side (a multiple of 16) and the features cut back to the image;
    ``flat``: the input's shading (a Gaussian blur of sd ``flat`` × its longer side) taken
    out, its mean kept."""
    import torch

    variant, layers, pool = backbone
    net = patch_feature_net(layers, variant, pool)

    def features(image: np.ndarray) -> torch.Tensor:
        x = model_input(image, view)
        if flat:  # flat-field: the tile's slow shading out, its texture and defects kept
            shade = cv2.GaussianBlur(x[0, 0], (0, 0), flat * max(x.shape[2:]))
            x = np.clip(x - shade + shade.mean(), 0, 255).astype(np.float32)
        if pad:  # mirrored margins, cut off the features again: no zero padding at the edge
            x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
            f = net(torch.from_numpy(x))[0]
            k = pad // 8  # the features' stride
            return f[:, k:-k, k:-k]
        return net(torch.from_numpy(x))[0]

    with torch.no_grad():
        good = images["train"]
        if flips:
            good = [g for im in good for g in (im, im[:, ::-1], im[::-1], im[::-1, ::-1])]
        train = torch.cat(
            [f.reshape(f.shape[0], -1).T for f in (features(np.ascontiguousarray(g)) for g in good)]
        )
        # a quarter of the unmirrored patches, with or without the mirrored copies
        n = min(bank_size, len(train) // (16 if flips else 4))
        if flips and len(train) > pool:
            rng = torch.Generator().manual_seed(0)
            train = train[torch.randperm(len(train), generator=rng)[:pool]]
        if own == "x":
            pass  # the tile is its own reference: no bank, no model of the good patches
        elif disc is not None:
            critic = train_discriminator(train, *disc)
        elif gauss:  # every good patch's features as one Gaussian: Mahalanobis distance
            x = train.numpy().astype(np.float64)
            mean = x.mean(0)
            cov = np.cov(x, rowvar=False) + 0.01 * np.eye(x.shape[1])
            precision = np.linalg.inv(cov).astype(np.float32)
        else:
            bank = train[torch.from_numpy(greedy_coreset(train, n))].numpy()
            bank_sq = (bank * bank).sum(1)
        out: dict[str, list[np.ndarray]] = {}
        for part in PARTS:
            maps = []
            for image in images[part]:
                f = features(image)
                c, h, w = f.shape
                q = f.reshape(c, -1).T.numpy()
                if own == "x":
                    d = own_distances(q, h, w, own_radius)
                elif disc is not None:
                    d = critic(q).reshape(h, w)
                elif gauss:
                    z = q - mean.astype(np.float32)
                    d = np.sqrt(np.maximum(((z @ precision) * z).sum(1), 0.0)).reshape(h, w)
                else:
                    d = nearest_distances(q, bank, bank_sq).reshape(h, w)
                if own == "u":  # good texture found elsewhere in the same tile is normal
                    d = np.minimum(d, own_distances(q, h, w, own_radius))
                small = cv2.resize(d, (image.shape[1] // 4, image.shape[0] // 4))
                maps.append(cv2.GaussianBlur(small, (0, 0), 1.0))
            out[part] = maps
    return out


def train_discriminator(
    train: torch.Tensor, sigma: float, epochs: int, seed: int = 0
) -> Callable[[np.ndarray], np.ndarray]:
    """SimpleNet's scorer on the view's good training patches: a linear feature adaptor and
    an MLP discriminator trained to tell adapted good patches from the same plus Gaussian
    noise (``sigma`` in units of each channel's sd), with its truncated L1 loss; returns the
    anomaly score of (P, C) patches (minus the discriminator's output)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    mu, sd = train.mean(0), train.std(0) + 1e-6
    x = (train - mu) / sd
    c = x.shape[1]
    adaptor = nn.Linear(c, c)
    critic = nn.Sequential(
        nn.Linear(c, 256), nn.BatchNorm1d(256), nn.LeakyReLU(0.2), nn.Linear(256, 1)
    )
    opt = torch.optim.Adam(
        [{"params": adaptor.parameters(), "lr": 1e-4}, {"params": critic.parameters(), "lr": 2e-4}]
    )
    with torch.enable_grad():
        for _ in range(epochs):
            for idx in torch.randperm(len(x)).split(512):
                a = adaptor(x[idx])
                fake = a + sigma * torch.randn_like(a)
                loss = (
                    torch.clamp(0.5 - critic(a), min=0).mean()
                    + torch.clamp(0.5 + critic(fake), min=0).mean()
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
    adaptor.eval()
    critic.eval()

    def score(q: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            z = (torch.from_numpy(np.ascontiguousarray(q)) - mu) / sd
            return (-critic(adaptor(z))[:, 0]).numpy()

    return score


def own_distances(q: np.ndarray, h: int, w: int, radius: int) -> np.ndarray:
    """Each patch's distance to the nearest patch of the *same* image outside the
    (2 radius + 1)² cells around it: a defect is unique in its tile, texture repeats."""
    sq = (q * q).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (q @ q.T), 0.0)
    yy, xx = np.divmod(np.arange(h * w), w)
    near = (np.abs(yy[:, None] - yy[None, :]) <= radius) & (
        np.abs(xx[:, None] - xx[None, :]) <= radius
    )
    d2[near] = np.inf
    return np.sqrt(d2.min(1)).reshape(h, w)


def image_score(amap: np.ndarray, how: str) -> float:
    """``max``: the map's maximum; ``topQ``: the mean of its highest Q % of pixels."""
    if how == "max":
        return float(amap.max())
    if not how.startswith("top"):
        raise SystemExit(f"unknown image score {how!r}: use max or topQ (e.g. top0.5)")
    flat = amap.ravel()
    k = max(1, round(flat.size * float(how[3:]) / 100))
    return float(np.partition(flat, flat.size - k)[flat.size - k :].mean())


def quarter_mask(item: ClassImage, image: np.ndarray) -> np.ndarray:
    """The item's defect mask at a quarter of the image's size, flattened (all False without)."""
    mask = item.load_mask(image.shape)
    if mask is None:
        mask = np.zeros(image.shape, bool)
    small = cv2.resize(
        mask.astype(np.uint8), (image.shape[1] // 4, image.shape[0] // 4),
        interpolation=cv2.INTER_NEAREST,
    )  # fmt: skip
    return small.ravel() > 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--views", default=DEFAULT_VIEWS)
    ap.add_argument("--bank", type=int, default=4000, help="memory-bank patches per view")
    ap.add_argument("--top", type=int, default=10, help="combinations to print")
    ap.add_argument("--scores", default="max", help="image scores compared: max, topQ")
    ap.add_argument(
        "--combine", default="mean,max", help="combinations ranked: mean, max (of the maps), "
        "vmean (the image score the mean of the views' maxima, the map their mean)"
    )  # fmt: skip
    ap.add_argument("--bank-flips", action="store_true", help="mirrored training images too")
    ap.add_argument("--pool", type=int, default=100_000, help="--bank-flips: patches pooled")
    ap.add_argument("--backbone", default="lite0", choices=("lite0", "lite1", "lite2"))
    ap.add_argument("--layers", default="4,10", help="the backbone's blocks the patches come from")
    ap.add_argument("--patch-pool", type=int, default=3, help="neighbours a patch averages (odd)")
    ap.add_argument(
        "--own-radius",
        type=int,
        default=2,
        help="x/u views: cells around a patch left out of its own image's search",
    )
    ap.add_argument("--disc-sigma", type=float, default=0.5, help="d views: noise, channel sds")
    ap.add_argument("--disc-epochs", type=int, default=20, help="d views: training epochs")
    ap.add_argument(
        "--flat-sigma", type=float, default=0.125, help="f views: shading blur, × longer side"
    )
    args = ap.parse_args()
    backbone = (args.backbone, tuple(int(x) for x in args.layers.split(",")), args.patch_pool)
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    started = time.monotonic()
    split = split_anomaly_set(class_images(args.data), "MT_Free", seed=0)
    parts: dict[str, list[ClassImage]] = {str(k): v for k, v in split.items()}
    images = {k: [i.load() for i in v] for k, v in parts.items()}
    labels = {k: np.array([i.cls != "MT_Free" for i in v]) for k, v in parts.items()}
    masks = {p: [quarter_mask(i, im) for i, im in zip(parts[p], images[p], strict=True)]
             for p in PARTS}  # fmt: skip
    specs = args.views.split(",")
    scores = args.scores.split(",")
    combines = args.combine.split(",")
    if not set(combines) <= {"mean", "max", "vmean"}:
        raise SystemExit(f"unknown combination in {args.combine!r}: use mean, max, vmean")
    for score in scores:
        image_score(np.zeros((2, 2)), score)  # a bad name fails now, not after the maps
    scaled: dict[str, dict[str, list[np.ndarray]]] = {}
    for spec in specs:
        base = spec.rstrip("gpxudf")
        flags = spec[len(base) :]
        gauss, pad = "g" in flags, 16 * flags.count("p")
        own = "x" if "x" in flags else "u" if "u" in flags else ""
        raw = view_maps(
            images, AnomalyView.parse(base), args.bank, args.bank_flips, args.pool, backbone,
            gauss, pad, own, args.own_radius,
            (args.disc_sigma, args.disc_epochs) if "d" in flags else None,
            args.flat_sigma if "f" in flags else 0.0,
        )  # fmt: skip
        good = [m for m, bad in zip(raw["calibration"], labels["calibration"], strict=True)
                if not bad]  # fmt: skip
        lo = float(np.median(np.concatenate([m.ravel() for m in good])))
        hi = float(np.quantile([m.max() for m in good], 0.99))
        scaled[spec] = {p: [(m - lo) / (hi - lo) for m in raw[p]] for p in PARTS}
        print(f"{spec}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

    def combined(views: tuple[str, ...], how: str, part: str) -> list[np.ndarray]:
        reduce = np.max if how == "max" else np.mean  # vmean's map: the views' mean
        return [
            reduce(np.stack([scaled[v][part][i] for v in views]), axis=0)
            for i in range(len(labels[part]))
        ]

    def image_scores(
        views: tuple[str, ...], how: str, part: str, maps: list[np.ndarray] | None = None
    ) -> np.ndarray:
        """The combined map's maximum (``maps``: the combined maps when already made);
        ``vmean``: the mean of the views' own maxima."""
        if how == "vmean":
            return np.array(
                [np.mean([scaled[v][part][i].max() for v in views])
                 for i in range(len(labels[part]))]
            )  # fmt: skip
        return np.array([m.max() for m in maps or combined(views, how, part)])

    def measure(views: tuple[str, ...], how: str, pixels: bool) -> dict[str, object]:
        row: dict[str, object] = {"views": list(views), "combine": how}
        for part in PARTS:
            maps = combined(views, how, part)
            row[part] = auroc(image_scores(views, how, part, maps), labels[part])
            for score in scores:
                if score != "max":
                    values = np.array([image_score(m, score) for m in maps])
                    row[f"{part}_{score}"] = auroc(values, labels[part])
            if pixels and part == "test":
                row["test_pixel"] = auroc(
                    np.concatenate([m.ravel() for m in maps]), np.concatenate(masks[part])
                )
        return row

    ranked = []
    for r in range(2, min(4, len(specs)) + 1):
        for views in itertools.combinations(specs, r):
            for how in combines:
                ranked.append(
                    (auroc(image_scores(views, how, "calibration"), labels["calibration"]),
                     views, how)
                )  # fmt: skip
    ranked.sort(key=lambda t: -(t[0] or 0.0))
    report = {
        "data": str(args.data),
        "bank": args.bank,
        "bank_flips": args.bank_flips,
        "backbone": {"variant": backbone[0], "layers": list(backbone[1]), "pool": backbone[2]},
        "split": {k: len(v) for k, v in parts.items()},
        "single": [measure((v,), "mean", True) for v in specs],
        "combined_by_calibration": [measure(v, how, True) for _, v, how in ranked[: args.top]],
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
