"""Model commands of the `linecheck` CLI: train, calibrate, quantize, and `evaluate` from
:mod:`linecheck.cli.evaluate`.

Registered in :mod:`linecheck.cli` by :func:`register`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from infra.settings import Settings
from linecheck.cli.common import ConfigOption, err, settings_or_exit
from linecheck.cli.tables import cv_table

DataOption = Annotated[
    Path,
    typer.Option(
        "--data", exists=True, file_okay=False, help="DeepPCB-layout folder (labelled pairs)"
    ),
]
SplitOption = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--split",
        exists=True,
        dir_okay=False,
        help="split file (DeepPCB format) listing the validation pairs; their board groups "
        "are held out of training (default: groups 13000 and 92000; evaluate and calibrate: "
        "the model's validation groups)",
    ),
]
ModelOption = Annotated[
    str, typer.Option("--model", help="model version (folder name) or 'latest'")
]
ARCHS = ("small", "efficientnet_lite0")


def model_dir_or_exit(settings: Settings, version: str) -> Path:
    from inspection.model.registry import resolve_model

    try:
        return resolve_model(settings.model.models_dir, version)
    except FileNotFoundError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


def train(
    data: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            exists=True,
            file_okay=False,
            help="DeepPCB-layout folder, or a folder of <class>_<n>.jpg images; "
            "without it, synthetic boards",
        ),
    ] = None,
    split: SplitOption = None,
    task: Annotated[
        str, typer.Option(help="auto | detect (DeepPCB) | classify | anomaly (class subfolders)")
    ] = "auto",
    good_class: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="--task anomaly: the subfolder of good images"),
    ] = None,
    views: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="--task anomaly: views SIZE[a][s], comma-separated (a: aspect kept at SIZE² "
            "of area, s: grey levels standardised); default 96as,128a,256"
        ),
    ] = None,
    boards: Annotated[int, typer.Option(min=10, help="synthetic boards (without --data)")] = 240,
    arch: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="small | efficientnet_lite0 (default: small; classify and --roi locator: "
            "efficientnet_lite0)"
        ),
    ] = None,
    epochs: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help="default: 8 synthetic, 20 DeepPCB, 10 classify, 8 locator"),
    ] = None,
    size: Annotated[int, typer.Option(min=16, help="image size for --task classify")] = 128,
    seed: int = 0,
    threads: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help="torch threads (default: all cores)"),
    ] = None,
    int8: Annotated[bool, typer.Option(help="also save the INT8 IR (DeepPCB)")] = True,
    version: Annotated[Optional[str], typer.Option(help="model version name")] = None,  # noqa: UP045
    head: Annotated[
        str, typer.Option(help="cnn | gbdt: a LightGBM head on the CNN's features (DeepPCB)")
    ] = "cnn",
    cv: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="'groups': leave-one-board-group-out cross-validation (DeepPCB)"),
    ] = None,
    cv_out: Annotated[Path, typer.Option(help="--cv: folder for cv.json")] = Path("out/cv"),
    cv_groups: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="--cv: measure only these board groups, comma-separated"),
    ] = None,
    topology: Annotated[
        bool,
        typer.Option(help="DeepPCB: add log p(connectivity change | class) to the logits"),
    ] = True,
    crop_views: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="DeepPCB: one network per crop geometry, their probabilities averaged: the "
            "smallest square (px) each one's crops are cut from, comma-separated (default "
            "0,64; 0: the box and its context alone; one value: one network; --roi "
            "locator: one value, default 0)",
        ),
    ] = None,
    zoom: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            min=1.0,
            max=2.0,
            help="DeepPCB: training crops scaled at random within [1/ZOOM, ZOOM] "
            "(default: the recipe's, training.deeppcb_model.AUGMENT_ZOOM; 1: off)",
        ),
    ] = None,
    fragment: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            min=0.0,
            max=1.0,
            help="DeepPCB: the share of training spur crops whose added copper is broken "
            "into specks (default: the recipe's, training.deeppcb_model.AUGMENT_FRAGMENT; 0: off)",
        ),
    ] = None,
    base_model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="--head gbdt: the trained CNN to put it on (default: train one); --roi "
            "locator: the locator model whose locator to reuse (only the classifier is trained)"
        ),
    ] = None,
    roi: Annotated[
        str, typer.Option(help="reference | locator (learned, no template)")
    ] = "reference",
    locator_epochs: Annotated[int, typer.Option(min=1, help="--roi locator")] = 40,
    locator_head: Annotated[
        str, typer.Option(help="--roi locator: centre (a box per defect) | region (one map)")
    ] = "centre",
    fold_locators: Annotated[
        int,
        typer.Option(
            min=0,
            help="--roi locator: classifier rows also from locators that "
            "never saw each training design (N folds of its groups; 0: off)",
        ),
    ] = 0,
    crop_reference: Annotated[
        str,
        typer.Option(
            help="--roi locator: the crops' second channel: median (the board "
            "median-filtered) | copy (the region's best copy elsewhere on the board)"
        ),
    ] = "median",
    config: ConfigOption = None,
) -> None:
    """Train a classifier, calibrate it and register it (OpenVINO IR, FP32 and INT8).

    With --data on DeepPCB: region crops from the ROI stage labelled by overlap with the
    annotations, validation on held-out board groups, thresholds for board-level FNR ≤ 0.1 %.
    With --data on a folder of <class>_<n>.jpg images (NEU-DET): a multi-class classifier
    with a stratified 20 % hold-out, registered under <models_dir>/classify/.
    """
    settings = settings_or_exit(config)
    if task == "anomaly" or (task == "auto" and good_class):
        from linecheck.cli.anomaly import train_anomaly_command

        train_anomaly_command(settings, data, good_class, seed=seed, threads=threads,
                              version=version, views=views)  # fmt: skip
        return
    if task == "auto" and data is not None:
        from training.splits import is_deeppcb

        task = "detect" if is_deeppcb(data) else "classify"
    # the template-free classifier needs ImageNet's features (F +4 points, BENCHMARKS.md)
    lite = task == "classify" or (roi == "locator" and data is not None)
    arch = arch or ("efficientnet_lite0" if lite else "small")
    if arch not in ARCHS:
        err.print(f"[red]--arch must be one of {', '.join(ARCHS)}, got {arch!r}[/red]")
        raise typer.Exit(2)
    trains_cnn = task == "detect" and roi == "reference" and (head == "cnn" or not base_model)
    if (zoom is not None or fragment is not None) and not trains_cnn:
        err.print(
            "[red]--zoom and --fragment apply where a CNN is trained on DeepPCB-layout data "
            "with the template (--roi reference; not a --head gbdt on a --base-model)[/red]"
        )
        raise typer.Exit(2)
    if data is None:
        from training.synthetic_model import train_synthetic

        model_dir = train_synthetic(
            settings,
            boards=boards,
            arch=arch,  # type: ignore[arg-type]
            epochs=epochs or 8,
            seed=seed,
            version=version,
            console=err,
        )
        print(model_dir)
        return
    from training.deeppcb_model import (
        AUGMENT_FRAGMENT,
        AUGMENT_ZOOM,
        DEEPPCB_EPOCHS,
        train_deeppcb,
    )
    from training.image_folder_model import train_image_folder

    zoom = AUGMENT_ZOOM if zoom is None else zoom
    fragment = AUGMENT_FRAGMENT if fragment is None else fragment

    sides = _crop_views(crop_views)
    if head == "gbdt" and crop_views is None:
        sides = sides[:1]  # a boosted-tree head learns on one network's features

    if cv is not None:
        if cv != "groups" or task != "detect":
            err.print("[red]--cv groups needs DeepPCB-layout --data[/red]")
            raise typer.Exit(2)
        from training.cross_validation import cross_validate

        try:
            report = cross_validate(
                data,
                cv_out,
                arch=arch,  # type: ignore[arg-type]
                epochs=epochs,  # None: the recipe's
                seed=seed,
                threads=threads,
                groups=[g.strip() for g in cv_groups.split(",")] if cv_groups else None,
                topology=topology,
                views=sides,
                zoom=zoom,
                fragment=fragment,
                cache_dir=settings.work_dir / "cache",
                console=err,
            )
        except ValueError as exc:  # unknown or too few board groups
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
        err.print(cv_table(report))
        print(cv_out / "cv.json")
        return
    if head not in ("cnn", "gbdt") or (head == "gbdt" and task != "detect"):
        err.print(f"[red]--head must be cnn, or gbdt on DeepPCB-layout data; got {head!r}[/red]")
        raise typer.Exit(2)
    if head == "gbdt" and base_model is not None:
        from training.gbdt_head import train_gbdt_head

        base = model_dir_or_exit(settings, base_model)
        print(train_gbdt_head(base, data, split, seed=seed, threads=threads,
                              cache_dir=settings.work_dir / "cache", console=err))  # fmt: skip
        return
    if roi == "locator" and task == "detect":
        from linecheck.cli.locator import train_locator_command

        train_locator_command(settings, data, split, arch=arch, epochs=epochs or 8,
                              locator_epochs=locator_epochs, locator_head=locator_head,
                              base_model=base_model, fold_locators=fold_locators,
                              crop_reference=crop_reference,
                              crop_views=_crop_views(crop_views) if crop_views else (0,),
                              seed=seed, threads=threads, version=version)  # fmt: skip
        return
    if roi != "reference":
        err.print(f"[red]--roi locator needs DeepPCB-layout data; got --roi {roi!r}[/red]")
        raise typer.Exit(2)
    if task == "detect":
        model_dir = train_deeppcb(
            settings.model.models_dir,
            data,
            split,
            arch=arch,  # type: ignore[arg-type]
            epochs=epochs or DEEPPCB_EPOCHS,
            seed=seed,
            threads=threads,
            version=version,
            int8=int8,
            cache_dir=settings.work_dir / "cache",
            topology=topology,
            views=sides,
            zoom=zoom,
            fragment=fragment,
            console=err,
        )
        if head == "gbdt":
            from training.gbdt_head import train_gbdt_head

            model_dir = train_gbdt_head(
                model_dir,
                data,
                split,
                seed=seed,
                threads=threads,
                cache_dir=settings.work_dir / "cache",
                console=err,
            )
    elif task == "classify":
        model_dir = train_image_folder(
            settings.model.models_dir / "classify",
            data,
            arch=arch,  # type: ignore[arg-type]
            epochs=epochs or 10,
            size=size,
            seed=seed,
            threads=threads,
            version=version,
            console=err,
        )
    else:
        err.print(f"[red]--task must be auto, detect or classify, got {task!r}[/red]")
        raise typer.Exit(2)
    print(model_dir)


def calibrate(
    data: DataOption,
    split: SplitOption = None,
    model: ModelOption = "latest",
    target_fnr: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.001,
    seed: int = 0,
    config: ConfigOption = None,
) -> None:
    """Re-choose a model's thresholds on labelled data: board-level FNR ≤ target first, then
    the least review; stored in the model card."""
    from training.calibration import calibrate_model

    settings = settings_or_exit(config)
    model_dir = model_dir_or_exit(settings, model)
    thresholds, rates = calibrate_model(
        model_dir, data, split, target_fnr=target_fnr, seed=seed, console=err
    )
    table = Table(title=f"calibrated {model_dir.name}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in {**thresholds.model_dump(), **rates}.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    err.print(table)
    print(json.dumps({"thresholds": thresholds.model_dump(), **rates}))


def quantize(
    data: DataOption,
    split: SplitOption = None,
    model: ModelOption = "latest",
    seed: int = 0,
    config: ConfigOption = None,
) -> None:
    """(Re)make a DeepPCB model's INT8 IR (NNCF post-training quantization) from crops of the
    training pairs, keeping region accuracy on the validation pairs within 0.5 points of
    FP32 (NNCF accuracy control); each network of a model of views on its own crops."""
    from training.quantize import quantize_deeppcb

    settings = settings_or_exit(config)
    model_dir = model_dir_or_exit(settings, model)
    for xml in quantize_deeppcb(model_dir, data, split, seed, settings.work_dir / "cache"):
        print(xml)


def _crop_views(text: str | None) -> tuple[int, ...]:
    """``--crop-views``: distinct sides ≥ 0, comma-separated; exits 2 naming a bad one."""
    from inspection.crops import CROP_VIEWS, check_crop_views

    if text is None:
        return CROP_VIEWS
    try:
        return check_crop_views([int(v) for v in text.split(",")])
    except ValueError:
        err.print(f"[red]--crop-views must be distinct sides ≥ 0 in px, e.g. 0,64; got {text!r}")
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    """Add the model commands to the main CLI."""
    from linecheck.cli.evaluate import evaluate

    app.command()(train)
    app.command()(calibrate)
    app.command()(evaluate)  # in its own module: linecheck.cli.evaluate
    app.command()(quantize)
