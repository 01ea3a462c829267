"""``linecheck train --data DIR --roi locator``: a locator-mode model (template-free
inspection) on DeepPCB's layout.

One model folder holds both stages: the learned locator (``locator.xml``/``.bin`` +
``locator.json``, trained on the training groups' boards under test and their boxes, never a
template) and a region classifier trained, like every classifier, by
:func:`training.trainer.train_with_progress`, on template-free crops (``Locator.cut``: the
board, each square's best copy elsewhere on the board, their difference; or, with
``crop_reference`` "median", the board median-filtered) of the locator's own candidates on
the training boards (labelled by IoU with the truths), the truth boxes (and jittered
copies), random clean squares, and the locator's candidates on good boards (each pair's
template, misregistered and scanned: a defect-free board, never a reference), so it learns
the locator's false calls — and, with fold locators (:func:`fold_locators`), the candidates
of locators that never saw the row's design, which look like the false calls on a new
design. The training defects set the locator's repeat veto (:func:`repeat_threshold`). The
held-out groups choose the classifier's epoch and calibrate the board thresholds as in
reference mode; the locator never sees them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console

from board_data.deeppcb import DeepPcbSample, read_gray
from board_data.scan import simulate_good_board
from infra.progress import progress_bar
from inspection.crops import CROP_SIZE, label_candidates
from inspection.locator import CropReference, Locator, LocatorParams
from schemas.events import Box
from training.crop_table import jitter_box, random_boxes
from training.scoring import score_pairs

if TYPE_CHECKING:
    from inspection.model.nets import Arch

# candidates for the classifier's training rows come from a lower map threshold than
# serving uses: the locator fits its training boards closely, and these extra, weaker
# regions stand in for the false calls it makes on designs it never saw
TRAIN_THRESHOLD_FACTOR = 0.6
LOCATOR_WEIGHTS = "locator.pt"
# a centre head's box maps are trained one cell around each centre too: a peak found a cell
# off still gets the whole box (held-out ROI recall 97.8 against 96.1 % at 24 epochs)
BOX_RADIUS = 1
# the share of the training defects the repeat veto must leave alone: it sets repeat_px
# (DeepPCB: 4 px; on held-out 13000 + 92000 it then drops ~45 % of the false alarms, 0.5 %
# of the right detections)
REPEAT_KEEP = 0.99
# fold locators for the classifier's training rows (:func:`fold_locators`), off by default:
# +1 F point for the SmallCNN but -0.7 for EfficientNet-Lite0 (BENCHMARKS.md), ~10 min more
FOLD_LOCATORS = 0
# the classifier's crops' reference channel (``LocatorParams.crop_reference``): "copy" (each
# region's best copy on the board) measured level with "median" once the repeat veto runs
# (Lite0, 13000 + 92000: F 0.8995 / mAP 0.9153 against 0.9015 / 0.9111) for ~4 ms a crop
CROP_REFERENCE: CropReference = "median"


def locator_rows(
    sample: DeepPcbSample,
    locator: Locator,
    rng: np.random.Generator,
    size: int = CROP_SIZE,
    hard: bool = True,
    unseen: Locator | None = None,
    min_side: int = 0,
) -> tuple[np.ndarray, list[int]]:
    """Template-free crops and labels of one pair: the locator's candidates (labelled by
    IoU > 0.33 with a truth of that type), the truths (with ``hard``: two jittered copies
    each, two random clean squares, candidates at a lower threshold), and the candidates on
    a good board made from the template (all "none"). ``unseen``: a locator that never saw
    this pair's design; its candidates (on the board and on the good board) are added too.
    ``min_side``: the crops' smallest square (``ModelCard.crop_min_side``)."""
    image = read_gray(sample.test_path)
    params = locator.params
    if hard:
        params = replace(params, threshold=params.threshold * TRAIN_THRESHOLD_FACTOR)
    found = locator.find_regions(image, params)
    if unseen is not None:
        found += unseen.find_regions(image)
    labels = label_candidates(found, sample.truths)
    boxes: list[Box] = list(found)
    for t in sample.truths:
        copies = [t.box] + [jitter_box(t.box, rng, image.shape, 0.15) for _ in range(2 * hard)]
        boxes += copies
        labels += [t.defect_type.deeppcb_id] * len(copies)
    if hard:
        clean = random_boxes(rng, image.shape, [t.box for t in sample.truths], 2)
        boxes += clean
        labels += [0] * len(clean)
    crops = [locator.cut(image, boxes, size, min_side)]
    if sample.template_path.exists():
        good = simulate_good_board(read_gray(sample.template_path), rng)
        good_boxes = locator.find_regions(good)
        if unseen is not None:
            good_boxes += unseen.find_regions(good)
        crops.append(locator.cut(good, good_boxes, size, min_side))
        labels += [0] * len(good_boxes)
    return np.concatenate(crops), labels


