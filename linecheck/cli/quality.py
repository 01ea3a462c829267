"""Quality-loop commands: review outcomes, the review sink, the report and the dashboards.

Registered on the main `linecheck` app by `register(app)` (see linecheck/cli.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import SecretStr

from linecheck.cli.common import ConfigOption, err, settings_or_exit

dashboards_app = typer.Typer(no_args_is_help=True, help="Grafana dashboards as code.")


def review(
    event_id: Annotated[str, typer.Option("--event-id", help="the board's event id")],
    defective: Annotated[
        bool, typer.Option("--defective/--good", help="what the board really was")
    ],
    reviewer: Annotated[str, typer.Option(help="who reviewed it (person or MES)")],
    types: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional on 3.11
        typer.Option("--types", help="defect types, comma-separated: open,short,…"),
    ] = None,
    line: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="line (looked up in the audit store when omitted)"),
    ] = None,
    serial: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="board serial (looked up in the audit store when omitted)"),
    ] = None,
    outcome_id: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="idempotency key (a new one when omitted)"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Publish a review outcome (what the board really was) to boards.reviews."""
    from pydantic import ValidationError

    from infra.db import make_engine
    from linecheck.station.queries import lookup_board
    from producers.review_outcomes import publish_outcomes
    from schemas.events import DefectType, ReviewOutcome

    settings = settings_or_exit(config)
    if line is None or serial is None:
        engine = make_engine(settings.postgres.url.get_secret_value())
        try:
            found = lookup_board(engine, event_id)
        finally:
            engine.dispose()
        if found is None:
            err.print(f"[red]no audit row for event {event_id!r}: give --line and --serial[/red]")
            raise typer.Exit(2)
        line, serial = line or found[0], serial or found[1]
    try:
        kinds = [DefectType(t.strip()) for t in types.split(",") if t.strip()] if types else []
        fields: dict[str, object] = {"outcome_id": outcome_id} if outcome_id else {}
        outcome = ReviewOutcome(
            event_id=event_id,
            line=line,
            board_serial=serial,
            defective=defective,
            defect_types=kinds,
            reviewer=reviewer,
            **fields,  # type: ignore[arg-type]
        )
    except (ValueError, ValidationError) as exc:
        err.print(f"[red]invalid review outcome:[/red] {exc}")
        raise typer.Exit(2) from exc
    publish_outcomes(settings, [outcome])
    print(outcome.outcome_id)


def review_queue(
    limit: Annotated[int, typer.Option(min=1, help="at most this many boards")] = 50,
    line: Annotated[Optional[str], typer.Option(help="only this line")] = None,  # noqa: UP045
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    config: ConfigOption = None,
) -> None:
    """Boards awaiting review, oldest first: sent to review, or drawn for the audit sample."""
    from rich.table import Table

    from infra.db import make_engine
    from linecheck.station.queries import review_queue as queue

    settings = settings_or_exit(config)
    engine = make_engine(settings.postgres.url.get_secret_value())
    try:
        rows = queue(engine, limit=limit, line=line)
    finally:
        engine.dispose()
    if as_json:
        for row in rows:
            print(json.dumps(row, default=str))
        return
    table = Table(title=f"awaiting review ({len(rows)})")
    for column in ("event_id", "line", "board_serial", "product", "verdict", "why", "decided_at"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("event_id", "line", "board_serial", "product",
                                              "verdict", "why", "decided_at")))  # fmt: skip
    err.print(table)


def review_sink(config: ConfigOption = None) -> None:
    """Run the review sink: outcomes joined with verdicts, drift windows, alerts."""
    import asyncio

    from workers.review_sink import create_review_sink_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = settings_or_exit(config)
    asyncio.run(create_review_sink_app(settings).run())


def report(
    out: Annotated[Path, typer.Option("--out", help="HTML file to write")],
    hours: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="only the last H hours (default: all data)"),
    ] = None,
    embedded: Annotated[
        bool, typer.Option(help="read the embedded PostgreSQL the demo left in work_dir/pg")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Write the quality report (plots and tables from the dashboards' SQL) as one HTML file."""
    from dashboards.report import write_report

    settings = settings_or_exit(config)
    try:
        if embedded:
            from linecheck.embedded import demo_postgres

            with demo_postgres(settings.work_dir) as url:
                live = settings.model_copy(deep=True)
                live.postgres.url = SecretStr(url)
                write_report(live, out, hours=hours)
        else:
            write_report(settings, out, hours=hours)
    except ValueError as exc:
        err.print(f"[red]no report:[/red] {exc}")
        raise typer.Exit(1) from exc
    err.print(f"wrote {out}")


@dashboards_app.command("export")
def dashboards_export(
    out: Annotated[Path, typer.Argument(help="folder for the dashboard JSON files")],
) -> None:
    """Write the dashboards' JSON (for Grafana file provisioning)."""
    from dashboards import all_dashboards

    out.mkdir(parents=True, exist_ok=True)
    for uid, model in all_dashboards().items():
        path = out / f"{uid}.json"
        path.write_text(json.dumps(model, indent=2, sort_keys=True) + "\n")
        err.print(f"wrote {path}")


@dashboards_app.command("push")
def dashboards_push(
    url: Annotated[str, typer.Option(help="Grafana URL, e.g. http://localhost:3000")],
    token: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(envvar="GRAFANA_TOKEN", help="service-account token (else basic auth)"),
    ] = None,
    user: Annotated[str, typer.Option(help="basic-auth user when no token")] = "admin",
    password: Annotated[
        str, typer.Option(envvar="GRAFANA_PASSWORD", help="basic-auth password")
    ] = "admin",
    config: ConfigOption = None,
) -> None:
    """Provision the PostgreSQL datasource and both dashboards through Grafana's HTTP API."""
    from dashboards.provision import provision

    settings = settings_or_exit(config)
    done = provision(
        url, settings.postgres.url.get_secret_value(), token=token, basic=(user, password)
    )
    for line in done:
        err.print(line)


def register(app: typer.Typer) -> None:
    app.command()(review)
    app.command("review-queue")(review_queue)
    app.command("review-sink")(review_sink)
    app.command()(report)
    app.add_typer(dashboards_app, name="dashboards")
