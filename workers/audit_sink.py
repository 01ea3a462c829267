"""Where verdicts land besides the results topic: the PostgreSQL audit store and Redis.

The audit insert is idempotent on the event id (ON CONFLICT DO NOTHING), so a redelivered
event never doubles a row; Redis counters move only when the row was new, so they do not
double either. Redis is a cache of live counters, rebuildable from the audit store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, IntegrityError

from infra.db import make_engine, verdicts
from infra.stats import audit_sampled
from schemas.events import Verdict, VerdictLabel


@dataclass(frozen=True)
class AuditBatch:
    new: set[str]
    """event ids whose row this batch inserted"""
    stored: dict[str, tuple[str | None, dict[str, Any] | None]]
    """every event id of the batch → (event_sha256, verdict_json) of its row"""
    rejected: dict[str, str] = field(default_factory=dict)
    """event ids whose row the database refused (not an outage) → why"""

    def resolve(self, verdict: Verdict) -> Verdict | None:
        """The verdict to publish for ``verdict``'s event: the stored one when the event was
        decided before (a redelivery gets the same verdict), None on a conflict (the same id
        with another payload). Rows written before migration 0004 have no hash: trusted."""
        if verdict.event_id in self.rejected:
            return None
        sha, doc = self.stored.get(verdict.event_id, (None, None))
        if sha is not None and verdict.event_sha256 is not None and sha != verdict.event_sha256:
            return None
        return Verdict.model_validate(doc) if doc is not None else verdict


# One statement for any number of rows, compiled once: SQLAlchemy's "insertmanyvalues" sends
# the rows as one multi-row INSERT … RETURNING. A .values(rows) statement was compiled anew
# for every batch: 0.68 ms of the worker's CPU a row against 0.25 (benchmarks/audit_insert.py).
_INSERT = (
    insert(verdicts)
    .on_conflict_do_nothing(index_elements=["event_id"])
    .returning(verdicts.c.event_id)
)


class AuditStore:
    def __init__(
        self,
        url: str,
        audit_rate: float = 0.0,
        connect_timeout_s: int = 10,
        statement_timeout_ms: int | None = None,
    ) -> None:
        # no ping before each batch's transaction: a failed one is retried from the batch's
        # offsets anyway (the sinks' rewind and backoff), and the database's restart costs
        # one failed round, not a round trip on every batch
        self.engine: Engine = make_engine(
            url, connect_timeout_s, statement_timeout_ms, pre_ping=False
        )
        self.audit_rate = audit_rate

    def _row(self, verdict: Verdict, partition: int | None, offset: int | None) -> dict[str, Any]:
        return {
            "event_id": verdict.event_id,
            "line": verdict.line,
            "machine": verdict.machine,
            "product": verdict.product,
            "board_serial": verdict.board_serial,
            "verdict": verdict.verdict.value,
            "board_score": verdict.board_score,
            "n_regions": len(verdict.regions),
            "regions": [r.model_dump(mode="json") for r in verdict.regions],
            "roi_method": verdict.roi_method,
            "model_version": verdict.model_version,
            "threshold_version": verdict.threshold_version,
            "decode_ms": verdict.timings.decode_ms,
            "roi_ms": verdict.timings.roi_ms,
            "classify_ms": verdict.timings.classify_ms,
            "total_ms": verdict.timings.total_ms,
            "explain_ms": verdict.timings.explain_ms,
            "explanation_uri": verdict.explanation_uri,
            "worker": verdict.worker,
            "source_partition": partition,
            "source_offset": offset,
            "inspected_at": verdict.inspected_at,
            "decided_at": verdict.decided_at,
            # automatic decisions are sampled for audit review, deterministically by event id
            "audit_sampled": verdict.verdict is not VerdictLabel.REVIEW
            and audit_sampled(verdict.event_id, self.audit_rate),
            "audit_rate": self.audit_rate,
            "event_sha256": verdict.event_sha256,
            "verdict_json": verdict.model_dump(mode="json"),
        }

    def record_many(self, items: Sequence[tuple[Verdict, int | None, int | None]]) -> set[str]:
        """Insert the audit rows of (verdict, partition, offset) in one statement and one
        transaction; return the event ids that were new (a redelivered event is not)."""
        return self.record_batch(items).new

    def record_batch(self, items: Sequence[tuple[Verdict, int | None, int | None]]) -> AuditBatch:
        """Insert the batch's audit rows (the first verdict of an event id wins, also within
        the batch) and read back what was already there for the others."""
        if not items:
            return AuditBatch(set(), {})
        rows: dict[str, dict[str, Any]] = {}
        for v, p, o in items:
            rows.setdefault(v.event_id, self._row(v, p, o))
        rejected: dict[str, str] = {}
        try:
            new, stored = self._insert(list(rows.values()))
        except (DataError, IntegrityError):
            # The database refuses a row (not an outage): find it, so that one event is
            # dead-lettered instead of its batch being retried forever.
            new, stored = set(), {}
            for event_id, row in rows.items():
                try:
                    one_new, one_stored = self._insert([row])
                except (DataError, IntegrityError) as exc:
                    rejected[event_id] = f"the audit store refused the row: {exc.orig or exc}"
                    continue
                new |= one_new
                stored.update(one_stored)
        for e in rejected:
            rows.pop(e)
        for e in new:  # within the batch, later copies compare with the first
            stored[e] = (rows[e]["event_sha256"], rows[e]["verdict_json"])
        return AuditBatch(new, stored, rejected)

    def _insert(
        self, rows: list[dict[str, Any]]
    ) -> tuple[set[str], dict[str, tuple[str | None, dict[str, Any] | None]]]:
        """Insert ``rows`` in one transaction; (new ids, stored hash and verdict of the rest)."""
        with self.engine.begin() as conn:
            new = set(conn.execute(_INSERT, rows).scalars())
            old = [r["event_id"] for r in rows if r["event_id"] not in new]
            stored = (
                {
                    str(e): (sha, doc)
                    for e, sha, doc in conn.execute(
                        select(
                            verdicts.c.event_id, verdicts.c.event_sha256, verdicts.c.verdict_json
                        ).where(verdicts.c.event_id.in_(old))
                    ).all()
                }
                if old
                else {}
            )
        return new, stored

    def record(
        self, verdict: Verdict, partition: int | None = None, offset: int | None = None
    ) -> bool:
        """Insert the verdict's audit row; False when the event already had one."""
        return bool(self.record_many([(verdict, partition, offset)]))

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(verdicts)).scalar_one())

    def close(self) -> None:
        self.engine.dispose()


