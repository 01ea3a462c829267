"""The anomaly-mode branches of ``linecheck train`` and ``linecheck evaluate`` (class-folder
sets: good images in one subfolder, defective ones with optional masks in the others).
Anomaly models live in ``<models_dir>/`` beside the others (their card's mode says what they
are), so that `linecheck products set P --mode anomaly --model V` finds them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from infra.settings import Settings
from linecheck.cli.common import err
from linecheck.cli.tables import fmt


def train_anomaly_command(
    settings: Settings,
    data: Path | None,
    good_class: str | None,
    *,
    seed: int,
    threads: int | None,
    version: str | None,
    views: str | None = None,
) -> None:
    """Train and register an anomaly model; prints its folder (stdout) and the time taken."""
    from inspection.anomaly import AnomalyView
    from training.anomaly_model import DEFAULT_VIEWS, train_anomaly

    if data is None or not good_class:
        err.print("[red]--task anomaly needs --data DIR (class subfolders) and --good-class[/red]")
        raise typer.Exit(2)
    try:
        chosen = [AnomalyView.parse(v) for v in views.split(",")] if views else DEFAULT_VIEWS
    except ValueError as exc:
        err.print(f"[red]--views: {exc}[/red]")
        raise typer.Exit(2) from exc
    started = time.monotonic()
    try:
        model_dir = train_anomaly(
            settings.model.models_dir, data, good_class, views=chosen, seed=seed,
            threads=threads, version=version, console=err,
        )  # fmt: skip
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    err.print(f"trained in {time.monotonic() - started:.1f} s")
    print(model_dir)


def evaluate_anomaly_command(
    settings: Settings, data: Path, out: Path, model: str, held_out: bool, draw: int
) -> None:
    """Evaluate an anomaly model on a class-folder set; prints the headline figures (JSON)."""
    from inspection.model.registry import resolve_model
    from training.anomaly_evaluation import evaluate_anomaly

    try:
        model_dir = resolve_model(settings.model.models_dir, model, mode="anomaly")
        metrics = evaluate_anomaly(model_dir, data, out, held_out=held_out, draw=draw, console=err)
    except (FileNotFoundError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    table = Table(title=f"{model_dir.name} on {metrics['images']} images of {data}")
    for column in ("class", "images", "detection rate", "fail rate", "image AUROC"):
        table.add_column(column)
    for name, row in metrics["per_class"].items():
        table.add_row(
            name,
            str(row["images"]),
            *(fmt(row[k]) for k in ("detection_rate", "fail_rate", "image_auroc")),
        )
    err.print(table)
    keys = ("image_auroc", "pixel_auroc", "board_fnr", "board_fpr", "review_rate", "images_per_s")
    print(json.dumps({k: metrics[k] for k in keys}, allow_nan=False))
