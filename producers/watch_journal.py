"""The folder watcher's bookkeeping: when a file is completely written (``SettleTracker``),
and what was published from the folder (``Journal``, SQLite in ``DIR/.linecheck-watch/``),
durable across restarts so that a file is never published twice with different ids."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

STATE_DIR = ".linecheck-watch"


def journal_path(folder: Path) -> Path:
    return folder / STATE_DIR / "journal.sqlite3"


class SettleTracker:
    """Which files have stopped changing. Pure bookkeeping: the caller stats the files and
    supplies the clock; a file is settled once its (size, mtime) is the same as ``settle_s``
    or more ago."""

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self._seen: dict[Path, tuple[int, int, float]] = {}

    def add(self, path: Path) -> None:
        """Track ``path`` (again): it settles ``settle_s`` after its next observation."""
        self._seen[path] = (-1, -1, 0.0)

    def observe(self, path: Path, size: int, mtime_ns: int, now: float) -> bool:
        """Record a stat of ``path``; True once it has not changed for ``settle_s``."""
        seen = self._seen.get(path)
        if seen is None or seen[:2] != (size, mtime_ns):
            self._seen[path] = (size, mtime_ns, now)
            return False
        return now - seen[2] >= self.settle_s

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)

    def __contains__(self, path: Path) -> bool:
        return path in self._seen

    @property
    def paths(self) -> list[Path]:
        return sorted(self._seen)


@dataclass(frozen=True)
class JournalEntry:
    event_id: str
    name: str
    sha256: str
    state: Literal["intent", "published", "done"]
    event_json: str
    uri: str | None


class Journal:
    """What was published from the folder: one row per event, durable across restarts and
    safe to share between the watcher's and the sorter's threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit: every statement is durable on its own before the next step is taken
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS files (event_id TEXT PRIMARY KEY, name TEXT NOT NULL,"
                " sha256 TEXT NOT NULL, state TEXT NOT NULL, event_json TEXT NOT NULL, uri TEXT,"
                " updated_at REAL NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS files_by_content ON files (name, sha256)")

    def _select(self, where: str, args: tuple[str, ...]) -> list[JournalEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, name, sha256, state, event_json, uri FROM files WHERE "
                + where
                + " ORDER BY rowid",
                args,
            ).fetchall()
        return [JournalEntry(*row) for row in rows]

    def get(self, event_id: str) -> JournalEntry | None:
        found = self._select("event_id = ?", (event_id,))
        return found[0] if found else None

    def find(self, name: str, sha256: str) -> JournalEntry | None:
        """The entry of this file name with this content, if it was ever met."""
        found = self._select("name = ? AND sha256 = ?", (name, sha256))
        return found[-1] if found else None

    def intend(
        self, event_id: str, name: str, sha256: str, event_json: str, uri: str | None
    ) -> JournalEntry:
        """Record the intent to publish; an entry already there wins (its JSON may be on the
        wire already)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO files VALUES (?, ?, ?, 'intent', ?, ?, ?)",
                (event_id, name, sha256, event_json, uri, time.time()),
            )
        entry = self.get(event_id)
        assert entry is not None
        return entry

    def mark(self, event_id: str, state: Literal["published", "done"]) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE files SET state = ?, updated_at = ? WHERE event_id = ?",
                (state, time.time(), event_id),
            )

    def unfinished(self) -> list[JournalEntry]:
        """Entries not yet ``done``, in the order they were recorded."""
        return self._select("state != ?", ("done",))

    def close(self) -> None:
        with self._lock:
            self._db.close()
