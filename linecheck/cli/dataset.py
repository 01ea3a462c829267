"""`linecheck dataset export --from-reviews OUT`: what the line's operators reviewed, as a
DeepPCB-layout training set (see training/review_dataset.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from linecheck.cli.common import ConfigOption, audit_store, err, settings_or_exit

dataset_app = typer.Typer(no_args_is_help=True, help="Training data from the line.")


@dataset_app.command("export")
def dataset_export(
    out: Annotated[Path, typer.Argument(help="folder to write (DeepPCB layout)")],
    from_reviews: Annotated[
        bool, typer.Option("--from-reviews", help="the boards operators reviewed (required)")
    ] = False,
    since: Annotated[
        Optional[datetime],  # noqa: UP045
        typer.Option(help="only outcomes reviewed since (ISO time, UTC if no zone)"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Write reviewed boards with their templates and boxes, ready for `linecheck train
    --data OUT`; prints a JSON summary (pairs, skipped and why, where the boxes came from)."""
    from infra.db import make_engine
    from infra.object_store import ObjectStore
    from infra.progress import progress_bar
    from training.review_dataset import export_reviewed, reviewed_boards

    if not from_reviews:
        err.print("[red]say where the data comes from: --from-reviews[/red]")
        raise typer.Exit(2)
    if out.exists() and any(out.iterdir()):
        err.print(f"[red]{out} is not empty: choose a new folder[/red]")
        raise typer.Exit(2)
    settings = settings_or_exit(config)
    start = since.replace(tzinfo=since.tzinfo or UTC) if since else None
    with audit_store(settings) as url:
        engine = make_engine(url)
        try:
            total = len(reviewed_boards(engine, start))
            with progress_bar(err, "exporting reviewed boards", total) as step:
                summary = export_reviewed(
                    engine, ObjectStore(settings.images.object_store), out, start, lambda: step()
                )
        finally:
            engine.dispose()
    err.print(f"wrote {summary.pairs} pairs to {out} (trainval.txt, boards.csv)")
    print(json.dumps(summary.as_dict()))


def register(app: typer.Typer) -> None:
    app.add_typer(dataset_app, name="dataset")
