"""`linecheck bench`: every throughput ratio of the pipeline in one run."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from linecheck.cli.common import ConfigOption, err, settings_or_exit


def bench(
    boards: Annotated[
        int,
        typer.Option(
            min=8,
            help="synthetic boards per measurement (1,000: the latency p99 is the 10th-worst "
            "board, and the pipeline's fill and drain are a small part of the saturation run)",
        ),
    ] = 1000,
    workers: Annotated[int, typer.Option(min=1, help="worker processes (consumers)")] = 2,
    processes: Annotated[
        int,
        typer.Option(
            min=1, help="inspection processes per worker (worker.processes; 1: the worker itself)"
        ),
    ] = 1,
    seed: Annotated[int, typer.Option(help="board generator seed (0 = the training boards)")] = 11,
    scale: Annotated[
        str, typer.Option(help="also run end to end with each of these worker counts, e.g. 1,2,4")
    ] = "",
    external: Annotated[
        bool, typer.Option(help="use the Kafka/PostgreSQL/Redis of the settings")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the results as one JSON object")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Measure raw and end-to-end throughput, latency, per-stage cost and the runtime
    ratios on the same boards and machine (takes a few minutes)."""
    from linecheck.bench import run_bench

    settings = settings_or_exit(config)
    settings.worker.processes = processes
    try:
        counts = tuple(int(n) for n in scale.split(",") if n.strip())
    except ValueError as exc:
        err.print(f"[red]--scale takes worker counts separated by commas, got {scale!r}[/red]")
        raise typer.Exit(2) from exc
    if any(n < 1 for n in counts):
        err.print(f"[red]--scale worker counts must be >= 1, got {scale!r}[/red]")
        raise typer.Exit(2)
    try:
        result = run_bench(
            settings, boards=boards, workers=workers, seed=seed, scale=counts,
            external=external, console=err,
        )  # fmt: skip
    except (RuntimeError, TimeoutError, ValueError) as exc:
        err.print(f"[red]bench failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    table = Table(title="linecheck bench")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    err.print(table)
    if as_json:
        print(json.dumps(result, allow_nan=False))


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
