"""What every request of the station shares: settings, the audit store, accounts, the
object store, the outcome publisher, and the decisions published but not yet stored."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from fastapi import Request

from infra.db import make_engine
from infra.object_store import ObjectStore
from infra.settings import Settings
from linecheck.station.accounts import Accounts
from producers.review_outcomes import OutcomePublisher

PENDING_S = 300.0  # a published decision hides its board from the queue this long at most


@dataclass
class Station:
    settings: Settings
    engine: sa.Engine
    accounts: Accounts
    store: ObjectStore
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _publisher: OutcomePublisher | None = None
    _pending: dict[str, float] = field(default_factory=dict)  # event_id → published at
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def for_settings(cls, settings: Settings) -> Station:
        engine = make_engine(
            settings.postgres.url.get_secret_value(),
            connect_timeout_s=settings.postgres.connect_timeout_s,
            statement_timeout_ms=settings.postgres.statement_timeout_ms,
        )
        return cls(settings, engine, Accounts(engine), ObjectStore(settings.images.object_store))

    @property
    def publisher(self) -> OutcomePublisher:
        with self._lock:
            if self._publisher is None:
                self._publisher = OutcomePublisher(self.settings)
            return self._publisher

    def mark_pending(self, event_id: str) -> None:
        with self._lock:
            self._pending[event_id] = time.monotonic()

    def pending(self) -> frozenset[str]:
        """Boards decided here whose outcome the review sink may not have stored yet: the
        queue hides them so that the next board is a new one."""
        cutoff = time.monotonic() - PENDING_S
        with self._lock:
            for event_id in [e for e, t in self._pending.items() if t < cutoff]:
                del self._pending[event_id]
            return frozenset(self._pending)

    def close(self) -> None:
        self.engine.dispose()


def session_secret(settings: Settings) -> str:
    """The key that signs session cookies: configured, or made once and kept in the work
    dir (so that a restart keeps operators signed in)."""
    if settings.web.secret_key is not None:
        return settings.web.secret_key.get_secret_value()
    path = Path(settings.work_dir) / "web-secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(32)
        path.touch(mode=0o600)
        path.write_text(secret)
        return secret


def station(request: Request) -> Station:
    found: Station = request.app.state.station
    return found
