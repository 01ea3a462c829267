"""The `linecheck` command (typer + rich)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from linecheck.cli.common import ConfigOption, audit_store, err, settings_or_exit

if TYPE_CHECKING:
    from infra.settings import Settings
    from producers.simulator import BoardSample

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Automatic visual inspection of flagged PCBs: Kafka in, verdicts out.",
)
schemas_app = typer.Typer(no_args_is_help=True, help="Message contracts (JSON Schema).")
db_app = typer.Typer(no_args_is_help=True, help="The PostgreSQL audit store.")
app.add_typer(schemas_app, name="schemas")
app.add_typer(db_app, name="db")


@app.command()
def config(config: ConfigOption = None) -> None:
    """Validate the settings (file + LINECHECK_* environment) and print them resolved."""
    settings = settings_or_exit(config)
    from infra.settings import redacted

    print(json.dumps(redacted(settings), indent=2))


@app.command()
def worker(config: ConfigOption = None) -> None:
    """Run one inspection worker (joins the consumer group of the settings)."""
    import asyncio

    from workers.inspection_app import create_inspection_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = settings_or_exit(config)
    asyncio.run(create_inspection_app(settings).run())


@app.command()
def simulate(
    boards: Annotated[int, typer.Option(min=1)] = 100,
    rate: Annotated[Optional[float], typer.Option(help="boards/s")] = None,  # noqa: UP045
    source: Annotated[
        str,
        typer.Option(
            help="'synthetic', 'mixed' (boards with and without templates and part surfaces, "
            "each product registered for its mode; see `demo --mixed`) or a folder in "
            "DeepPCB's layout"
        ),
    ] = "synthetic",
    line: str = "L1",
    machine: str = "aoi-1",
    seed: int = 0,
    register: Annotated[
        bool,
        typer.Option(
            help="register the simulated products that are not in the product "
            "registry, for reference inspection (a product already there is left as it is)"
        ),
    ] = True,
    config: ConfigOption = None,
) -> None:
    """Publish N flagged boards at a given rate, like a line would."""
    from infra.kafka_admin import ensure_topics
    from infra.object_store import ObjectStore
    from infra.progress import progress_bar
    from producers.publisher import BoardPublisher
    from producers.simulator import deeppcb_samples, publish_boards, synthetic_samples

    settings = settings_or_exit(config)
    if source == "synthetic":
        samples = synthetic_samples(seed=seed)
    elif source == "mixed":
        samples = _mixed_line(settings, seed)
        register = False  # the mixed line registers its own products with their modes
    elif Path(source).is_dir():
        samples = deeppcb_samples(Path(source))
    else:
        err.print(
            "[red]--source must be 'synthetic', 'mixed' or an existing folder, "
            f"got {source!r}[/red]"
        )
        raise typer.Exit(2)
    ensure_topics(settings.kafka.bootstrap_servers, settings.topics, settings.kafka.partitions)
    store = ObjectStore(settings.images.object_store)
    publisher = BoardPublisher.for_settings(settings, store)
    with contextlib.ExitStack() as stack, progress_bar(err, "publishing", boards) as step:
        if register:
            samples = _registering(stack.enter_context(audit_store(settings)), samples)
        done = publish_boards(
            publisher,
            store,
            samples,
            boards,
            rate=rate,
            line=line,
            machine=machine,
            on_published=lambda n: step(completed=n),
        )
    err.print(f"published {len(done)} boards to {settings.topics.flagged}")


def _mixed_line(settings: Settings, seed: int) -> Iterator[BoardSample]:
    """The mixed line's boards, its models trained if absent and its products registered."""
    from linecheck.mixed_line import (
        ensure_mixed_models,
        line_modes,
        mixed_samples,
        register_mixed_line,
    )
    from producers.simulator import synthetic_samples

    models = ensure_mixed_models(settings, err)
    with audit_store(settings) as url:
        register_mixed_line(url, line_modes(seed), models)
    return mixed_samples(synthetic_samples(seed=seed))


def _registering(url: str, samples: Iterator[BoardSample]) -> Iterator[BoardSample]:
    """``samples``, registering each product (reference mode) before its first board; an
    audit store out of reach is said once, and the boards still go out."""
    import sqlalchemy as sa

    from inspection.products import register_products

    seen: set[str] = set()
    reachable = True
    for sample in samples:
        if reachable and sample.product not in seen:
            seen.add(sample.product)
            try:
                added = register_products(
                    url, [sample.product], "reference", "simulate", "registered by the simulator"
                )
            except sa.exc.SQLAlchemyError as exc:
                err.print(f"[yellow]products not registered (audit store: {exc})[/yellow]")
                reachable, added = False, []
            if added:
                err.print(f"registered product {sample.product!r} for reference inspection")
        yield sample


