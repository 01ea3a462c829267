"""`linecheck models …`: the model registry's stages (shared by every worker through the
audit store) and carrying a model as one file."""

from __future__ import annotations

import contextlib
import getpass
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from infra.settings import Settings
from inspection.model.stages import ALL_PRODUCTS, StageError, StageStore
from linecheck.cli.common import ConfigOption, audit_store, err, settings_or_exit

models_app = typer.Typer(
    no_args_is_help=True,
    help="Model stages (candidate, shadow, active, retired) per product; compare, export, import.",
)
ProductOption = Annotated[
    str, typer.Option(help="the product ('*': every product without its own active model)")
]
ByOption = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional on 3.11
    typer.Option("--by", help="who makes the change (recorded; default: the OS user)"),
]


def who_is(by: str | None) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "unknown"


def _require_model(settings: Settings, version: str) -> Path:
    """The model's folder, or exit 2 naming the models folder."""
    folder = settings.model.models_dir / version
    if not (folder / "model.json").is_file():
        err.print(f"[red]no model {version!r} in {settings.model.models_dir}[/red]")
        raise typer.Exit(2)
    return folder


@contextlib.contextmanager
def stage_store(config: Path | None) -> Iterator[StageStore]:
    from infra.db import make_engine, prepare

    settings = settings_or_exit(config)
    with audit_store(settings) as url:
        prepare(url, migrate=False)
        engine = make_engine(url)
        try:
            yield StageStore(engine)
        finally:
            engine.dispose()


def _change(config: Path | None, action: str, who: str, product: str, version: str = "") -> None:
    """Promote, roll back, or set another stage; the outcome or the refusal on stderr."""
    with stage_store(config) as stages:
        try:
            if action == "promote":
                old = stages.promote(version, who, product)
                err.print(
                    f"{version} is active for {product!r}" + (f"; {old} retired" if old else "")
                )
            elif action == "rollback":
                current, previous = stages.rollback(who, product)
                err.print(f"{previous} is active again for {product!r}; {current} retired")
            else:
                before = stages.set_stage(version, action, who, product)
                err.print(f"{version}: {before or 'unstaged'} → {action} for {product!r}")
        except StageError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
    err.print("workers switch within model.refresh_s, between batches")


@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json")] = False, config: ConfigOption = None
) -> None:
    """Every registered model with its stage per product."""
    from inspection.model.registry import list_versions, load_card

    settings = settings_or_exit(config)
    with stage_store(config) as stages:
        rows = stages.rows()
    staged: dict[str, list[str]] = {}
    for row in rows:
        staged.setdefault(row.model_version, []).append(f"{row.stage} ({row.product})")
    models: list[dict[str, Any]] = []
    for version in list_versions(settings.model.models_dir):
        card = load_card(settings.model.models_dir / version)
        models.append(
            {
                "version": version,
                "mode": card.mode,
                "arch": card.arch,
                "head": card.head,
                "crop_views": list(card.crop_sides),  # px; two or more: a model of views
                "created_at": card.created_at.isoformat(),
                "stages": staged.pop(version, []),
            }
        )
    if as_json:
        print(json.dumps({"models": models, "not_here": staged}))
        return
    table = Table(title=f"models in {settings.model.models_dir}")
    for column in ("version", "mode", "arch", "head", "crop views", "created", "stages"):
        table.add_column(column)
    for m in models:
        table.add_row(
            *(m[k] for k in ("version", "mode", "arch", "head")),
            "+".join(f"{side}" for side in m["crop_views"]) + " px",
            m["created_at"][:19],
            ", ".join(m["stages"]) or "—",
        )
    err.print(table)
    for version, stage in staged.items():
        err.print(
            f"[yellow]{version} is staged ({', '.join(stage)}) but not in this models_dir[/yellow]"
        )


@models_app.command("show")
def models_show(version: str, config: ConfigOption = None) -> None:
    """A model's card and its stage history."""
    from inspection.model.registry import load_card

    settings = settings_or_exit(config)
    card = load_card(settings.model.models_dir / version)
    with stage_store(config) as stages:
        history = stages.history(version)
    print(
        json.dumps(
            {"card": card.model_dump(mode="json"), "history": history}, default=str, indent=2
        )
    )


@models_app.command("promote")
def models_promote(
    version: str,
    product: ProductOption = ALL_PRODUCTS,
    by: ByOption = None,
    config: ConfigOption = None,
) -> None:
    """Make VERSION the active model (the one it replaces is retired)."""
    from inspection.model.registry import load_card

    mode = load_card(_require_model(settings_or_exit(config), version)).mode
    if product == ALL_PRODUCTS and mode != "reference":
        err.print(
            f"[red]{version} is a {mode} model: it serves the products registered for it, not "
            f"every product; use `linecheck products set PRODUCT --mode {mode} --model "
            f"{version}`[/red]"
        )
        raise typer.Exit(2)
    _change(config, "promote", who_is(by), product, version)


