"""Folder ingest: publish the image files a test machine drops into a folder.

Each file, once completely written (size and mtime unchanged over ``settle_s``, and it opens),
is checked as a worker would (image policy, full decode, the file stem as board serial), put
in the object store and published by claim check (always), then moved to ``DIR/.published/``
(or deleted). A file that cannot be a board is dead-lettered (source ``folder:<DIR>``) and
moved to ``DIR/.rejected/``, so that it is not retried forever. Names starting with a dot or
ending in ``.tmp``, ``.part`` and the like (writers' temporary files) are left alone.

Restarts: a journal (SQLite, ``DIR/.linecheck-watch/journal.sqlite3``) records each file's
name, content hash, event id and exact event JSON *before* the send (``intent``), then
``published`` once the broker acknowledged it and ``done`` once the file is moved. A file met
again finds its entry: an ``intent`` is sent again byte for byte (same id and payload, which
workers decide once), a ``published`` or ``done`` one is only moved. Only a crash between a
send and the record of its ack puts an event on the topic twice, and then identically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Protocol

from pydantic import TypeAdapter, ValidationError
from watchdog.events import FileSystemEvent, FileSystemEventHandler

from infra.images import DEFAULT_POLICY, ImageDecodeError, ImagePolicy, check_size, decode_gray
from producers.watch_journal import Journal, JournalEntry, SettleTracker, journal_path
from schemas.events import DeadLetter, FlaggedBoard

if TYPE_CHECKING:
    from infra.object_store import ObjectStore
    from infra.settings import Settings
    from producers.publisher import BoardPublisher

log = logging.getLogger("linecheck.watch")

PUBLISHED_DIR = ".published"
REJECTED_DIR = ".rejected"
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "BMP": "image/bmp", "TIFF": "image/tiff"}
_PARTIAL = (".tmp", ".part", ".partial", ".crdownload", ".filepart", "~")
_SERIAL: TypeAdapter[str] = TypeAdapter(Annotated[str, FlaggedBoard.model_fields["board_serial"]])

Outcome = Literal["published", "republished", "moved", "rejected", "unreadable"]


def watched(name: str) -> bool:
    """Whether a file name is one to publish: not hidden, not a writer's temporary name."""
    return not name.startswith(".") and not name.lower().endswith(_PARTIAL)


def event_id_for(line: str, machine: str, name: str, sha256: str) -> str:
    """The event id of a file: the same name and content from the same machine is the same
    event, before and after a restart."""
    key = "\0".join((line, machine, name, sha256)).encode()
    return "fw-" + hashlib.sha256(key).hexdigest()[:40]


class DeadLetterMaker(Protocol):
    """Builds the dead letter of a refused file. The caller wires it from
    ``workers.messages.dead_letter`` (producers do not import workers)."""

    def __call__(self, raw: bytes, *, key: bytes | None, stage: str, reason: str) -> DeadLetter:
        """``raw``: the file's bytes; ``key``: its name; ``stage``: image or validate."""
        ...


@dataclass(frozen=True)
class WatchOptions:
    folder: Path
    line: str
    machine: str
    product: str
    template_id: str | None = None
    delete: bool = False
    """delete published files instead of moving them to .published/"""
    settle_s: float = 1.0
    """a file is complete once its size and mtime have not changed for this long"""


@dataclass(frozen=True)
class FileResult:
    name: str
    outcome: Outcome
    event_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Pending:
    """A file whose event is in the journal, not yet finished."""

    path: Path
    entry: JournalEntry
    fresh: bool


