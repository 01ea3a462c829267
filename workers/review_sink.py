"""The review sink: a FastStream app that closes the quality loop (`linecheck review-sink`).

- boards.reviews: review outcomes joined with verdicts in PostgreSQL (`ReviewStore`); a bad
  or untrustworthy outcome goes to boards.deadletter with the reason;
- boards.verdicts: every verdict feeds the label-free drift windows (Redis);
- boards.deadletter: kept in the `deadletters` table for the operations dashboard.
Alerts go to boards.alerts and the `alerts` table. Handlers are thin: `ReviewSink` holds
the logic, and tests call it directly. Run one instance (the drift windows are per line).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import anyio
import redis
from faststream import AckPolicy, FastStream
from faststream.confluent import KafkaBroker, KafkaMessage
from faststream.message import StreamMessage
from pydantic import ValidationError

from infra.object_store import ObjectStore
from infra.settings import Settings
from schemas.events import Alert, DeadLetter, ReviewOutcome, Verdict, VerdictLabel
from workers.delivery import Backoff, broker_config, confluent_consumer, store_processed
from workers.drift import BoardObservation, DriftMonitor, LabelObservation
from workers.messages import dead_letter, decode_failure, default_worker_name
from workers.review_store import OutcomeResult, ReviewRejected, ReviewStore

log = logging.getLogger("linecheck.review_sink")


async def _raw_body(msg: StreamMessage[Any]) -> bytes:
    return bytes(msg.body)


def card_baselines(settings: Settings) -> Callable[[str], tuple[float, float]]:
    """model version → (FNR, FPR) baseline: the model card's board-level validation metrics
    when it has them (`board_fnr`/`board_fpr` at the top, under `val` as `linecheck train
    --data` writes them, or `board: {fnr, fpr}`), else the configured baselines."""
    q = settings.quality

    def pick(metrics: dict[str, Any], key: str, default: float) -> float:
        for where in (metrics, metrics.get("val"), metrics.get("board")):
            if isinstance(where, dict):
                value = where.get(f"board_{key}", where.get(key) if where is not metrics else None)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    return float(value)
        return default

    @lru_cache(maxsize=32)
    def lookup(version: str) -> tuple[float, float]:
        try:
            from inspection.model.registry import load_card

            metrics = load_card(settings.model.models_dir / version).metrics
        except (FileNotFoundError, ValueError):  # no card for that version here
            return q.baseline_fnr, q.baseline_fpr
        return pick(metrics, "fnr", q.baseline_fnr), pick(metrics, "fpr", q.baseline_fpr)

    return lookup


@dataclass
class ReviewHandled:
    result: OutcomeResult | None = None
    deadletter: DeadLetter | None = None
    alerts: list[Alert] = field(default_factory=list)


class ReviewSink:
    def __init__(self, settings: Settings, worker: str | None = None) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.worker = worker or f"review-sink@{default_worker_name()}"
        self.store = ReviewStore(settings.postgres.url.get_secret_value())
        self.objects = ObjectStore(settings.images.object_store)  # large originals go here
        self.redis = redis.Redis.from_url(
            settings.redis.url.get_secret_value(),
            decode_responses=True,
            socket_timeout=settings.redis.timeout_s,
            socket_connect_timeout=settings.redis.timeout_s,
        )
        self.prefix = settings.redis.key_prefix
        self.monitor = DriftMonitor(
            self.redis,
            settings.quality,
            prefix=self.prefix,
            baselines=card_baselines(settings),
            references=self.store,
        )

    def _dead(
        self, raw: bytes, stage: str, reason: str, event_id: str | None, where: tuple[Any, ...]
    ) -> DeadLetter:
        partition, offset, key = where
        return dead_letter(
            raw,
            topic=self.topics.reviews,
            partition=partition,
            offset=offset,
            key=key,
            stage=stage,
            reason=reason,
            event_id=event_id,
            worker=self.worker,
            store=self.objects,
            inline_max_bytes=self.settings.images.inline_max_bytes,
        )

    def handle_review(
        self, raw: bytes, partition: int | None = None, offset: int | None = None,
        key: bytes | None = None,
    ) -> ReviewHandled:  # fmt: skip
        where = (partition, offset, key)
        try:
            outcome = ReviewOutcome.model_validate_json(raw)
        except ValidationError as exc:
            stage, reason = decode_failure(exc)
            if stage == "validate":
                reason = f"not a ReviewOutcome: {reason}"
            return ReviewHandled(deadletter=self._dead(raw, stage, reason, None, where))
        try:
            result = self.store.record(outcome)
        except ReviewRejected as exc:
            return ReviewHandled(
                deadletter=self._dead(raw, "validate", str(exc), outcome.event_id, where)
            )
        handled = ReviewHandled(result=result)
        v = result.verdict
        if result.status in ("new", "superseded") and v is not None:
            sampled = v["verdict"] == VerdictLabel.REVIEW.value or bool(v["audit_sampled"])
            if sampled:  # only the unbiased sample feeds the rolling error rates
                rate = float(v["audit_rate"])  # type: ignore[arg-type]
                weight = 1.0 if v["verdict"] == "review" else 1.0 / rate
                handled.alerts = self.monitor.observe_label(
                    LabelObservation(
                        event_id=outcome.event_id,
                        line=str(v["line"]),
                        model_version=str(v["model_version"]),
                        verdict=str(v["verdict"]),
                        defective=outcome.defective,
                        weight=weight,
                        decided_at=v["decided_at"].timestamp(),  # type: ignore[attr-defined]
                    )
                )
        self._keep(handled.alerts)
        return handled

    def handle_verdict(
        self, raw: bytes, partition: int | None = None, offset: int | None = None,
        key: bytes | None = None,
    ) -> ReviewHandled:  # fmt: skip
        """Feed a verdict to the drift windows; bytes that are not a Verdict (anyone can
        write to the topic) become a dead letter instead of stopping the sink."""
        try:
            verdict = Verdict.model_validate_json(raw)
        except ValidationError as exc:
            stage, reason = decode_failure(exc)
            if stage == "validate":
                reason = f"not a Verdict: {reason}"
            letter = self._dead(raw, stage, reason, None, (partition, offset, key))
            return ReviewHandled(
                deadletter=letter.model_copy(update={"source_topic": self.topics.verdicts})
            )
        alerts = self.monitor.observe_board(
            BoardObservation(
                event_id=verdict.event_id,
                line=verdict.line,
                model_version=verdict.model_version,
                verdict=verdict.verdict.value,
                score=verdict.board_score,
                n_regions=len(verdict.regions),
                decided_at=verdict.decided_at.timestamp(),
            )
        )
        self.redis.incr(f"{self.prefix}:quality:verdicts_seen")
        self._keep(alerts)
        return ReviewHandled(alerts=alerts)

    def handle_deadletter(
        self, raw: bytes, partition: int | None, offset: int | None, key: bytes | None = None
    ) -> ReviewHandled:
        """Keep a dead letter in the table of the operations dashboard (an unreadable record
        on the dead-letter topic is logged, not dead-lettered again)."""
        try:
            dead = DeadLetter.model_validate_json(raw)
        except ValidationError:
            log.error("unreadable dead-letter record at %s/%s: skipped", partition, offset)
            return ReviewHandled()
        self.store.record_deadletter(dead, partition or 0, offset or 0)
        return ReviewHandled()

    def _keep(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            log.warning("ALERT %s: %s", alert.metric, alert.message)
            self.store.record_alert(alert)

    def close(self) -> None:
        self.store.close()
        self.redis.close()


def create_review_sink_app(settings: Settings, sink: ReviewSink | None = None) -> FastStream:
    topics = settings.topics
    broker = KafkaBroker(
        settings.kafka.bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        config=broker_config(fetch_wait_ms=settings.kafka.fetch_wait_ms),
        description="linecheck review sink: review outcomes and verdicts in, alerts out",
    )
    alerts_out = broker.publisher(topics.alerts, title="alerts", schema=Alert)
    dead_out = broker.publisher(topics.deadletter, title="deadletter", schema=DeadLetter)
    state: dict[str, ReviewSink] = {}
    if sink is not None:
        state["sink"] = sink
    assigned: set[str] = set()
    ready_file = settings.worker.ready_file
    group = f"{settings.kafka.group_id}-quality"

    def on_assign_for(name: str) -> Any:
        def on_assign(consumer: Any, partitions: list[Any]) -> None:
            if partitions:
                assigned.add(name)
            if len(assigned) == 3 and ready_file is not None:
                ready_file.parent.mkdir(parents=True, exist_ok=True)
                ready_file.touch()

        return on_assign

    backoffs = {name: Backoff() for name in ("reviews", "verdicts", "deadletters")}

    async def handled(
        handle: Callable[..., ReviewHandled], body: bytes, msg: KafkaMessage, backoff: Backoff
    ) -> None:
        """Run a handler off the event loop; publish its dead letter and alerts. A failure
        (database or Redis down) backs off, then raises: not committed, retried."""
        raw = msg.raw_message
        assert not isinstance(raw, tuple)
        try:
            result = await anyio.to_thread.run_sync(
                handle, body, raw.partition(), raw.offset(), raw.key()
            )
            if result.deadletter is not None:
                log.warning("dead-lettered: %s", result.deadletter.reason)
                await dead_out.publish(result.deadletter, key=raw.key())
            for alert in result.alerts:
                await alerts_out.publish(alert, key=alert.line.encode())
        except Exception as exc:
            delay = backoff.failed()
            log.error("review sink failed on %s (%s); retrying in %.1fs", raw.topic(), exc, delay)
            await anyio.sleep(delay)
            raise
        backoff.reset()
        await store_processed(confluent_consumer(msg), (raw,))

    common: dict[str, Any] = dict(
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        session_timeout_ms=settings.kafka.session_timeout_ms,
        max_poll_interval_ms=settings.kafka.max_poll_interval_ms,
        heartbeat_interval_ms=max(1000, settings.kafka.session_timeout_ms // 4),
        decoder=_raw_body,
    )

    @broker.subscriber(
        topics.reviews, group_id=f"{group}-reviews", on_assign=on_assign_for("reviews"),
        title="reviews", description="ReviewOutcome from operators and the MES", **common,
    )  # fmt: skip
    async def on_review(body: bytes, msg: KafkaMessage) -> None:
        await handled(state["sink"].handle_review, body, msg, backoffs["reviews"])

    @broker.subscriber(
        topics.verdicts, group_id=f"{group}-verdicts", on_assign=on_assign_for("verdicts"),
        title="verdicts", description="Verdicts: the label-free drift windows", **common,
    )  # fmt: skip
    async def on_verdict(body: bytes, msg: KafkaMessage) -> None:
        await handled(state["sink"].handle_verdict, body, msg, backoffs["verdicts"])

    @broker.subscriber(
        topics.deadletter, group_id=f"{group}-deadletters",
        on_assign=on_assign_for("deadletters"), title="deadletters",
        description="Dead letters, kept for the operations dashboard", **common,
    )  # fmt: skip
    async def on_deadletter(body: bytes, msg: KafkaMessage) -> None:
        await handled(state["sink"].handle_deadletter, body, msg, backoffs["deadletters"])

    app = FastStream(broker)

    @app.on_startup
    async def _start() -> None:
        if "sink" not in state:
            from infra.db import prepare
            from infra.kafka_admin import ensure_topics

            await anyio.to_thread.run_sync(
                prepare, settings.postgres.url.get_secret_value(), settings.worker.migrate
            )
            await anyio.to_thread.run_sync(
                ensure_topics, settings.kafka.bootstrap_servers, topics, settings.kafka.partitions
            )
            state["sink"] = ReviewSink(settings, settings.worker.name)

    @app.after_shutdown
    async def _close() -> None:
        if "sink" in state:
            state["sink"].close()

    return app