@app.command()
def publish(
    image: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="board image file")],
    line: Annotated[str, typer.Option()],
    machine: Annotated[str, typer.Option()],
    product: Annotated[str, typer.Option()],
    serial: Annotated[str, typer.Option()],
    template_id: Annotated[Optional[str], typer.Option(help="reference template id")] = None,  # noqa: UP045
    template: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="register this template file under --template-id",
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Publish one flagged board (what a line test machine calls)."""
    from infra.object_store import ObjectStore
    from producers.publisher import BoardPublisher

    settings = settings_or_exit(config)
    media = {
        ".png": "image/png",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".bmp": "image/bmp",
        ".tif": "image/tiff",
        ".tiff": "image/tiff",
    }.get(image.suffix.lower())
    if media is None:
        err.print(f"[red]unsupported image type {image.suffix!r}: use png, jpg, bmp or tif[/red]")
        raise typer.Exit(2)
    store = ObjectStore(settings.images.object_store)
    if template is not None:
        if not template_id:
            err.print("[red]--template needs --template-id[/red]")
            raise typer.Exit(2)
        from infra.images import decode_gray, encode_png

        store.put_template(
            template_id, encode_png(decode_gray(template.read_bytes(), str(template)))
        )
    publisher = BoardPublisher.for_settings(settings, store)
    event = publisher.publish(
        image.read_bytes(),
        media_type=media,
        line=line,
        machine=machine,
        product=product,
        board_serial=serial,
        template_id=template_id,
    )
    publisher.flush()
    print(event.event_id)


@schemas_app.command("export")
def schemas_export(
    out: Annotated[Path, typer.Argument(help="folder for the JSON Schemas")],
    config: ConfigOption = None,
) -> None:
    """Write the JSON Schema of every message and the workers' AsyncAPI document."""
    from schemas.events import json_schemas

    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
        err.print(f"wrote {out / f'{name}.schema.json'}")
    from workers.asyncapi import asyncapi_document

    doc = asyncapi_document(settings_or_exit(config))
    (out / "asyncapi.json").write_text(json.dumps(doc, indent=2) + "\n")
    err.print(f"wrote {out / 'asyncapi.json'} (AsyncAPI {doc['asyncapi']})")


@db_app.command("upgrade")
def db_upgrade(revision: str = "head", config: ConfigOption = None) -> None:
    """Apply the Alembic migrations to the audit store."""
    from infra.db import current_revision, upgrade

    settings = settings_or_exit(config)
    upgrade(settings.postgres.url.get_secret_value(), revision)
    err.print(
        f"audit store at revision {current_revision(settings.postgres.url.get_secret_value())}"
    )


from linecheck.cli.quality import register as _register_quality  # noqa: E402

_register_quality(app)

from linecheck.cli.models import register as _register_models  # noqa: E402

_register_models(app)

from linecheck.cli.operations import register as _register_operations  # noqa: E402

_register_operations(app)

from linecheck.cli.service import register as _register_service  # noqa: E402

_register_service(app)

from linecheck.cli.ingest import register as _register_ingest  # noqa: E402

_register_ingest(app)

from linecheck.cli.registry import register as _register_registry  # noqa: E402

_register_registry(app)

from linecheck.cli.dataset import register as _register_dataset  # noqa: E402

_register_dataset(app)


@app.command()
def chaos(
    boards: Annotated[int, typer.Option(min=1, help="good boards to publish")] = 2000,
    hostile: Annotated[int, typer.Option(min=1, help="hostile messages (30+ kinds)")] = 200,
    workers: Annotated[int, typer.Option(min=1, help="supervised worker processes")] = 3,
    rate: Annotated[float, typer.Option(min=0.1, help="messages/s published")] = 40.0,
    slow_s: Annotated[float, typer.Option(min=1.0, help="seconds worker-1 is made slow")] = 25.0,
    external: Annotated[
        bool, typer.Option(help="use the settings' servers (no server restarts)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """The worst day, repeatable: hostile input, killed workers, database and Redis
    restarts and a slow worker, then the delivery invariants. Exit 1 when one fails."""
    from linecheck.chaos import run_chaos

    settings = settings_or_exit(config)
    report = run_chaos(
        settings,
        boards=boards,
        hostile=hostile,
        workers=workers,
        rate=rate,
        slow_s=slow_s,
        external=external,
        console=err,
    )
    if as_json:
        print(json.dumps(report.as_dict()))
    else:
        table = Table(title="linecheck chaos")
        table.add_column("invariant")
        table.add_column("holds")
        for name, holds in report.invariants.items():
            table.add_row(name, "[green]yes[/green]" if holds else "[red]NO[/red]")
        err.print(table)
        for fault in report.faults:
            err.print(fault)
    if not report.ok:
        raise typer.Exit(1)


from linecheck.cli.bench import register as _register_bench  # noqa: E402

_register_bench(app)

from linecheck.cli.products import register as _register_products  # noqa: E402

_register_products(app)

from linecheck.cli.demo import register as _register_demo  # noqa: E402

_register_demo(app)

if __name__ == "__main__":  # pragma: no cover
    app(prog_name="linecheck")