class Rejected(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


class FolderWatcher:
    """Publishes the image files dropped into ``options.folder`` (see the module doc)."""

    def __init__(
        self,
        options: WatchOptions,
        publisher: BoardPublisher,
        dead_letters: BoardPublisher,
        make_dead_letter: DeadLetterMaker,
        policy: ImagePolicy = DEFAULT_POLICY,
        report: Callable[[FileResult], None] | None = None,
    ) -> None:
        """Raises pydantic's ValidationError when line, machine, product or template id
        could not be in an event."""
        FlaggedBoard.model_validate(
            {
                "line": options.line,
                "machine": options.machine,
                "product": options.product,
                "template_id": options.template_id,
                "board_serial": "x",
                "image": {"uri": "file:///x"},
            }
        )
        self.options = options
        self.folder = options.folder.resolve()
        self.publisher = publisher
        self.dead_letters = dead_letters
        self.make_dead_letter = make_dead_letter
        self.policy = policy
        self.report = report or (lambda result: None)
        self.journal = Journal(journal_path(self.folder))
        self._settle = SettleTracker(options.settle_s)
        self._changed: queue.SimpleQueue[Path] = queue.SimpleQueue()
        self._tick = max(0.05, min(0.5, options.settle_s / 4))

    @classmethod
    def for_settings(
        cls,
        settings: Settings,
        options: WatchOptions,
        make_dead_letter: DeadLetterMaker,
        store: ObjectStore | None = None,
        report: Callable[[FileResult], None] | None = None,
    ) -> FolderWatcher:
        """A watcher publishing to the settings' broker, object store and image policy."""
        from infra.object_store import ObjectStore
        from producers.publisher import BoardPublisher

        store = store or ObjectStore(settings.images.object_store)
        dead = BoardPublisher(
            settings.kafka.bootstrap_servers,
            settings.topics.deadletter,
            store,
            settings.images.inline_max_bytes,
        )
        flagged = BoardPublisher.for_settings(settings, store)
        return cls(options, flagged, dead, make_dead_letter, settings.images.policy, report)

    def close(self) -> None:
        """Flush and close both producers, then the journal."""
        try:
            self.publisher.close()
            self.dead_letters.close()
        finally:
            self.journal.close()

    def scan(self) -> list[Path]:
        """The files to publish in the folder now, by name."""
        return sorted(p for p in self.folder.iterdir() if watched(p.name) and p.is_file())

    def recover(self) -> list[FileResult]:
        """Finish the journal's unfinished entries whose file is gone from the folder (those
        still there are finished when they settle). An ``intent`` may or may not have reached
        the broker: it is sent again, identically; a ``published`` one was moved just before
        a crash."""
        present = {p.name for p in self.scan()}
        results = []
        for entry in self.journal.unfinished():
            if entry.name in present:
                continue
            if entry.state == "intent":
                self._send(entry)
                results.append(FileResult(entry.name, "republished", entry.event_id))
                self.report(results[-1])
            self.journal.mark(entry.event_id, "done")
        return results

    def prepare(self, path: Path) -> Pending:
        """Read and check ``path`` and record the intent to publish it, or find its entry
        from before a restart. A file that cannot be a board is dead-lettered, moved to
        .rejected/ and raises Rejected; one that cannot be read raises OSError."""
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        entry = self.journal.find(path.name, digest)
        if entry is not None:
            return Pending(path, entry, fresh=False)
        try:
            media_type = self._check_image(data, f"file {path.name!r}")
            serial = _check_serial(path)
        except Rejected as exc:
            self._reject(path, data, exc)
            raise
        o = self.options
        image = self.publisher.image_ref(data, media_type, claim_check=True)
        event = FlaggedBoard(
            event_id=event_id_for(o.line, o.machine, path.name, digest),
            line=o.line,
            machine=o.machine,
            product=o.product,
            board_serial=serial,
            template_id=o.template_id,
            image=image,
        )
        entry = self.journal.intend(
            event.event_id, path.name, digest, event.model_dump_json(), image.uri
        )
        return Pending(path, entry, fresh=True)

    def send(self, pending: Pending) -> None:
        """Publish the journal's event (the very JSON recorded), wait for the broker's ack
        and record it; an event already acknowledged is not sent again."""
        if pending.entry.state == "intent":
            self._send(pending.entry)
            self.journal.mark(pending.entry.event_id, "published")

    def finish(self, pending: Pending) -> None:
        """Move the published file to .published/ (or delete it) and mark it done."""
        if self.options.delete:
            pending.path.unlink(missing_ok=True)
        else:
            self._move(pending.path, PUBLISHED_DIR, pending.entry.sha256)
        self.journal.mark(pending.entry.event_id, "done")

    def handle(self, path: Path) -> FileResult | None:
        """Publish (or reject) one settled file; None when it has gone. Raises PublishError
        when the broker did not acknowledge (the file stays, and is retried)."""
        try:
            pending = self.prepare(path)
        except FileNotFoundError:
            return None
        except Rejected as exc:
            return FileResult(path.name, "rejected", reason=exc.reason)
        except OSError as exc:  # not openable (yet): locked, permissions
            return FileResult(path.name, "unreadable", reason=f"{type(exc).__name__}: {exc}")
        self.send(pending)
        self.finish(pending)
        state = pending.entry.state
        outcome: Outcome = (
            "published" if pending.fresh else "republished" if state == "intent" else "moved"
        )
        return FileResult(path.name, outcome, pending.entry.event_id)

    def poll(self, now: float | None = None, retry: bool = True) -> list[FileResult]:
        """Stat the tracked files and handle those that have settled; an unreadable one is
        tried again a settle interval later when ``retry``."""
        while not self._changed.empty():
            path = self._changed.get()
            if path not in self._settle:
                self._settle.add(path)
        now = time.monotonic() if now is None else now
        results = []
        for path in self._settle.paths:
            try:
                st = path.stat()
            except FileNotFoundError:
                self._settle.forget(path)
                continue
            if not self._settle.observe(path, st.st_size, st.st_mtime_ns, now):
                continue
            result = self.handle(path)
            self._settle.forget(path)
            if result is None:
                continue
            if retry and result.outcome == "unreadable":
                self._settle.add(path)
            results.append(result)
            self.report(result)
        return results

    def run_once(self, stop: threading.Event | None = None) -> list[FileResult]:
        """Publish the files in the folder now, each once it has settled, then return (a
        file still unreadable when it settles is reported and left)."""
        stop = stop or threading.Event()
        results = self.recover()
        for path in self.scan():
            self._settle.add(path)
        while self._settle.paths and not stop.is_set():
            results += self.poll(retry=False)
            stop.wait(self._tick)
        return results

    def run(self, stop: threading.Event, rescan_s: float = 30.0) -> None:
        """Watch until ``stop`` is set: the files already there, then each new or changed one
        (watchdog), with a rescan every ``rescan_s`` for events a file system did not report.
        A broker that does not acknowledge is retried with a backoff (1 s doubling to 30 s)."""
        from watchdog.observers import Observer

        from producers.publisher import PublishError

        observer = Observer()
        observer.schedule(_Changes(self.folder, self._changed.put), str(self.folder))
        observer.start()
        try:
            self.recover()
            last_scan, backoff = float("-inf"), 1.0
            while not stop.is_set():
                if time.monotonic() - last_scan >= rescan_s:
                    for path in self.scan():
                        self._changed.put(path)
                    last_scan = time.monotonic()
                try:
                    self.poll()
                    backoff = 1.0
                except PublishError as exc:
                    log.error("broker did not acknowledge, retrying in %.0f s: %s", backoff, exc)
                    stop.wait(backoff)
                    backoff = min(30.0, backoff * 2)
                stop.wait(self._tick)
        finally:
            observer.stop()
            observer.join(5)

    def _check_image(self, data: bytes, what: str) -> str:
        """The media type of an image the workers will accept; Rejected (stage image) else."""
        try:
            header = check_size(data, self.policy, what)
            media_type = MEDIA_TYPES.get(header.format)
            if media_type is None:
                raise Rejected(
                    "image", f"{what} is a {header.format} image; PNG, JPEG, BMP or TIFF is read"
                )
            # a truncated JPEG decodes (grey at the bottom): its end-of-image marker is missing
            if header.format == "JPEG" and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
                raise Rejected("image", f"{what} is a truncated JPEG (no end-of-image marker)")
            decode_gray(data, what, self.policy)
        except ImageDecodeError as exc:
            raise Rejected("image", str(exc)) from None
        except Rejected:
            raise
        except Exception as exc:  # whatever else these bytes do: refuse the file, go on
            raise Rejected("image", f"{what}: {type(exc).__name__}: {exc}") from None
        return media_type

    def _send(self, entry: JournalEntry) -> None:
        key = FlaggedBoard.model_validate_json(entry.event_json).key()
        self.publisher.send_raw(entry.event_json.encode(), key=key)
        self.publisher.flush()

    def _reject(self, path: Path, data: bytes, exc: Rejected) -> None:
        """Dead-letter the file (acknowledged), then move it to .rejected/."""
        letter = self.make_dead_letter(
            data, key=os.fsencode(path.name), stage=exc.stage, reason=exc.reason
        )
        self.dead_letters.send_raw(letter.model_dump_json().encode(), key=os.fsencode(path.name))
        self.dead_letters.flush()
        self._move(path, REJECTED_DIR, hashlib.sha256(data).hexdigest())
        log.info("rejected %s: %s", path.name, exc.reason)

    def _move(self, path: Path, folder: str, sha256: str) -> None:
        """Into ``folder``, under its own name unless another file has it."""
        target = self.folder / folder / path.name
        target.parent.mkdir(exist_ok=True)
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() != sha256:
            target = target.with_name(f"{path.stem}.{sha256[:12]}{path.suffix}")
        os.replace(path, target)


def _check_serial(path: Path) -> str:
    try:
        return _SERIAL.validate_python(path.stem)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise Rejected(
            "validate", f"file name {path.name!r} is not a valid board serial: {reason}"
        ) from None


class _Changes(FileSystemEventHandler):
    """Hands the paths of new, changed or moved-in files to the watcher's queue."""

    def __init__(self, folder: Path, notify: Callable[[Path], None]) -> None:
        self.folder = folder
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        # not "opened"/"closed_no_write": reading a file, the watcher would notify itself
        if event.is_directory or event.event_type not in ("created", "modified", "moved", "closed"):
            return
        raw = event.dest_path if event.event_type == "moved" else event.src_path
        path = Path(os.fsdecode(raw))
        if path.parent == self.folder and watched(path.name):
            self.notify(path)
