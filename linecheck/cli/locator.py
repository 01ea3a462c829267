"""The locator-mode branch of ``linecheck train`` (``--roi locator``: template-free
inspection on DeepPCB-layout data, a learned locator and a classifier of its candidates)."""

from __future__ import annotations

from pathlib import Path

import typer

from infra.settings import Settings
from linecheck.cli.common import err


def train_locator_command(
    settings: Settings,
    data: Path,
    split: Path | None,
    *,
    arch: str,
    epochs: int,
    locator_epochs: int,
    locator_head: str,
    base_model: str | None,
    fold_locators: int,
    crop_reference: str,
    crop_views: tuple[int, ...],
    seed: int,
    threads: int | None,
    version: str | None,
) -> None:
    """Train and register a locator-mode model (or, with ``base_model``, a new classifier on
    that model's locator); prints its folder (stdout)."""
    from inspection.locator import REGION_PARAMS, LocatorParams
    from inspection.model.registry import resolve_model
    from training.locator_model import train_locator_model

    if locator_head not in ("centre", "region"):
        err.print(f"[red]--locator-head must be centre or region, got {locator_head!r}[/red]")
        raise typer.Exit(2)
    if crop_reference not in ("median", "copy"):
        err.print(f"[red]--crop-reference must be median or copy, got {crop_reference!r}[/red]")
        raise typer.Exit(2)
    if len(crop_views) != 1:
        err.print(f"[red]--roi locator trains one classifier: give --crop-views one side, "
                  f"got {','.join(map(str, crop_views))}[/red]")  # fmt: skip
        raise typer.Exit(2)
    params = REGION_PARAMS if locator_head == "region" else LocatorParams()
    try:
        source = resolve_model(settings.model.models_dir, base_model) if base_model else None
        model_dir = train_locator_model(
            settings.model.models_dir, data, split, arch=arch,  # type: ignore[arg-type]
            epochs=epochs, locator_epochs=locator_epochs, seed=seed, params=params,
            locator_from=source, folds=fold_locators, threads=threads, version=version, console=err,
            crop_reference=crop_reference,  # type: ignore[arg-type]
            crop_min_side=crop_views[0],
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:  # no such model; a locator that saw them
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    print(model_dir)
