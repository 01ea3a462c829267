"""Commands for running a line day to day: golden boards (`templates`), one message through
the worker's code offline (`inspect`), the dead letters (`deadletters list|replay`) and the
live counters (`stats rebuild`)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from linecheck.cli.common import ConfigOption, err, settings_or_exit

if TYPE_CHECKING:
    from infra.settings import Settings
    from schemas.events import DeadLetter

templates_app = typer.Typer(no_args_is_help=True, help="Golden boards (templates) in the store.")
deadletters_app = typer.Typer(no_args_is_help=True, help="The dead-letter topic.")
stats_app = typer.Typer(no_args_is_help=True, help="The live counters in Redis.")

StageOption = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional
    typer.Option(help="only this stage (decode, validate, image, template, …)"),
]
SinceOption = Annotated[
    Optional[datetime],  # noqa: UP045
    typer.Option(help="only dead letters from this time on (ISO 8601, UTC when naive)"),
]


@templates_app.command("add")
def templates_add(
    template_id: Annotated[str, typer.Argument(help="the id events name in template_id")],
    image: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="image file")],
    config: ConfigOption = None,
) -> None:
    """Add or replace a golden board: checked under the image policy, stored as 8-bit PNG."""
    from infra.images import ImageDecodeError, decode_gray, encode_png
    from infra.object_store import ObjectStore, StorageError

    settings = settings_or_exit(config)
    store = ObjectStore(settings.images.object_store)
    try:
        gray = decode_gray(image.read_bytes(), f"template {image}", settings.images.policy)
        path = store.put_template(template_id, encode_png(gray))
    except (ImageDecodeError, StorageError) as exc:
        err.print(f"[red]not added:[/red] {exc}")
        raise typer.Exit(1) from exc
    err.print(f"template {template_id} ({gray.shape[1]}x{gray.shape[0]}) → {path}")


@templates_app.command("list")
def templates_list(config: ConfigOption = None) -> None:
    """Every template id in the object store, with its size."""
    from infra.images import read_header
    from infra.object_store import ObjectStore

    settings = settings_or_exit(config)
    store = ObjectStore(settings.images.object_store)
    table = Table("template id", "pixels", "bytes")
    for template_id in store.template_ids():
        data = store.template_path(template_id).read_bytes()
        header = read_header(data, template_id)
        table.add_row(template_id, f"{header.width}x{header.height}", str(len(data)))
    err.print(table)


@templates_app.command("remove")
def templates_remove(
    template_id: Annotated[str, typer.Argument(help="template id")],
    config: ConfigOption = None,
) -> None:
    """Remove a golden board (boards naming it are then dead-lettered, stage template)."""
    from infra.object_store import ObjectStore

    settings = settings_or_exit(config)
    if not ObjectStore(settings.images.object_store).remove_template(template_id):
        err.print(f"[red]no template {template_id!r}[/red]")
        raise typer.Exit(1)
    err.print(f"removed template {template_id}")


def inspect(
    message: Annotated[str, typer.Argument(help="a file holding one raw event, or - for stdin")],
    config: ConfigOption = None,
) -> None:
    """Run the worker's exact per-event code on one raw message, with the configured model
    and store; print the Verdict or DeadLetter JSON. Exit 0: a verdict; 3: a dead letter."""
    from schemas.events import Verdict
    from workers.inspection_processes import build_inspector
    from workers.inspector import SourceInfo

    settings = settings_or_exit(config)
    raw = sys.stdin.buffer.read() if message == "-" else Path(message).read_bytes()
    inspector = build_inspector(settings)
    result = inspector.process(raw, SourceInfo(topic=settings.topics.flagged))
    print(result.model_dump_json(indent=2))
    raise typer.Exit(0 if isinstance(result, Verdict) else 3)


def _dead_letters(
    settings: Settings, stage: str | None, since: datetime | None
) -> list[DeadLetter]:
    """The dead letters on the topic, oldest first, of ``stage`` and from ``since`` when given."""
    from datetime import UTC

    from infra.kafka_admin import read_topic
    from schemas.events import DeadLetter

    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    out: list[DeadLetter] = []
    for value in read_topic(settings.kafka.bootstrap_servers, settings.topics.deadletter):
        try:
            letter = DeadLetter.model_validate_json(value)
        except ValueError:
            continue  # not ours to interpret: the review sink logs such records
        if (stage is None or letter.stage == stage) and (
            since is None or letter.failed_at >= since
        ):
            out.append(letter)
    return out


@deadletters_app.command("list")
def deadletters_list(
    stage: StageOption = None,
    since: SinceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    config: ConfigOption = None,
) -> None:
    """The dead letters on the topic, oldest first: when, stage, event id and why."""

    settings = settings_or_exit(config)
    letters = _dead_letters(settings, stage, since)
    if as_json:
        for d in letters:
            print(d.model_dump_json(exclude={"original_b64"}))
        return
    table = Table("failed at", "source", "stage", "event id", "reason")
    for d in letters:
        table.add_row(
            d.failed_at.isoformat(timespec="seconds"),
            f"{d.source_topic}/{d.partition}@{d.offset}",
            d.stage,
            d.event_id or "—",
            d.reason[:120],
        )
    err.print(table)
    err.print(f"{len(letters)} dead letter(s)")


@deadletters_app.command("replay")
def deadletters_replay(
    stage: StageOption = None,
    since: SinceOption = None,
    dry_run: Annotated[bool, typer.Option(help="say what would be replayed, send nothing")] = False,
    config: ConfigOption = None,
) -> None:
    """Re-publish the original bytes of dead-lettered board events to boards.flagged, with
    their keys, once the cause is fixed (e.g. the missing template added). Already decided
    events keep their verdict (the audit store dedupes on the event id)."""

    from infra.object_store import ObjectStore
    from producers.publisher import BoardPublisher
    from workers.messages import original_of

    settings = settings_or_exit(config)
    letters = [
        d
        for d in _dead_letters(settings, stage, since)
        if d.source_topic == settings.topics.flagged
    ]
    if dry_run:
        for d in letters:
            err.print(f"would replay {d.event_id or '(no id)'} ({d.stage}: {d.reason[:80]})")
        err.print(f"{len(letters)} to replay")
        return
    store = ObjectStore(settings.images.object_store)
    publisher = BoardPublisher.for_settings(settings, store)
    try:
        for d in letters:
            key = d.key.encode() if d.key is not None else None
            publisher.send_raw(original_of(d, store), key=key)
        publisher.flush()
    finally:
        publisher.close()
    err.print(f"replayed {len(letters)} dead letter(s) to {settings.topics.flagged}")


@stats_app.command("rebuild")
def stats_rebuild(config: ConfigOption = None) -> None:
    """Recompute the live counters from the audit store (after Redis was flushed or down)."""
    from workers.audit_sink import LiveStats, rebuild_live_stats

    settings = settings_or_exit(config)
    stats = LiveStats(
        settings.redis.url.get_secret_value(),
        settings.redis.key_prefix,
        settings.redis.window_s,
        settings.redis.timeout_s,
    )
    try:
        totals = rebuild_live_stats(stats, settings.postgres.url.get_secret_value())
    finally:
        stats.close()
    print(json.dumps(totals))


def register(app: typer.Typer) -> None:
    app.add_typer(templates_app, name="templates")
    app.add_typer(deadletters_app, name="deadletters")
    app.add_typer(stats_app, name="stats")
    app.command("inspect")(inspect)
