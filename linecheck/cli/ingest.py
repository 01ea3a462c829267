"""`linecheck watch`: folder ingest for test machines that can only write image files, and
(`--sort OUT`) the results filed back into folders and a CSV log."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from linecheck.cli.common import ConfigOption, err, settings_or_exit

if TYPE_CHECKING:
    from infra.object_store import ObjectStore
    from infra.settings import Settings
    from producers.folder_watch import DeadLetterMaker, FileResult, FolderWatcher, WatchOptions
    from schemas.events import DeadLetter
    from workers.sorter import VerdictSorter

_STYLE = {
    "published": "green",
    "republished": "yellow",
    "moved": "cyan",
    "rejected": "red",
    "unreadable": "magenta",
}


def folder_dead_letters(settings: Settings, folder: Path, store: ObjectStore) -> DeadLetterMaker:
    """Dead letters of refused files, built as the workers build theirs
    (``workers.messages.dead_letter``): source ``folder:<DIR>``, a large original claim-checked."""
    from workers.messages import dead_letter, default_worker_name

    source = f"folder:{folder.resolve()}"
    worker = f"watch:{default_worker_name()}"

    def make(raw: bytes, *, key: bytes | None, stage: str, reason: str) -> DeadLetter:
        return dead_letter(
            raw,
            topic=source,
            partition=None,
            offset=None,
            key=key,
            stage=stage,
            reason=reason,
            event_id=None,
            worker=worker,
            store=store,
            inline_max_bytes=settings.images.inline_max_bytes,
        )

    return make


def build_watcher(
    settings: Settings,
    options: WatchOptions,
    store: ObjectStore | None = None,
    report: Callable[[FileResult], None] | None = None,
) -> FolderWatcher:
    """The watcher of ``options.folder`` on the settings' broker, store and image policy.
    Raises pydantic's ValidationError for a line, machine, product or template id that
    cannot be in an event."""
    from infra.object_store import ObjectStore
    from producers.folder_watch import FolderWatcher

    store = store or ObjectStore(settings.images.object_store)
    dead = folder_dead_letters(settings, options.folder, store)
    return FolderWatcher.for_settings(settings, options, dead, store, report)


def _print(result: FileResult) -> None:
    from rich.markup import escape  # file names are data, not markup

    style = _STYLE[result.outcome]
    detail = escape(result.event_id or result.reason or "")
    err.print(f"[{style}]{result.outcome:>11}[/{style}] {escape(result.name)}  {detail}")


class _SorterThread(threading.Thread):
    """Runs the verdict consumer; an error ends the watch instead of dying silently."""

    def __init__(self, settings: Settings, sorter: VerdictSorter, stop: threading.Event) -> None:
        super().__init__(name="linecheck-sorter", daemon=True)
        self.settings, self.sorter, self.stop = settings, sorter, stop
        self.error: BaseException | None = None

    def run(self) -> None:
        from workers.sorter import consume_verdicts

        try:
            consume_verdicts(self.settings, self.sorter, self.stop)
        except BaseException as exc:
            self.error = exc
            self.stop.set()


def watch(
    folder: Annotated[
        Path, typer.Argument(exists=True, file_okay=False, help="the folder the machine writes")
    ],
    line: Annotated[str, typer.Option(help="line of every board from this folder")],
    machine: Annotated[str, typer.Option(help="the test machine writing the folder")],
    product: Annotated[str, typer.Option(help="product of every board from this folder")],
    template_id: Annotated[Optional[str], typer.Option(help="reference template id")] = None,  # noqa: UP045
    delete: Annotated[
        bool, typer.Option(help="delete published files instead of moving them to .published/")
    ] = False,
    sort: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--sort",
            file_okay=False,
            help="file inspected images into OUT/pass|fail|review/ and log them to "
            "OUT/verdicts.csv",
        ),
    ] = None,
    settle_s: Annotated[
        float, typer.Option(min=0.0, help="a file is complete once unchanged for this long")
    ] = 1.0,
    once: Annotated[
        bool, typer.Option(help="publish the files there now and exit (with --sort: once filed)")
    ] = False,
    sort_wait_s: Annotated[
        float, typer.Option(min=0.0, help="with --once --sort: longest wait for the verdicts")
    ] = 120.0,
    config: ConfigOption = None,
) -> None:
    """Publish the image files a test machine drops into FOLDER (file stem = board serial),
    each once completely written; never twice, across restarts too. Unreadable files are
    dead-lettered and moved to FOLDER/.rejected/. Ctrl-C or SIGTERM stops cleanly."""
    from pydantic import ValidationError

    from infra.kafka_admin import ensure_topics
    from infra.object_store import ObjectStore
    from producers.folder_watch import WatchOptions
    from producers.publisher import PublishError

    settings = settings_or_exit(config)
    ensure_topics(settings.kafka.bootstrap_servers, settings.topics, settings.kafka.partitions)
    store = ObjectStore(settings.images.object_store)
    options = WatchOptions(folder, line, machine, product, template_id, delete, settle_s)
    counts: Counter[str] = Counter()

    def report(result: FileResult) -> None:
        counts[result.outcome] += 1
        _print(result)

    try:
        watcher = build_watcher(settings, options, store, report)
    except ValidationError as exc:
        err.print(f"[red]invalid option:[/red] {exc}")
        raise typer.Exit(2) from exc
    stop = threading.Event()
    restore = _stop_on_signals(stop)
    sorter_thread: _SorterThread | None = None
    code = 0
    try:
        if sort is not None:
            from workers.sorter import VerdictSorter, sorter_group

            sorter = VerdictSorter(sort, watcher.journal.get, store)
            sorter_thread = _SorterThread(settings, sorter, stop)
            sorter_thread.start()
            err.print(f"sorting verdicts into {sort} (offsets of group {sorter_group(settings)})")
        if once:
            results = watcher.run_once(stop)
            if sorter_thread is not None:
                filed = sorter_thread.sorter.filed
                ids = {r.event_id for r in results if r.event_id}
                deadline = time.monotonic() + sort_wait_s
                while not ids <= filed and time.monotonic() < deadline and not stop.is_set():
                    stop.wait(0.25)
                if ids - filed:
                    err.print(f"[yellow]{len(ids - filed)} verdict(s) not filed yet[/yellow]")
                    code = 1
        else:
            err.print(f"watching {watcher.folder} (Ctrl-C to stop)")
            watcher.run(stop)
    except PublishError as exc:
        err.print(f"[red]not published:[/red] {exc}")
        code = 1
    finally:
        stop.set()
        if sorter_thread is not None:
            sorter_thread.join(30)
        watcher.close()
        restore()
    err.print(", ".join(f"{n} {outcome}" for outcome, n in counts.items()) or "no files")
    if sorter_thread is not None and sorter_thread.error is not None:
        err.print(f"[red]sorter failed:[/red] {sorter_thread.error!r}")
        code = 1
    raise typer.Exit(code)


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGINT and SIGTERM set ``stop`` (on the main thread only, where Python allows it);
    the returned function puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda *_: stop.set())

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    return restore


def register(app: typer.Typer) -> None:
    app.command("watch")(watch)
