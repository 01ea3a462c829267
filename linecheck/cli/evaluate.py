"""`linecheck evaluate`: a model on labelled data — DeepPCB-layout pairs (detections and the
DeepPCB metrics, reference or locator mode), a class-folder set (anomaly model) or a folder
of <class>_<n>.jpg images (classify model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from infra.settings import Settings
from linecheck.cli.common import ConfigOption, err, settings_or_exit
from linecheck.cli.models import DataOption, ModelOption, SplitOption, model_dir_or_exit
from linecheck.cli.tables import fmt, metrics_table


def evaluate(
    data: DataOption,
    out: Annotated[Path, typer.Option(help="output folder")],
    split: SplitOption = None,
    model: ModelOption = "latest",
    variant: Annotated[str, typer.Option(help="fp32 | int8 (OpenVINO IR)")] = "fp32",
    draw: Annotated[int, typer.Option(min=0, help="save pictures of N boards")] = 0,
    seed: int = 0,
    held_out: Annotated[
        bool, typer.Option(help="image folder: only the images training held out (same seed)")
    ] = False,
    roi: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="reference | locator (default: the card's mode)"),
    ] = None,
    repeat_px: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            min=0,
            help="locator: call regions that repeat the design on the board "
            "none under this many unexplained px (default: the model's; 0: off)",
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Evaluate a model on labelled pairs (DeepPCB protocol: IoU > 0.33, same type):
    OUT/detections/<id>.txt, OUT/metrics.json, and with --draw N pictures in OUT/boards/.
    On a folder of <class>_<n>.jpg images with a classify model (from <models_dir>/classify):
    accuracy, per-class precision/recall/F1, confusion matrix, OUT/scores.csv."""
    from training.evaluation import evaluate_model, json_ready
    from training.splits import is_deeppcb

    settings = settings_or_exit(config)
    from board_data.class_folders import is_class_folder_set

    if not is_deeppcb(data) and is_class_folder_set(data):  # anomaly model (--held-out: test)
        from linecheck.cli.anomaly import evaluate_anomaly_command

        evaluate_anomaly_command(settings, data, out, model, held_out, draw)
        return
    if not is_deeppcb(data):
        _evaluate_classify(settings, data, out, model, held_out, seed)
        return
    if variant not in ("fp32", "int8"):
        err.print(f"[red]--variant must be fp32 or int8, got {variant!r}[/red]")
        raise typer.Exit(2)
    model_dir = model_dir_or_exit(settings, model)
    try:
        metrics = evaluate_model(
            model_dir, data, split, out, variant=variant, draw=draw, seed=seed, console=err,
            roi=roi, repeat_px=repeat_px,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    err.print(
        metrics_table(metrics, f"{model_dir.name} ({variant}) on {', '.join(metrics['groups'])}")
    )
    keys = ("f_score", "map", "roi_recall", "board_fnr", "board_fpr", "review_rate")
    headline = {k: metrics[k] for k in keys if k in metrics}
    print(json.dumps(json_ready(headline), allow_nan=False))  # undefined rates: null


def _evaluate_classify(
    settings: Settings, data: Path, out: Path, model: str, held_out: bool, seed: int
) -> None:
    import numpy as np

    from board_data.image_folder import labelled_images
    from inspection.model.registry import resolve_model
    from training.classify_evaluation import evaluate_classifier
    from training.evaluation import json_ready
    from training.image_folder_model import stratified_split

    try:
        model_dir = resolve_model(settings.model.models_dir / "classify", model)
        indices = None
        if held_out:
            labels = np.unique([c for _, c in labelled_images(data)], return_inverse=True)[1]
            indices = stratified_split(labels, 0.2, seed)[1]
        metrics = evaluate_classifier(model_dir, data, out, indices=indices)
    except (FileNotFoundError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    table = Table(title=f"{model_dir.name} on {metrics['images']} images of {data}")
    for column in ("class", "precision", "recall", "F1", "support"):
        table.add_column(column)
    for name, row in metrics["per_class"].items():
        table.add_row(name, *(fmt(row[k]) for k in ("precision", "recall", "f1", "support")))
    err.print(table)
    keys = ("accuracy", "macro_f1", "images")
    print(json.dumps(json_ready({k: metrics[k] for k in keys}), allow_nan=False))
