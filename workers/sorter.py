"""Sort inspected boards into folders: the results side of folder ingest (`linecheck watch
--sort OUT`), as the stand-alone classifiers on lines behind a firewall do.

A consumer of boards.verdicts (its offsets in its own group, ``<group_id>-sorter``) files
each board that ``lookup`` knows (the watcher's journal: event id → file name and claim-check
URI) into ``OUT/pass|fail|review/`` and appends one line to ``OUT/verdicts.csv``. The CSV is
its own ledger: event ids already in it are skipped, so a redelivered verdict adds no second
line; a line is written and fsynced before its offset is committed. Verdicts of other boards
are passed over.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import ValidationError

from infra.object_store import ObjectStore, StorageError
from schemas.events import Verdict, VerdictLabel

if TYPE_CHECKING:
    from infra.settings import Settings

log = logging.getLogger("linecheck.sorter")

CSV_NAME = "verdicts.csv"
CSV_FIELDS = (
    "event_id",
    "file",
    "line",
    "serial",
    "verdict",
    "board_score",
    "n_regions",
    "model_version",
    "decided_at",
)
Filed = Literal["filed", "duplicate", "foreign", "invalid"]


class WatchedImage(Protocol):
    """What the sorter needs to know of a watched file (a journal entry has it)."""

    @property
    def name(self) -> str: ...

    @property
    def uri(self) -> str | None: ...


class VerdictSorter:
    """Files verdicts of watched boards into ``out`` (see the module doc). Not thread-safe:
    one consumer thread calls :meth:`handle`."""

    def __init__(
        self, out: Path, lookup: Callable[[str], WatchedImage | None], store: ObjectStore
    ) -> None:
        self.out = out
        self.lookup = lookup
        self.store = store
        self.csv_path = out / CSV_NAME
        for label in VerdictLabel:
            (out / label.value).mkdir(parents=True, exist_ok=True)
        self.filed: set[str] = self._read_ledger()
        self.counts: Counter[Filed] = Counter()

    def _read_ledger(self) -> set[str]:
        """The event ids already in the CSV (writing its header when new). A last line cut
        short by a crash is dropped: its verdict is redelivered, not committed."""
        if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
            self.csv_path.write_text(",".join(CSV_FIELDS) + "\n")
            return set()
        raw = self.csv_path.read_bytes()
        if not raw.endswith(b"\n"):
            raw = raw[: raw.rfind(b"\n") + 1]
            with self.csv_path.open("r+b") as f:
                f.truncate(len(raw))
        return {row["event_id"] for row in csv.DictReader(io.StringIO(raw.decode()))}

    def handle_raw(self, value: bytes) -> Filed:
        try:
            verdict = Verdict.model_validate_json(value)
        except ValidationError as exc:
            log.warning("not a verdict, passed over: %s", exc.errors()[0]["msg"])
            self.counts["invalid"] += 1
            return "invalid"
        return self.handle(verdict)

    def handle(self, verdict: Verdict) -> Filed:
        """File one verdict: ``filed``, or ``duplicate`` (already in the CSV) or ``foreign``
        (not a watched board), which change nothing."""
        outcome: Filed
        if verdict.event_id in self.filed:
            outcome = "duplicate"
        elif (source := self.lookup(verdict.event_id)) is None:
            outcome = "foreign"
        else:
            self._copy(verdict, source)
            self._append(verdict, source.name)
            self.filed.add(verdict.event_id)
            outcome = "filed"
        self.counts[outcome] += 1
        return outcome

    def _copy(self, verdict: Verdict, source: WatchedImage) -> None:
        """The image from the object store into OUT/<verdict>/, under its file name unless
        another image has it (then the event id is added)."""
        try:
            data = self.store.get(source.uri or "")
        except StorageError as exc:  # the CSV line still records the verdict
            log.warning("image of %s not filed: %s", source.name, exc)
            return
        target = self.out / verdict.verdict.value / source.name
        if target.exists() and target.read_bytes() != data:
            target = target.with_name(f"{target.stem}.{verdict.event_id[-12:]}{target.suffix}")
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def _append(self, verdict: Verdict, name: str) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(
            [
                verdict.event_id,
                name,
                verdict.line,
                verdict.board_serial,
                verdict.verdict.value,
                f"{verdict.board_score:.4f}",
                len(verdict.regions),
                verdict.model_version,
                verdict.decided_at.isoformat(),
            ]
        )
        with self.csv_path.open("a", encoding="utf-8") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())


def sorter_group(settings: Settings) -> str:
    return f"{settings.kafka.group_id}-sorter"


def consume_verdicts(settings: Settings, sorter: VerdictSorter, stop: threading.Event) -> None:
    """Feed boards.verdicts to ``sorter`` until ``stop`` is set, committing each offset once
    its verdict is filed (from the earliest verdict the first time). An error filing (a full
    disk) raises, uncommitted.

    The consumer takes every partition itself (those at start) and commits under the group
    ``<group_id>-sorter`` without joining it: a join takes Tansu seconds, and one stopped
    mid-join there leaves the group unjoinable. Hence one sorter per group."""
    from confluent_kafka import OFFSET_STORED, Consumer, KafkaError, TopicPartition

    topic = settings.topics.verdicts
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": sorter_group(settings),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=30).topics.get(topic)
        if meta is None or meta.error is not None:
            raise RuntimeError(f"topic {topic!r} not found on {settings.kafka.bootstrap_servers}")
        consumer.assign([TopicPartition(topic, p, OFFSET_STORED) for p in meta.partitions])
        while not stop.is_set():
            msg = consumer.poll(0.25)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("reading %s: %s", topic, error)
                continue
            sorter.handle_raw(msg.value() or b"")
            consumer.commit(message=msg, asynchronous=False)
    finally:
        consumer.close()
