"""`linecheck products …`: the product registry (``inspection.products``): how each product
is inspected, with which model and which default template. Workers read it within
``model.refresh_s``; a product without an entry (and without a ``*`` entry) is a dead letter."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from infra.settings import Settings
from inspection.model.stages import ALL_PRODUCTS, StageError, StageStore
from inspection.products import ProductError, ProductStore
from linecheck.cli.common import ConfigOption, audit_store, err, settings_or_exit
from linecheck.cli.registry import ByOption, who_is

products_app = typer.Typer(
    no_args_is_help=True,
    help="The product registry: per product, the inspection mode (reference, locator, "
    "anomaly), its model and its default template.",
)


@contextlib.contextmanager
def _stores(settings: Settings) -> Iterator[tuple[ProductStore, StageStore]]:
    from infra.db import make_engine, prepare

    with audit_store(settings) as url:
        prepare(url, migrate=False)
        engine = make_engine(url)
        try:
            yield ProductStore(engine), StageStore(engine)
        finally:
            engine.dispose()


def _model_mode(settings: Settings, version: str) -> str:
    """The inspection mode model ``version`` serves, or exit 2 naming what is missing."""
    from inspection.model.registry import load_card

    try:
        card = load_card(settings.model.models_dir / version)
    except (FileNotFoundError, ValueError) as exc:
        err.print(f"[red]no usable model {version!r} in {settings.model.models_dir}: {exc}[/red]")
        raise typer.Exit(2) from exc
    if card.thresholds is None:
        err.print(f"[red]model {version} has no thresholds: calibrate it first[/red]")
        raise typer.Exit(2)
    return card.mode


def products_rows(settings: Settings) -> list[dict[str, Any]]:
    """Each registered product with its mode, template and the model that serves it."""
    with _stores(settings) as (store, stages):
        entries = store.entries()
        active = stages.active()
    rows = []
    for product, entry in entries.items():
        own = active.get(product)
        rows.append(
            {
                "product": product,
                "mode": entry.mode,
                "model": own or active.get(ALL_PRODUCTS) or settings.model.version,
                "model_is_own": own is not None,
                "template_id": entry.template_id,
                "changed_by": entry.changed_by,
                "changed_at": entry.changed_at.isoformat() if entry.changed_at else None,
                "note": entry.note,
            }
        )
    return rows


@products_app.command("list")
def products_list(
    as_json: Annotated[bool, typer.Option("--json")] = False, config: ConfigOption = None
) -> None:
    """Every registered product: mode, model, default template, who set it."""
    settings = settings_or_exit(config)
    rows = products_rows(settings)
    if as_json:
        print(json.dumps({"products": rows}))
        return
    table = Table(title="product registry")
    for column in ("product", "mode", "model", "template", "changed", "note"):
        table.add_column(column)
    for r in rows:
        model = r["model"] + ("" if r["model_is_own"] else " (default)")
        changed = f"{(r['changed_at'] or '')[:19]} by {r['changed_by']}"
        table.add_row(r["product"], r["mode"], model, r["template_id"] or "—", changed, r["note"])
    err.print(table)
    if not rows:
        err.print("[yellow]no products registered: every board is a dead letter[/yellow]")


@products_app.command("set")
def products_set(
    product: Annotated[str, typer.Argument(help="the product ('*': every unregistered one)")],
    mode: Annotated[str, typer.Option(help="reference | locator | anomaly")] = "reference",
    model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="model version to serve the product (promoted for it)"),
    ] = None,
    template: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="template id for boards whose event names none (reference mode)"),
    ] = None,
    note: Annotated[str, typer.Option(help="why (recorded)")] = "",
    by: ByOption = None,
    config: ConfigOption = None,
) -> None:
    """Register PRODUCT (or change its entry): its mode, and optionally its model and template."""
    from infra.object_store import ObjectStore

    settings = settings_or_exit(config)
    if (
        template is not None
        and ObjectStore(settings.images.object_store).get_template(template) is None
    ):
        err.print(
            f"[red]template {template!r} is not in the object store: add it with "
            f"`linecheck templates add {template} FILE` first[/red]"
        )
        raise typer.Exit(2)
    who = who_is(by)
    with _stores(settings) as (store, stages):
        active = stages.active()
        serving = model or active.get(product) or active.get(ALL_PRODUCTS) or settings.model.version
        served_mode = _model_mode(settings, serving)
        if served_mode != mode:
            err.print(
                f"[red]{product!r} would be inspected in {mode} mode by {serving}, which serves "
                f"{served_mode}: give --model with a {mode} model[/red]"
            )
            raise typer.Exit(2)
        try:
            before = store.set(product, mode, who, template, note)
            if model is not None and active.get(product) != model:
                stages.promote(model, who, product, note=f"products set {product} --mode {mode}")
        except (ProductError, StageError) as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
    was = f" (was {before.mode}, template {before.template_id or '—'})" if before else " (new)"
    err.print(f"{product!r}: {mode}, model {serving}, template {template or '—'}{was}")
    err.print("workers follow within model.refresh_s, between batches")


@products_app.command("remove")
def products_remove(product: str, config: ConfigOption = None) -> None:
    """Take PRODUCT off the registry: its boards become dead letters until it is set again."""
    settings = settings_or_exit(config)
    with _stores(settings) as (store, _):
        try:
            entry = store.remove(product)
        except ProductError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
    err.print(f"{product!r} removed (was {entry.mode}); its boards are now dead letters")


def register(app: typer.Typer) -> None:
    app.add_typer(products_app, name="products")
