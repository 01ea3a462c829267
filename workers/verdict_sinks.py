"""A round of inspected boards into the sinks, in two stages that the sink pipeline
(:mod:`workers.batch_sinks`) overlaps across rounds:

1. :meth:`VerdictSinks.record` — the audit rows first (while the database is down nothing
   is published, so a retried round does not flood the MES with copies of its verdicts);
   a redelivered event gets its audited verdict, a reused id with another payload becomes
   a ``conflict`` dead letter; the shadow models' decisions beside them;
2. :meth:`VerdictSinks.send` — the verdicts and dead letters (waiting for the broker's
   acks), then the live counters (Redis is a cache: its failures are logged and counted).

Either stage raises when its sink fails: the pipeline rewinds the round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from schemas.events import DeadLetter, Verdict
from workers import metrics
from workers.audit_sink import AuditBatch, AuditStore, LiveStats
from workers.batch_sinks import BatchResult
from workers.inspection_processes import Letters
from workers.inspector import SourceInfo
from workers.shadow import record_shadows

log = logging.getLogger("linecheck.worker")


def refused_letter(
    body: bytes, source: SourceInfo, verdict: Verdict, audit: AuditBatch, letters: Letters
) -> DeadLetter:
    """The dead letter of an event the audit store did not take: its id was already decided
    for another payload (``conflict``), or the database refused its row (``sink``)."""
    refused = audit.rejected.get(verdict.event_id)
    if refused is not None:
        stage, reason = "sink", refused
    else:
        stored, _ = audit.stored.get(verdict.event_id, (None, None))
        stage, reason = (
            "conflict",
            (
                f"event id {verdict.event_id!r} was already decided for another payload "
                f"(sha256 {str(stored)[:16]}…, this one {str(verdict.event_sha256)[:16]}…): "
                "the audit row and its verdict stand; publish the new board under a new id"
            ),
        )
    return letters(body, source, stage, reason, verdict.event_id)


@dataclass
class Recorded:
    """What the audit stage decided for a round: what to publish and to dead-letter."""

    publish: list[Verdict]
    dead: list[tuple[DeadLetter, SourceInfo]]
    first_seen: dict[str, Verdict]  # new in the audit store: the counters count them


@dataclass
class VerdictSinks:
    """The worker's sinks; ``parts`` gives the audit store, live counters and dead-letter
    writer once the worker has started, ``publish_verdict`` and ``publish_letter`` send."""

    parts: Callable[[], tuple[AuditStore, LiveStats, Letters]]
    publish_verdict: Callable[[Verdict], Any]
    publish_letter: Callable[[DeadLetter, bytes | None], Any]

    async def record(self, batch: BatchResult, _: Any = None) -> Recorded:
        audit_store, _stats, letters = self.parts()
        decided = [
            (r, s, b)
            for r, s, b in zip(batch.results, batch.sources, batch.bodies, strict=True)
            if isinstance(r, Verdict)
        ]
        dead = [
            (r, s)
            for r, s in zip(batch.results, batch.sources, strict=True)
            if isinstance(r, DeadLetter)
        ]
        audit = await anyio.to_thread.run_sync(
            audit_store.record_batch, [(v, s.partition, s.offset) for v, s, _ in decided]
        )
        publish: list[Verdict] = []
        for verdict, source, body in decided:
            chosen = audit.resolve(verdict)
            if chosen is None:  # a conflict, or a row the database refused: never retried
                dead.append((refused_letter(body, source, verdict, audit, letters), source))
            else:
                publish.append(chosen)  # a redelivery gets the verdict already audited
        if batch.shadowed:  # beside the audit rows of the boards they shadow; never published
            kept = {v.event_id for v in publish}
            await anyio.to_thread.run_sync(
                record_shadows,
                audit_store.engine,
                [d for d in batch.shadowed if d.event_id in kept],
            )
        # The same event twice in one round is new once: counters count each event once.
        first_seen = {v.event_id: v for v in publish if v.event_id in audit.new}
        return Recorded(publish, dead, first_seen)

    async def send(self, batch: BatchResult, recorded: Recorded) -> None:
        _audit, stats, _letters = self.parts()
        publish, dead, first_seen = recorded.publish, recorded.dead, dict(recorded.first_seen)
        await asyncio.gather(
            *(self.publish_verdict(v) for v in publish),
            *(self.publish_letter(letter, s.key) for letter, s in dead),
        )
        for letter, source in dead:
            log.warning(
                "dead-lettered %s/%s at %s: %s",
                source.partition,
                source.offset,
                letter.stage,
                letter.reason,
            )
        # Live counters are a cache: Redis down must not stop the line (repair them with
        # `linecheck stats rebuild`).
        try:
            await anyio.to_thread.run_sync(
                stats.record_many, list(first_seen.values()), [letter.stage for letter, _ in dead]
            )
        except Exception as exc:
            metrics.REDIS_FAILURES.inc()
            log.error("live counters not updated for a batch of %d: %s", len(batch.results), exc)
        for verdict in publish:
            metrics.observe(verdict, first_seen.pop(verdict.event_id, None) is not None)
        for letter, _ in dead:
            metrics.DEADLETTERS.labels(letter.stage).inc()
            if letter.stage == "conflict":
                metrics.CONFLICTS.inc()
