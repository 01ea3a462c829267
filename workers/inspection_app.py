"""The worker: a FastStream (confluent) application around `Inspector`.

Delivery is at least once, with idempotent sinks. The worker consumes batches (up to
`kafka.batch_size` events, whatever the poll returned): it inspects each event, writes the batch's
audit rows in one statement, then publishes the verdicts (waiting for the broker's acks), and
only then FastStream commits the offsets
(AckPolicy.NACK_ON_ERROR: an exception seeks back, so a sink failure stops the commit, not
the data). Bad input never raises: it becomes a dead-letter record and the offset moves on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import anyio
from faststream import AckPolicy, FastStream
from faststream.confluent import KafkaBroker, KafkaMessage
from faststream.message import StreamMessage
from faststream.specification import AsyncAPI

from infra.object_store import ObjectStore
from infra.settings import Settings
from schemas.events import DeadLetter, Verdict
from workers import metrics
from workers.audit_sink import AuditStore, LiveStats
from workers.inspector import Inspector, SourceInfo
from workers.messages import default_worker_name

log = logging.getLogger("linecheck.worker")


async def _raw_bodies(msg: StreamMessage[Any]) -> list[bytes]:
    """Hand the handler the undecoded values: validation is ours, so bad input is dead-lettered."""
    return [bytes(body) for body in msg.body]


@dataclass
class Backoff:
    """Exponential delay after consecutive sink failures: 0.25 s doubling to `cap`."""

    cap: float = 10.0
    failures: int = 0

    def failed(self) -> float:
        self.failures += 1
        return min(self.cap, 0.25 * 2 ** (self.failures - 1))

    def reset(self) -> None:
        self.failures = 0


@dataclass
class WorkerContext:
    inspector: Inspector
    audit: AuditStore
    stats: LiveStats


def build_context(settings: Settings) -> WorkerContext:
    """Load the model and connect the sinks (heavy: do it once per worker process)."""
    from infra.db import upgrade
    from inspection.backends import load_classifier
    from inspection.model.registry import load_card, resolve_model

    if settings.model.threads is not None:
        import cv2

        # OpenCV's own thread pool gains nothing on the ROI stage and, with one worker per
        # core, makes the workers fight over the cores (2 workers on 2 cores: 25 boards/s
        # with OpenCV's default threads, 43 with one each; benchmarks/pipeline.py).
        cv2.setNumThreads(settings.model.threads)
    upgrade(settings.postgres.url)
    model_dir = resolve_model(settings.model.models_dir, settings.model.version)
    card = load_card(model_dir)
    classifier = load_classifier(
        model_dir,
        backend=settings.model.backend,
        device=settings.model.device,
        threads=settings.model.threads,
    )
    explainer = None
    if settings.worker.explain:
        from inspection.explain import Explainer

        # the serving backend's own runtime: an OpenVINO worker never loads torch
        explainer = Explainer(
            model_dir,
            backend=settings.model.backend,
            device=(settings.model.device or "CPU")
            if settings.model.backend == "openvino"
            else "CPU",
            threads=settings.model.threads,
        )
    inspector = Inspector(
        classifier,
        card.require_thresholds(),
        ObjectStore(settings.images.object_store),
        worker=settings.worker.name or default_worker_name(),
        explainer=explainer,
        policy=settings.images.policy,
        review_products=frozenset(settings.worker.review_products),
    )
    return WorkerContext(
        inspector=inspector,
        audit=AuditStore(settings.postgres.url, settings.quality.audit_rate),
        stats=LiveStats(settings.redis.url, settings.redis.key_prefix, settings.redis.window_s),
    )


def create_inspection_app(settings: Settings, context: WorkerContext | None = None) -> FastStream:
    """The worker application; `context` is built at startup unless given (tests)."""
    topics = settings.topics
    broker = KafkaBroker(
        settings.kafka.bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        description="linecheck inspection workers: flagged boards in, verdicts out",
    )
    verdicts = broker.publisher(
        topics.verdicts,
        title="verdicts",
        schema=Verdict,
        description="One verdict per flagged board, for the MES (keyed by line:serial)",
    )
    deadletters = broker.publisher(
        topics.deadletter,
        title="deadletter",
        schema=DeadLetter,
        description="Messages that could not be processed: the original, the stage and why",
    )
    state: dict[str, WorkerContext] = {}
    backoff = Backoff()
    ready_file = settings.worker.ready_file

    def on_assign(consumer: Any, partitions: list[Any]) -> None:
        metrics.ASSIGNED.set(len(partitions))
        log.info("assigned %d partition(s) of %s", len(partitions), topics.flagged)
        if ready_file is not None:
            ready_file.parent.mkdir(parents=True, exist_ok=True)
            ready_file.touch()

    def on_revoke(consumer: Any, partitions: list[Any]) -> None:
        metrics.ASSIGNED.set(0)

    if context is not None:
        state["ctx"] = context

    @broker.subscriber(
        topics.flagged,
        group_id=settings.kafka.group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        session_timeout_ms=settings.kafka.session_timeout_ms,
        max_poll_interval_ms=settings.kafka.max_poll_interval_ms,
        heartbeat_interval_ms=max(1000, settings.kafka.session_timeout_ms // 4),
        decoder=_raw_bodies,
        batch=True,  # one audit insert, one Redis round trip and one commit per batch
        max_records=settings.kafka.batch_size,
        on_assign=on_assign,
        on_revoke=on_revoke,
        title="flagged",
        description="FlaggedBoard events (JSON, see schemas/) from line test machines",
    )
    async def handle(bodies: list[bytes], msg: KafkaMessage) -> None:
        ctx = state["ctx"]
        records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
        sources = [
            SourceInfo(
                topic=topics.flagged, partition=r.partition(), offset=r.offset(), key=r.key()
            )
            for r in records
        ]
        results = await anyio.to_thread.run_sync(
            lambda: [ctx.inspector.process(b, s) for b, s in zip(bodies, sources, strict=True)]
        )
        decided = [(r, s) for r, s in zip(results, sources, strict=True) if isinstance(r, Verdict)]
        dead = [(r, s) for r, s in zip(results, sources, strict=True) if isinstance(r, DeadLetter)]
        for letter, source in dead:
            log.warning(
                "dead-lettered %s/%s at %s: %s",
                source.partition,
                source.offset,
                letter.stage,
                letter.reason,
            )
        try:
            # Audit rows first: while the database is down nothing is published, so a
            # retried batch does not flood the MES with copies of its verdicts.
            new = await anyio.to_thread.run_sync(
                ctx.audit.record_many, [(v, s.partition, s.offset) for v, s in decided]
            )
            # A redelivered event is not new, and the same event twice in one batch is new
            # once: the live counters must count each event once. (Dead letters count per
            # delivery.)
            first_seen = {v.event_id: v for v, _ in decided if v.event_id in new}
            await anyio.to_thread.run_sync(
                ctx.stats.record_many,
                list(first_seen.values()),
                [letter.stage for letter, _ in dead],
            )
            await asyncio.gather(
                *(
                    verdicts.publish(v, key=f"{v.line}:{v.board_serial}".encode())
                    for v, _ in decided
                ),
                *(deadletters.publish(letter, key=s.key) for letter, s in dead),
            )
        except Exception as exc:
            # Not committed: FastStream seeks back and the batch is processed again (the sinks
            # are idempotent). Back off so that an outage is not a busy loop.
            delay = backoff.failed()
            log.error(
                "sinks failed for a batch of %d (%s); retrying in %.1fs", len(results), exc, delay
            )
            metrics.SINK_FAILURES.inc()
            await anyio.sleep(delay)
            raise
        backoff.reset()
        for verdict, _ in decided:
            metrics.observe(verdict, first_seen.pop(verdict.event_id, None) is not None)
        for letter, _ in dead:
            metrics.DEADLETTERS.labels(letter.stage).inc()

    app = FastStream(
        broker,
        specification=AsyncAPI(
            title="linecheck worker",
            version="0.1.0",
            description="Flagged boards in, verdicts and dead letters out (see schemas/).",
        ),
    )

    @app.on_startup
    async def _load() -> None:
        if "ctx" not in state:
            state["ctx"] = await anyio.to_thread.run_sync(build_context, settings)
        if settings.worker.metrics_port is not None:
            metrics.serve(settings.worker.metrics_port)

    @app.after_shutdown
    async def _close() -> None:
        ctx = state.get("ctx")
        if ctx is not None:
            ctx.audit.close()
            ctx.stats.close()

    return app
