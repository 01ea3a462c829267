"""The worker: a FastStream (confluent) application around `Inspector`.

Delivery is at least once, with idempotent sinks. The worker consumes batches (up to
`kafka.batch_size` events, whatever the poll returned) and inspects each event, on its
inspection thread or in `worker.processes` child processes
(:mod:`workers.inspection_processes`); either way the next batches are polled while they
work. A batch's sinks run in the background while the next one is
inspected (:mod:`workers.batch_sinks`): its audit rows in one statement (a redelivered event
gets its audited verdict, a reused id with another payload is a `conflict` dead letter),
then its verdicts and dead letters (waiting for the broker's acks), then its offsets are
stored, and FastStream's next commit takes them. Sinks run in poll order; a batch whose
sinks fail is rewound with the batches behind it, after a backoff, so an outage stops the
commit, not the data. Bad input never raises: it becomes a dead letter and the offset moves
on. Redis is a cache: its failures are logged and counted, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from faststream import AckPolicy, FastStream
from faststream.confluent import KafkaBroker, KafkaMessage
from faststream.message import StreamMessage
from faststream.specification import AsyncAPI

from infra.settings import Settings
from schemas.events import DeadLetter, Verdict
from workers import metrics
from workers.audit_sink import AuditStore, LiveStats
from workers.batch_inspection import Result, inspect_batch, inspection_pool
from workers.batch_sinks import BatchResult, SinkPipeline, rewind
from workers.delivery import (
    Backoff,
    broker_config,
    check_poll_budget,
    commit_stored,
    poll_budget_s,
    poll_ready_batches,
)
from workers.inspection_processes import (
    InspectionProcesses,
    Letters,
    build_serving,
    letter_writer,
)
from workers.inspector import Inspector, SourceInfo
from workers.model_swap import ModelSwapper
from workers.verdict_sinks import VerdictSinks

log = logging.getLogger("linecheck.worker")
EXIT_EVICTED = 75  # EX_TEMPFAIL: evicted from the consumer group, start again
EXIT_CHILD_DIED = 70  # EX_SOFTWARE: an inspection process died, start again


async def _raw_bodies(msg: StreamMessage[Any]) -> list[bytes]:
    """Hand the handler the undecoded values: validation is ours, so bad input is dead-lettered."""
    return [bytes(body) for body in msg.body]


@dataclass
class WorkerContext:
    inspector: Inspector | None  # None: boards are inspected in `processes`
    letters: Letters  # writes a dead letter as this worker does
    audit: AuditStore
    stats: LiveStats
    swapper: ModelSwapper | None = None  # follows promote/rollback between batches
    pool: ThreadPoolExecutor | None = None  # worker.inspect_threads > 1: boards at once
    processes: InspectionProcesses | None = None  # worker.processes > 1: child processes


def build_context(settings: Settings) -> WorkerContext:
    """Check the audit store's schema, load the model (here, or in ``worker.processes``
    child processes) and connect the sinks."""
    from infra.db import prepare

    prepare(settings.postgres.url.get_secret_value(), settings.worker.migrate)
    inspector: Inspector | None = None
    swapper: ModelSwapper | None = None
    processes: InspectionProcesses | None = None
    if settings.worker.processes > 1:
        processes = InspectionProcesses(settings, settings.worker.processes)
        letters = letter_writer(settings)
    else:
        inspector, swapper = build_serving(settings)
        letters = inspector.dead_letter
    return WorkerContext(
        inspector=inspector,
        letters=letters,
        swapper=swapper,
        pool=inspection_pool(settings.worker.inspect_threads),
        processes=processes,
        audit=AuditStore(
            settings.postgres.url.get_secret_value(),
            settings.quality.audit_rate,
            settings.postgres.connect_timeout_s,
            settings.postgres.statement_timeout_ms,
        ),
        stats=LiveStats(
            settings.redis.url.get_secret_value(),
            settings.redis.key_prefix,
            settings.redis.window_s,
            settings.redis.timeout_s,
        ),
    )


def injected_delay(path: Path | None) -> float:
    """Seconds to add per board while the fault-injection file exists (chaos runs only)."""
    if path is None:
        return 0.0
    try:
        return max(0.0, float(path.read_text().strip() or 0))
    except (OSError, ValueError):
        return 0.0


def create_inspection_app(settings: Settings, context: WorkerContext | None = None) -> FastStream:
    """The worker application; `context` is built at startup unless given (tests)."""
    topics = settings.topics
    check_poll_budget(settings)
    broker = KafkaBroker(
        settings.kafka.bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        request_timeout_ms=settings.kafka.delivery_timeout_ms,
        config=broker_config(settings.kafka.delivery_timeout_ms, settings.kafka.fetch_wait_ms),
        description="linecheck inspection workers: flagged boards in, verdicts out",
        # FastStream's "Received"/"Processed" line for every batch only at DEBUG: at a busy
        # line's 50 batches/s that is millions of lines a day; the verdicts are the record
        log_level=logging.DEBUG,
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
    ready_file = settings.worker.ready_file

    def on_assign(consumer: Any, partitions: list[Any]) -> None:
        metrics.ASSIGNED.set(len(partitions))
        log.info(
            "assigned partition(s) %s of %s",
            ",".join(str(p.partition) for p in partitions) or "none",
            topics.flagged,
        )
        if ready_file is not None:
            ready_file.parent.mkdir(parents=True, exist_ok=True)
            ready_file.touch()

    def on_revoke(consumer: Any, partitions: list[Any]) -> None:
        # let the batch in flight finish and commit it before the partitions move, so that
        # their new owner does not redo it (it would be decided once anyway: the sinks dedupe);
        # called inside the poll (or the close), on the consumer's thread: the one that may
        # store its offsets (ConsumerCalls)
        try:
            if pipeline.drain_blocking(poll_budget_s(settings)):
                calls.apply()
                commit_stored(consumer)
        except Exception as exc:  # the new owner redoes the batch: the sinks dedupe
            log.warning("could not commit before the rebalance: %s", exc)
        metrics.ASSIGNED.set(0)
        log.info("revoked %d partition(s) of %s", len(partitions), topics.flagged)

    if context is not None:
        state["ctx"] = context
    # one thread inspects, the polled batches queue for it in poll order: the next batch is
    # polled while this one is inspected, so the thread does not idle at batch boundaries
    inspecting = ThreadPoolExecutor(1, thread_name_prefix="inspect")

    flagged = broker.subscriber(
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
        polling_interval=settings.kafka.poll_wait_ms / 1e3,
        on_assign=on_assign,
        on_revoke=on_revoke,
        title="flagged",
        description="FlaggedBoard events (JSON, see schemas/) from line test machines",
    )
    # a batch is what has arrived by the time its first record comes: no wait for a full one
    calls = poll_ready_batches(
        flagged, settings.kafka.batch_size, settings.kafka.poll_wait_ms / 1e3
    )

    @flagged
    async def handle(bodies: list[bytes], msg: KafkaMessage) -> None:
        ctx = state["ctx"]
        began = time.monotonic()
        records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
        sources = [
            SourceInfo(
                topic=topics.flagged, partition=r.partition(), offset=r.offset(), key=r.key()
            )
            for r in records
        ]
        delay = injected_delay(settings.worker.fault_slow_file)

        def as_batch(at: slice, results: list[Result], shadowed: list[Any]) -> BatchResult:
            return BatchResult(results, sources[at], bodies[at], records[at], calls, shadowed)

        def inspect_all(at: slice) -> BatchResult:
            assert ctx.inspector is not None
            if ctx.swapper is not None:  # between calls: the boards of one have one model set
                ctx.swapper.refresh(ctx.inspector)
            # the crops of up to boards_per_call boards go to the classifier in one call
            results = inspect_batch(
                ctx.inspector,
                bodies[at],
                sources[at],
                (lambda: time.sleep(delay)) if delay else None,
                boards_per_call=settings.model.boards_per_call,
                pool=ctx.pool,
            )
            return as_batch(at, results, ctx.inspector.take_shadow_decisions())

        async def in_processes(processes: InspectionProcesses, at: slice) -> BatchResult:
            try:
                results, shadowed = await processes.inspect(bodies[at], sources[at], delay)
            except BrokenProcessPool:
                # a child died (killed, out of memory): start again, as an in-process worker
                # that died would; the batch is redone from the committed offsets
                log.critical("an inspection process died: exiting for a restart")
                os._exit(EXIT_CHILD_DIED)
            return as_batch(at, results, shadowed)

        if (failed := pipeline.take_failure()) is not None:
            # sinks failed since the last poll: consume this batch again with the failed one
            # (never store its offsets past theirs), after a pause
            failed_records, pause = failed
            rewind(calls, failed_records, records)
            await anyio.sleep(pause)
            return
        # A small batch (a line below saturation) goes board by board: a decided board joins
        # the next sink round without waiting for the boards polled with it (offsets are
        # stored in poll order all the same); a full one stays whole, so that a round's audit
        # statement and sends cover many boards (BENCHMARKS "Small batches board by board")
        step = 1 if 4 * len(records) <= settings.kafka.batch_size else len(records)
        spans = [slice(i, i + step) for i in range(0, len(records), step)]
        parts: list[tuple[Awaitable[BatchResult], tuple[Any, ...]]]
        if ctx.processes is None:
            # inspected on the inspection thread while the next batch is polled: the batch
            # after it waits there, so the thread goes from one to the next without waiting
            # for the event loop (`linecheck bench`: the cores' idle time at saturation 1.6–2.1
            # → 1.3–2.0 ms a board, BENCHMARKS "Speed")
            parts = [
                (asyncio.wrap_future(inspecting.submit(inspect_all, at)), records[at])
                for at in spans
            ]
            window = 2 * settings.kafka.batch_size
        else:
            # the children take it while the next batches are polled, up to 4 batches' worth
            # in flight (one batch's worth left the children idle at every batch boundary:
            # 83 → 92 boards/s at saturation, BENCHMARKS "One consumer, N processes")
            parts = [(in_processes(ctx.processes, at), records[at]) for at in spans]
            window = 4 * settings.kafka.batch_size
        for inspected, its_records in parts:
            pipeline.submit(inspected, its_records, calls)
        await pipeline.room(window)
        if (failed := pipeline.take_failure()) is not None:
            await anyio.sleep(failed[1])  # this batch was rewound with the one that failed
            return
        took = time.monotonic() - began
        if took * 1e3 > settings.kafka.max_poll_interval_ms:
            # The group has evicted this consumer mid-batch (its partitions went to others,
            # which redo the batch; the sinks dedupe). A consumer evicted this way may never
            # be given partitions again: exit, so that the supervisor starts a fresh one.
            log.critical(
                "a batch of %d took %.1fs, over kafka.max_poll_interval_ms (%.0fs): this "
                "consumer left the group; exiting for a restart",
                len(records),
                took,
                settings.kafka.max_poll_interval_ms / 1e3,
            )
            metrics.POLL_OVERRUNS.inc()
            os._exit(EXIT_EVICTED)

    def parts() -> tuple[AuditStore, LiveStats, Letters]:
        ctx = state["ctx"]
        return ctx.audit, ctx.stats, ctx.letters

    sinks = VerdictSinks(
        parts,
        lambda v: verdicts.publish(v, key=f"{v.line}:{v.board_serial}".encode()),
        lambda letter, key: deadletters.publish(letter, key=key),
    )
    # a round's audit insert overlaps the publishes of the round before it
    pipeline = SinkPipeline([sinks.record, sinks.send], Backoff())

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
        metrics.MODEL_LOADED.set(1)
        if settings.worker.metrics_port is not None:
            metrics.serve(settings.worker.metrics_port)

    @app.on_shutdown
    async def _drain() -> None:
        await pipeline.wait()  # the last batches' sinks, before the broker closes

    @app.after_shutdown
    async def _close() -> None:
        inspecting.shutdown(wait=True)
        ctx = state.get("ctx")
        if ctx is not None:
            ctx.audit.close()
            ctx.stats.close()
            if ctx.processes is not None:
                ctx.processes.close()

    return app