def reuse_locator(source: Path, val_groups: Sequence[str], ir_dir: Path) -> dict[str, Any]:
    """Copy a locator-mode model's locator (network, weights, parameters) into ``ir_dir``;
    returns its card's locator section with ``from`` added. Refused when the source trained
    on any of ``val_groups``: they would no longer be boards the locator never saw."""
    from inspection.locator import LOCATOR_PARAMS, LOCATOR_XML
    from inspection.model.registry import load_card

    card = load_card(source)
    if card.mode != "locator":
        raise ValueError(f"{source} is a {card.mode}-mode model, not a locator model")
    seen = sorted(set(card.metrics.get("train_groups", [])) & set(val_groups))
    if seen:
        raise ValueError(f"the locator of {card.version} was trained on {', '.join(seen)}, "
                         "which this split holds out")  # fmt: skip
    ir_dir.mkdir(parents=True, exist_ok=True)
    xml = Path(LOCATOR_XML)
    for name in (LOCATOR_XML, xml.with_suffix(".bin").name, LOCATOR_PARAMS, LOCATOR_WEIGHTS):
        shutil.copy2(source / name, ir_dir / name)
    return {**card.metrics.get("locator", {}), "from": card.version}


def crop_set(
    samples: Sequence[DeepPcbSample],
    locator: Locator,
    seed: int,
    hard: bool,
    console: Console,
    what: str,
    unseen: Mapping[str, Locator] | None = None,
    min_side: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Crops and labels of all ``samples`` (:func:`locator_rows`); ``unseen``: per board
    group, a locator that never saw it; ``min_side``: the crops' smallest square."""
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    with progress_bar(console, f"locating and cropping {what}", len(samples)) as step:
        for s in samples:
            other = unseen.get(s.group) if unseen else None
            c, lab = locator_rows(s, locator, rng, hard=hard, unseen=other, min_side=min_side)
            crops.append(c)
            labels += lab
            step()
    return np.concatenate(crops), np.asarray(labels, np.int64)


def train_locator(
    samples: Sequence[DeepPcbSample],
    params: LocatorParams,
    out_dir: Path,
    console: Console,
    what: str,
    *,
    epochs: int,
    crops_per_board: int,
    box_radius: int,
    seed: int,
    threads: int | None,
) -> dict[str, float]:
    """Train a locator on the boards under test of ``samples`` (never a template) and write
    it to ``out_dir`` (IR, torch weights, parameters); returns its last epoch's row."""
    import torch

    from inspection.model.locator_net import export_locator
    from training.locator_train import train_locator_net

    with progress_bar(console, f"training {what}", epochs) as step:
        net, history = train_locator_net(
            [read_gray(s.test_path) for s in samples],
            [[t.box for t in s.truths] for s in samples],
            epochs=epochs,
            crops_per_board=crops_per_board,
            target_shrink=params.target_shrink,
            head=params.head,
            box_radius=box_radius,
            seed=seed,
            threads=threads,
            progress=lambda e, n, row: step(
                completed=e,
                description=f"training {what} · epoch {e} area loss "
                f"{row['area_loss']:.3f} ({row['seconds']:.0f}s)",
            ),
        )
    export_locator(net, out_dir)
    torch.save(net.state_dict(), out_dir / LOCATOR_WEIGHTS)  # parity checks, retraining
    params.save(out_dir)
    return history[-1]


def fold_groups(groups: Iterable[str], folds: int) -> list[list[str]]:
    """The groups dealt round robin (sorted) into ``folds`` folds; ``[]`` when ``folds`` < 2
    or there are fewer groups than folds (no fold could be held out)."""
    ordered = sorted(set(groups))
    if folds < 2 or len(ordered) < folds:
        return []
    return [ordered[k::folds] for k in range(folds)]


def fold_locators(
    samples: Sequence[DeepPcbSample],
    params: LocatorParams,
    folds: int,
    work_dir: Path,
    console: Console,
    **fit: Any,
) -> dict[str, Locator]:
    """Per board group of ``samples``, a locator trained without that group: the groups are
    dealt into ``folds`` folds (:func:`fold_groups`) and one locator is trained per fold on
    the other folds' boards. Their candidates on a group are what the served locator calls
    on a design it never saw — a new design's corners and line ends — which the served
    locator, fitted to its own training boards, hardly shows the classifier. ``{}`` when
    no fold can be held out."""
    unseen: dict[str, Locator] = {}
    for k, held in enumerate(fold_groups({s.group for s in samples}, folds)):
        out = work_dir / f"fold{k}"
        rest = [s for s in samples if s.group not in held]
        train_locator(rest, params, out, console, f"fold locator {k + 1}/{folds}", **fit)
        locator = Locator(out, threads=fit.get("threads"))
        unseen.update(dict.fromkeys(held, locator))
    return unseen


def repeat_threshold(
    samples: Sequence[DeepPcbSample], console: Console, keep: float = REPEAT_KEEP
) -> int:
    """``LocatorParams.repeat_px`` from training boards: the most unexplained pixels
    (:func:`inspection.self_reference.unexplained_area`) that ``keep`` of their defects
    still reach, so that the veto would call at most 1 − ``keep`` of them "none"."""
    from inspection.self_reference import unexplained_area

    areas: list[int] = []
    with progress_bar(console, "measuring the defects' repeats", len(samples)) as step:
        for s in samples:
            if s.truths:
                board = read_gray(s.test_path)
                areas += [unexplained_area(board, t.box) for t in s.truths]
            step()
    return int(np.quantile(areas, 1.0 - keep, method="lower")) if areas else 0


def train_locator_model(
    models_dir: Path,
    data: Path,
    split_file: Path | None = None,
    *,
    arch: Arch = "small",
    epochs: int = 10,
    locator_epochs: int = 40,
    crops_per_board: int = 2,
    params: LocatorParams = LocatorParams(),
    box_radius: int = BOX_RADIUS,
    locator_from: Path | None = None,
    folds: int = FOLD_LOCATORS,
    crop_reference: CropReference = CROP_REFERENCE,
    crop_min_side: int = 0,
    seed: int = 0,
    threads: int | None = None,
    version: str | None = None,
    target_fnr: float = 0.001,
    int8: bool = False,
    console: Console | None = None,
) -> Path:
    """Train the locator, then the region classifier on its template-free candidates;
    register both as one locator-mode model folder, thresholds calibrated on the held-out
    groups. ``params``: the locator's head and how its maps become boxes; ``box_radius``: a
    centre head's box training (:func:`training.locator_train.train_locator_net`);
    ``locator_from``: a locator-mode model folder whose locator (network and parameters) is
    reused as it is, only the classifier being trained (it must have been trained without
    the validation groups: its card's); ``folds``: fold locators for the classifier's
    training rows (:func:`fold_locators`); ``crop_reference``: the second channel of the
    classifier's crops (``LocatorParams.crop_reference``); ``crop_min_side``: the smallest
    square they are cut from (``ModelCard.crop_min_side``). Returns the model folder."""
    import torch

    from inspection.backends import load_classifier
    from inspection.model.registry import ModelCard, data_hash, save_model, update_card
    from training.calibration import calibrate_thresholds
    from training.evaluation import card_metrics_row, evaluation_metrics
    from training.scoring import board_arrays
    from training.splits import samples_of, split_deeppcb
    from training.trainer import train_with_progress

    console = console or Console(stderr=True)
    started = time.monotonic()
    fit: dict[str, Any] = {"epochs": locator_epochs, "crops_per_board": crops_per_board,
           "box_radius": box_radius, "seed": seed, "threads": threads}  # fmt: skip
    train_s, val_s = split_deeppcb(samples_of(data), data, split_file)
    val_groups = sorted({s.group for s in val_s})
    version = version or time.strftime(f"locator-{arch}-%Y%m%d-%H%M%S", time.gmtime())
    if (Path(models_dir) / version).exists():
        raise FileExistsError(f"model version {version!r} already exists in {models_dir}")
    staging = Path(models_dir) / f".staging-{version}"  # hidden: no reader lists it
    shutil.rmtree(staging, ignore_errors=True)
    try:
        ir_dir = staging / "locator"
        locator_card: dict[str, Any]
        if locator_from is not None:
            locator_card = reuse_locator(Path(locator_from), val_groups, ir_dir)
            params = LocatorParams.load(ir_dir)
        else:
            last = train_locator(train_s, params, ir_dir, console, "the locator", **fit)
            locator_card = {
                "head": params.head,
                "epochs": locator_epochs,
                "last_epoch": last,
                "train_seconds": round(time.monotonic() - started, 1),
            }
        params = replace(
            params, repeat_px=repeat_threshold(train_s, console), crop_reference=crop_reference
        )
        params.save(ir_dir)
        locator_card["repeat_px"] = params.repeat_px
        locator_card["crop_reference"] = crop_reference
        unseen = fold_locators(train_s, params, folds, staging / "folds", console, **fit)
        if unseen:
            locator_card["fold_locators"] = folds
        locator_seconds = time.monotonic() - started
        locator = Locator(ir_dir, threads=threads)
        train_x, train_y = crop_set(
            train_s, locator, seed, True, console, "training pairs", unseen, crop_min_side
        )
        val_x, val_y = crop_set(
            val_s, locator, seed + 1, False, console, "validation pairs", None, crop_min_side
        )
        console.log(
            f"locator ready in {locator_seconds:.0f}s ({len(train_s)} training boards); "
            f"classifier: {len(train_y)} training crops, {len(val_y)} validation crops "
            f"({', '.join(val_groups)})"
        )
        result = train_with_progress(
            console, train_x, train_y, val_x, val_y, arch=arch, epochs=epochs, seed=seed,
            threads=threads,
        )  # fmt: skip
        card = ModelCard(
            version=version,
            arch=arch,
            input_size=CROP_SIZE,
            crop_min_side=crop_min_side,
            mode="locator",
            metrics={
                "region_val": result.metrics,
                "locator": locator_card,
                "data": str(data),
                "train_groups": sorted({s.group for s in train_s}),
                "val_groups": val_groups,
                "train_pairs": len(train_s),
                "val_pairs": len(val_s),
            },
            training_data_hash=data_hash(f"deeppcb:{s.group}/{s.image_id}" for s in train_s),
            torch_version=torch.__version__,
        )
        model_dir = save_model(result.module, card, staging)
        for f in ir_dir.iterdir():
            shutil.move(str(f), model_dir / f.name)
        classifier = load_classifier(model_dir, backend="openvino", threads=threads)
        locator = Locator(model_dir, threads=threads)
        results = score_pairs(val_s, classifier, console, seed=seed, locator=locator)
        thresholds = calibrate_thresholds(*board_arrays(results), target_fnr=target_fnr)
        metrics = evaluation_metrics(results, thresholds)
        card_metrics: dict[str, Any] = {**card.metrics, "val": card_metrics_row(metrics)}
        if int8:
            from training.quantize import quantize_int8

            quantize_int8(model_dir, train_x, seed=seed)
        card_metrics["train_seconds"] = round(time.monotonic() - started, 1)
        update_card(
            model_dir, card.model_copy(update={"thresholds": thresholds, "metrics": card_metrics})
        )
        final = Path(models_dir) / version
        model_dir.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    console.log(
        f"locator model {version} in {final} · val F {metrics['f_score']:.4f} mAP "
        f"{metrics['map']:.4f} ROI recall {metrics['roi_recall']:.4f} "
        f"({metrics['candidates_per_board']:.1f} candidates/board) · "
        f"{time.monotonic() - started:.0f}s"
    )
    return final
