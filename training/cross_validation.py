"""``linecheck train --data DIR --cv groups``: leave-one-board-group-out cross-validation.

For each board group G (a board design): train on the other groups but one, the inner
validation group, which alone chooses the epoch and the board thresholds (a nested split);
then measure on G, which nothing in that fold has seen. Reported per fold and as mean ± sd:
F-score, mAP, per-class AP, ROI recall, candidates per board, board FNR/FPR and review rate.
The inner group of fold G is the next group after G in sorted order (deterministic)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console

from inspection.crops import CROP_VIEWS
from training.splits import samples_of

if TYPE_CHECKING:
    from inspection.model.nets import Arch

FOLD_KEYS = (
    "f_score", "map", "precision", "recall", "roi_recall", "candidates_per_board",
    "board_fnr", "board_fpr", "review_rate",
)  # fmt: skip


def split_file(folder: Path, data: Path, group: str) -> Path:
    """A DeepPCB split file listing every pair of ``group``."""
    lines = [
        f"{s.test_path.parent.relative_to(data).as_posix()}/{s.image_id}.jpg "
        f"{s.test_path.parent.relative_to(data).as_posix()}_not/{s.image_id}.txt"
        for s in samples_of(data)
        if s.group == group
    ]
    path = folder / f"{group}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def inner_group(every: list[str], test: str) -> str:
    """The group that chooses the epoch and thresholds of fold ``test``: the next in order."""
    return every[(every.index(test) + 1) % len(every)]


def summarise(folds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample sd over folds of each headline figure and each class's AP (undefined
    figures, e.g. FNR of a fold without defective boards, are left out of the mean)."""
    out: dict[str, Any] = {}
    rows = list(folds.values())
    keys = [*FOLD_KEYS, *(f"ap_{c}" for c in rows[0].get("per_class_ap", {}))] if rows else []
    for key in keys:
        values = [
            r["per_class_ap"].get(key[3:]) if key.startswith("ap_") else r.get(key) for r in rows
        ]
        got = np.asarray([v for v in values if v is not None], float)
        if len(got):
            out[key] = {
                "mean": float(got.mean()),
                "sd": float(got.std(ddof=1)) if len(got) > 1 else 0.0,
                "min": float(got.min()),
            }
    return out


def cross_validate(
    data: Path,
    out: Path,
    *,
    arch: Arch = "small",
    epochs: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    groups: list[str] | None = None,
    topology: bool = True,
    views: tuple[int, ...] = CROP_VIEWS,
    zoom: float | None = None,
    fragment: float | None = None,
    cache_dir: Path | None = Path(".linecheck/cache"),
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the folds (all groups, or ``groups``); write ``out/cv.json`` and each fold's
    ``metrics.json``; return the report. ``topology``: the recipe's topology prior on/off;
    ``views``: the crop geometry of each network of a fold's model; ``zoom``: the training
    crops' random scale, ``fragment`` the share of spur crops broken into specks, ``epochs`` each
    network's (defaults: the recipe's)."""
    from inspection.model.registry import load_card
    from training.deeppcb_model import (
        AUGMENT_FRAGMENT,
        AUGMENT_ZOOM,
        DEEPPCB_EPOCHS,
        train_deeppcb,
    )
    from training.evaluation import evaluate_model

    console = console or Console(stderr=True)
    zoom = AUGMENT_ZOOM if zoom is None else zoom
    fragment = AUGMENT_FRAGMENT if fragment is None else fragment
    epochs = epochs or DEEPPCB_EPOCHS
    every = sorted({s.group for s in samples_of(data)})
    if len(every) < 3:
        raise ValueError(f"cross-validation needs 3 or more board groups, {data} has {every}")
    chosen = groups or every
    unknown = sorted(set(chosen) - set(every))
    if unknown:
        raise ValueError(f"no board group {unknown} in {data} (groups: {every})")
    out.mkdir(parents=True, exist_ok=True)
    recipe = {"arch": arch, "epochs": epochs, "seed": seed, "topology_prior": topology,
              "crop_views": list(views), "augment_zoom": zoom,
              "augment_fragment": fragment}  # fmt: skip
    folds: dict[str, dict[str, Any]] = {}
    for n, test in enumerate(chosen, start=1):
        inner = inner_group(every, test)
        started = time.monotonic()
        console.rule(f"fold {n}/{len(chosen)}: measure {test}, choose on {inner}")
        work = Path(tempfile.mkdtemp(prefix=f"cv-{test}-", dir=out))
        try:
            model_dir = train_deeppcb(
                work / "models", data, split_file(work, data, inner),
                arch=arch, epochs=epochs, seed=seed, threads=threads, version=f"cv-{test}",
                int8=False, cache_dir=cache_dir, exclude_groups=(test,), topology=topology,
                views=views, zoom=zoom, fragment=fragment, console=console,
            )  # fmt: skip
            metrics = evaluate_model(
                model_dir, data, split_file(work, data, test), out / test,
                seed=seed, threads=threads, console=console,
            )  # fmt: skip
            # what the inner group, which chose for this fold, measured: a variant a nested
            # choice would reject shows here before the other folds are run
            inner_val = load_card(model_dir).metrics.get("val", {})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        folds[test] = {
            "inner_validation_group": inner,
            "inner_validation": {k: inner_val.get(k) for k in ("f_score", "map")},
            **{k: metrics.get(k) for k in FOLD_KEYS},
            "per_class_ap": {c: row.get("ap") for c, row in metrics.get("per_class", {}).items()},
            "boards": metrics.get("boards"),
            "seconds": round(time.monotonic() - started, 1),
        }
        console.log(
            f"{test}: F {folds[test]['f_score']:.4f} mAP {folds[test]['map']:.4f} "
            f"ROI recall {folds[test]['roi_recall']:.4f}"
        )
        _write(out, data, recipe, folds)  # each fold on disk when done
    return _write(out, data, recipe, folds)


def _write(
    out: Path,
    data: Path,
    recipe: dict[str, Any],
    folds: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    from training.evaluation import json_ready

    report = {
        "data": str(data),
        "protocol": "leave one board group out; epoch and thresholds chosen on an inner group",
        **recipe,
        "folds": folds,
        "summary": summarise(folds),
    }
    (out / "cv.json").write_text(json.dumps(json_ready(report), indent=2, allow_nan=False) + "\n")
    return report
