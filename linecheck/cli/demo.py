"""`linecheck demo`: the README's main command (the whole flow on the embedded servers).

Registered in :mod:`linecheck.cli` by :func:`register`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from linecheck.cli.common import ConfigOption, err, settings_or_exit


def products_table(products: dict[str, dict[str, Any]]) -> Table:
    """The mixed line's summary: each product's mode and rates."""
    table = Table(title="per product")
    for column in ("product", "mode", "boards", "defective", "FNR", "FPR", "review"):
        table.add_column(column, justify="left" if column in ("product", "mode") else "right")

    def rate(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    for name, r in products.items():
        table.add_row(
            name, r["mode"], str(r["boards"]), str(r["defective"]),
            rate(r["fnr"]), rate(r["fpr"]), rate(r["review_rate"]),
        )  # fmt: skip
    return table


def demo(
    boards: Annotated[int, typer.Option(min=1, help="boards to publish")] = 200,
    workers: Annotated[int, typer.Option(min=1, help="worker processes in the group")] = 2,
    rate: Annotated[
        float | None, typer.Option(help="boards/s (default: as fast as possible)")
    ] = None,
    seed: int = 0,
    external: Annotated[
        bool, typer.Option(help="use the Kafka/PostgreSQL/Redis of the settings")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="last line: the summary as JSON")] = False,
    swap_at: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="after board N, promote a candidate model; workers switch live"),
    ] = None,
    drift: Annotated[
        bool,
        typer.Option(
            help="from board N/2 on, noisier scans and more misregistration "
            "(published at 12 boards/s unless --rate)"
        ),
    ] = False,
    mixed: Annotated[
        bool,
        typer.Option(
            help="a mixed line: boards with templates (reference), boards without (locator) "
            "and part surfaces (anomaly), each product's rates in the summary"
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Run the whole flow end to end on the embedded servers and print a summary."""
    from linecheck.demo import DemoError, run_demo

    settings = settings_or_exit(config)
    try:
        result = run_demo(
            settings,
            boards,
            workers=workers,
            rate=rate,
            seed=seed,
            external=external,
            drift=drift,
            swap_at=swap_at,
            mixed=mixed,
            console=err,
        )
    except DemoError as exc:
        err.print(f"[red]demo failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    table = Table(title="linecheck demo")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.as_dict().items():
        if key == "products":
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        table.add_row(key, shown)
    err.print(table)
    if result.products:
        err.print(products_table(result.products))
    if as_json:
        print(json.dumps(result.as_dict()))
    ok = result.published == result.audit_rows + result.deadletter
    raise typer.Exit(0 if ok else 1)


def register(app: typer.Typer) -> None:
    app.command()(demo)
