"""A batch's sinks, overlapped with the inspection of the next batch.

A worker inspects batch N+1 while batch N's audit insert and verdict publishes are in
flight, so a core does not idle while PostgreSQL and the broker answer. The delivery
guarantee stays as it was:

- sinks run one batch at a time, in poll order (a batch's sinks start only after the
  previous batch's have finished);
- a batch's offsets are stored only after both sinks acknowledged it, so FastStream's
  commit never passes an event whose verdict is not in the audit store and on the broker;
- a batch whose sinks fail is rewound (seek to its earliest record per partition) and the
  batch inspected meanwhile is dropped and rewound too: both are consumed again, after a
  backoff, and the idempotent sinks decide each event once.

:class:`SinkPipeline` holds the one batch in flight; the handler calls :meth:`wait` before
starting the next batch's sinks, and the worker's revoke callback and shutdown drain it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from schemas.events import DeadLetter, Verdict
from workers import metrics
from workers.delivery import Backoff, store_processed
from workers.inspector import SourceInfo

log = logging.getLogger("linecheck.worker")


@dataclass
class BatchResult:
    """One polled batch, inspected: what the sinks need."""

    results: list[Verdict | DeadLetter]
    sources: list[SourceInfo]
    bodies: list[bytes]
    records: tuple[Any, ...]  # the confluent Messages, for offsets and rewinds
    consumer: Any  # the confluent Consumer that polled them
    shadowed: list[Any] = field(default_factory=list)


SinkFn = Callable[[BatchResult], Awaitable[None]]


def earliest_offsets(records: Sequence[Any]) -> dict[tuple[str, int], int]:
    """Per (topic, partition), the offset of the earliest record."""
    earliest: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic(), r.partition())
        earliest[key] = min(earliest.get(key, r.offset()), r.offset())
    return earliest


async def rewind(consumer: Any, *batches: Sequence[Any]) -> None:
    """Seek each partition of ``batches`` back to its earliest record, so the consumer
    fetches them again. A partition no longer assigned (a rebalance took it) is skipped:
    its new owner starts from the committed offset."""
    from confluent_kafka import KafkaException, TopicPartition

    earliest: dict[tuple[str, int], int] = {}
    for records in batches:
        for key, offset in earliest_offsets(records).items():
            earliest[key] = min(earliest.get(key, offset), offset)

    def seek() -> None:
        for (topic, partition), offset in earliest.items():
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                log.info("not rewinding %s/%d: %s", topic, partition, exc)

    await anyio.to_thread.run_sync(seek)


class SinkPipeline:
    """At most one batch's sinks in flight, behind the next batch's inspection."""

    def __init__(self, sink: SinkFn, backoff: Backoff) -> None:
        self._sink = sink
        self.backoff = backoff
        self._pending: asyncio.Task[None] | None = None
        self._pending_batch: BatchResult | None = None
        self._idle = threading.Event()
        self._idle.set()

    async def _run(self, batch: BatchResult) -> None:
        try:
            await self._sink(batch)
            await store_processed(batch.consumer, batch.records)
        except BaseException:
            # rewind now, not at the next poll: an idle line must get this batch again
            await rewind(batch.consumer, batch.records)
            raise
        finally:
            self._idle.set()

    def start(self, batch: BatchResult) -> None:
        """Run ``batch``'s sinks in the background (call :meth:`wait` first)."""
        if self._pending is not None:
            raise RuntimeError("a batch's sinks are already in flight: wait() for them first")
        self._idle.clear()
        self._pending_batch = batch
        self._pending = asyncio.get_running_loop().create_task(self._run(batch))

    async def wait(self) -> tuple[BatchResult, float] | None:
        """Wait for the batch in flight. When its sinks failed (it has been rewound already):
        the batch and the backoff delay to sleep before the next poll; else None."""
        task, batch = self._pending, self._pending_batch
        self._pending = self._pending_batch = None
        if task is None:
            return None
        try:
            await task
        except Exception as exc:
            delay = self.backoff.failed()
            assert batch is not None
            log.error(
                "sinks failed for a batch of %d (%s); retrying in %.1fs",
                len(batch.results),
                exc,
                delay,
            )
            metrics.SINK_FAILURES.inc()
            return batch, delay
        self.backoff.reset()
        return None

    def drain_blocking(self, timeout_s: float) -> bool:
        """From a thread other than the event loop's (the consumer's revoke callback): wait
        until no batch's sinks are in flight; False when ``timeout_s`` passed first."""
        return self._idle.wait(timeout_s)