class LiveStats:
    """Rolling counters per line and verdict, in time buckets that expire after the window."""

    BUCKET_S = 60

    def __init__(
        self, url: str, prefix: str = "linecheck", window_s: int = 3600, timeout_s: float = 2.0
    ) -> None:
        self.client = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.prefix = prefix
        self.window_s = window_s

    def _bucket(self, at: datetime) -> int:
        return int(at.timestamp()) // self.BUCKET_S * self.BUCKET_S

    def record(self, verdict: Verdict) -> None:
        self.record_many([verdict], [])

    def record_many(self, verdicts: Sequence[Verdict], deadletter_stages: Sequence[str]) -> None:
        """Count new verdicts and dead letters in one round trip (a MULTI/EXEC pipeline)."""
        if not verdicts and not deadletter_stages:
            return
        pipe = self.client.pipeline(transaction=True)
        for verdict in verdicts:
            key = f"{self.prefix}:verdicts:{verdict.line}:{self._bucket(verdict.decided_at)}"
            pipe.hincrby(key, verdict.verdict.value, 1)
            pipe.hincrby(key, "boards", 1)
            pipe.expire(key, self.window_s + self.BUCKET_S)
            pipe.hincrby(f"{self.prefix}:totals", verdict.verdict.value, 1)
        for stage in deadletter_stages:
            pipe.hincrby(f"{self.prefix}:deadletters", stage, 1)
        pipe.execute()

    def record_deadletter(self, stage: str) -> None:
        self.record_many([], [stage])

    def window(self, line: str, now: datetime | None = None) -> dict[str, int]:
        """Counts per verdict over the rolling window ending at `now`."""
        end = self._bucket(now or datetime.now(UTC))
        totals: dict[str, int] = {}
        for bucket in range(end - self.window_s + self.BUCKET_S, end + 1, self.BUCKET_S):
            for name, value in self.client.hgetall(
                f"{self.prefix}:verdicts:{line}:{bucket}"
            ).items():
                totals[str(name)] = totals.get(str(name), 0) + int(value)
        return totals

    def totals(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.client.hgetall(f"{self.prefix}:totals").items()}

    def close(self) -> None:
        self.client.close()


def rebuild_live_stats(stats: LiveStats, url: str) -> dict[str, int]:
    """Recompute ``stats``' counters from the audit store (after Redis was flushed or was
    down): the totals per verdict, the window buckets per line, the dead letters per stage
    (from the review sink's ``deadletters`` table). Returns the totals written."""
    from infra.db import deadletters

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            totals: dict[str, int] = dict(
                conn.execute(select(verdicts.c.verdict, func.count()).group_by(verdicts.c.verdict))
                .tuples()
                .all()
            )
            since = datetime.now(UTC).timestamp() - stats.window_s - stats.BUCKET_S
            recent = conn.execute(
                select(verdicts.c.line, verdicts.c.verdict, verdicts.c.decided_at).where(
                    verdicts.c.decided_at >= func.to_timestamp(since)
                )
            ).all()
            stages: dict[str, int] = dict(
                conn.execute(
                    select(deadletters.c.stage, func.count()).group_by(deadletters.c.stage)
                )
                .tuples()
                .all()
            )
    finally:
        engine.dispose()
    pipe = stats.client.pipeline(transaction=True)
    for key in stats.client.scan_iter(f"{stats.prefix}:verdicts:*"):
        pipe.delete(key)
    pipe.delete(f"{stats.prefix}:totals", f"{stats.prefix}:deadletters")
    for verdict, n in totals.items():
        pipe.hset(f"{stats.prefix}:totals", str(verdict), int(n))
    for stage, n in stages.items():
        pipe.hset(f"{stats.prefix}:deadletters", str(stage), int(n))
    for line, verdict, decided_at in recent:
        key = f"{stats.prefix}:verdicts:{line}:{stats._bucket(decided_at)}"
        pipe.hincrby(key, str(verdict), 1)
        pipe.hincrby(key, "boards", 1)
        pipe.expire(key, stats.window_s + stats.BUCKET_S)
    pipe.execute()
    return {str(k): int(v) for k, v in totals.items()}