@models_app.command("rollback")
def models_rollback(
    product: ProductOption = ALL_PRODUCTS,
    by: ByOption = None,
    config: ConfigOption = None,
) -> None:
    """Reactivate the model that was active before the current one."""
    _change(config, "rollback", who_is(by), product)


@models_app.command("shadow")
def models_shadow(
    version: str,
    product: ProductOption = ALL_PRODUCTS,
    by: ByOption = None,
    config: ConfigOption = None,
) -> None:
    """Score every board with VERSION beside the active model; stored, never published."""
    _require_model(settings_or_exit(config), version)
    _change(config, "shadow", who_is(by), product, version)


@models_app.command("compare")
def models_compare(
    a: Annotated[str, typer.Argument(help="a model version (e.g. the active one)")],
    b: Annotated[str, typer.Argument(help="another (e.g. its shadow)")],
    since: Annotated[
        Optional[datetime],  # noqa: UP045
        typer.Option(help="only boards decided since (ISO time, UTC if no zone)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    config: ConfigOption = None,
) -> None:
    """Two models on the same boards: agreement, disagreements, FNR/FPR on reviewed boards
    (95% Wilson intervals), classify latency."""
    from dashboards.model_compare import compare_models
    from infra.db import make_engine

    settings = settings_or_exit(config)
    start = since or datetime(1970, 1, 1, tzinfo=UTC)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    with audit_store(settings) as url:
        engine = make_engine(url)
        try:
            found = compare_models(engine, a, b, start, z=settings.quality.z)
        finally:
            engine.dispose()
    if as_json:
        print(json.dumps(found, default=str))
        return
    if not found["boards"]:
        err.print(f"[yellow]no board was decided by both {a} and {b}[/yellow]")
        raise typer.Exit(1)
    table = Table(title=f"{a} vs {b}: {found['boards']} boards, agreement {found['agreement']:.4f}")
    for column in ("model", "FNR [95%]", "FPR [95%]", "reviewed +/−", "classify ms p50/p99"):
        table.add_column(column)
    for model in (a, b):
        r, ms = found["rates"][model], found["classify_ms"][model]

        def rate(name: str, r: dict[str, Any] = r) -> str:
            if r[name] is None:
                return "—"
            lo, hi = r[f"{name}_interval"]
            return f"{r[name]:.4f} [{lo:.4f}, {hi:.4f}]"

        table.add_row(
            model, rate("fnr"), rate("fpr"),
            f"{r['reviewed_defective']}/{r['reviewed_good']}",
            f"{ms['p50']:.2f}/{ms['p99']:.2f}",
        )  # fmt: skip
    err.print(table)
    for d in found["disagreeing_boards"]:
        err.print(
            f"  {d['event_id']}  {d['line']} {d['board_serial']}: {a} {d['a_verdict']}, "
            f"{b} {d['b_verdict']}  (station: /boards/{d['event_id']})"
        )


@models_app.command("retire")
def models_retire(
    version: str,
    product: ProductOption = ALL_PRODUCTS,
    by: ByOption = None,
    config: ConfigOption = None,
) -> None:
    """Retire VERSION (an active model is replaced by promoting another, not retired)."""
    _change(config, "retired", who_is(by), product, version)


@models_app.command("export")
def models_export(
    version: str,
    out: Annotated[Path, typer.Argument(help="archive to write (.tar.gz)")],
    config: ConfigOption = None,
) -> None:
    """Write VERSION as one checksummed file, to carry to a line PC."""
    from inspection.model.archive import export_model

    settings = settings_or_exit(config)
    folder = _require_model(settings, version)
    manifest = export_model(folder, out)
    err.print(f"wrote {out}: {version}, {len(manifest['files'])} files with SHA-256")  # type: ignore[arg-type]


@models_app.command("import")
def models_import(
    archive: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    by: ByOption = None,
    config: ConfigOption = None,
) -> None:
    """Verify an exported model and register it as a candidate."""
    from inspection.model.archive import ArchiveError, import_model

    settings = settings_or_exit(config)
    try:
        folder = import_model(archive, settings.model.models_dir)
    except ArchiveError as exc:
        err.print(f"[red]not imported:[/red] {exc}")
        raise typer.Exit(1) from exc
    with stage_store(config) as stages:
        if not any(r.model_version == folder.name for r in stages.rows()):
            stages.set_stage(
                folder.name, "candidate", who_is(by), ALL_PRODUCTS, f"imported from {archive.name}"
            )
    err.print(f"imported {folder.name} into {folder.parent} as a candidate")
    print(folder.name)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
