"""A batch's sinks, overlapped with the inspection of the batches behind it.

A worker inspects batch N+1 (or, with ``worker.processes``, several batches in child
processes) while batch N's audit insert and verdict publishes are in flight, so a core does
not idle while PostgreSQL and the broker answer. The delivery guarantee stays as it was:

- sinks run one batch at a time, in poll order (batches already inspected when their turn
  comes are joined into one: one insert, one publish round, one offset store);
- a batch's offsets are stored only after both sinks acknowledged it, so FastStream's
  commit never passes an event whose verdict is not in the audit store and on the broker;
- a batch whose sinks fail is rewound (seek to its earliest record per partition) with every
  batch submitted behind it, which are dropped: all are consumed again, after a backoff,
  and the idempotent sinks decide each event once.

:class:`SinkPipeline` holds the batches in flight; the handler :meth:`~SinkPipeline.submit`
sends each batch and waits for :meth:`~SinkPipeline.room`, and the worker's revoke callback and
shutdown drain it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
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

    def joined(self, other: BatchResult) -> BatchResult:
        """This batch and ``other`` (polled after it, by the same consumer) as one."""
        return BatchResult(
            [*self.results, *other.results],
            [*self.sources, *other.sources],
            [*self.bodies, *other.bodies],
            (*self.records, *other.records),
            self.consumer,
            [*self.shadowed, *other.shadowed],
        )


@dataclass
class _Queued:
    done: asyncio.Future[BatchResult]
    records: tuple[Any, ...]
    consumer: Any


def _ready(done: asyncio.Future[BatchResult]) -> bool:
    return done.done() and not done.cancelled() and done.exception() is None


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
    """Inspected batches waiting for their sinks, run one at a time in poll order.

    The handler submits (:meth:`submit`) each polled batch (inspected, or still being inspected
    in ``worker.processes`` child processes) and then waits for :meth:`room`; a runner task
    awaits the oldest batch's results, joins to it the batches behind it that are already
    inspected (one audit insert and one publish round for all of them), runs the sinks and
    stores the offsets. When sinks fail, every queued batch is rewound and dropped, and the
    handler finds the failure with :meth:`take_failure` (it then rewinds its own batch and
    sleeps the backoff). The revoke callback and shutdown drain it."""

    def __init__(self, sink: SinkFn, backoff: Backoff) -> None:
        self._sink = sink
        self.backoff = backoff
        self._queue: deque[_Queued] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._failure: tuple[tuple[Any, ...], float] | None = None
        self._changed = asyncio.Event()
        self._idle = threading.Event()
        self._idle.set()

    @property
    def boards(self) -> int:
        """Boards submitted whose sinks have not finished."""
        return sum(len(q.records) for q in self._queue)

    def submit(
        self, batch: BatchResult | Awaitable[BatchResult], records: tuple[Any, ...], consumer: Any
    ) -> None:
        """Queue ``batch`` (its ``records`` and ``consumer`` for a rewind before it is
        inspected) behind the batches already submitted."""
        done: asyncio.Future[BatchResult]
        if isinstance(batch, BatchResult):
            done = asyncio.get_running_loop().create_future()
            done.set_result(batch)
        else:
            done = asyncio.ensure_future(batch)
        self._queue.append(_Queued(done, records, consumer))
        self._idle.clear()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run())

    def take_failure(self) -> tuple[tuple[Any, ...], float] | None:
        """The records of the batch whose sinks failed (rewound already, with every batch
        submitted behind it) and the backoff to sleep before the next poll; None if none
        failed since the last call."""
        failure, self._failure = self._failure, None
        return failure

    async def room(self, boards: int) -> None:
        """Wait until at most ``boards`` boards are waiting for their sinks."""
        while self.boards > boards:
            self._changed.clear()
            await self._changed.wait()

    async def wait(self) -> None:
        """Wait until every submitted batch's sinks have finished (or failed)."""
        await self.room(0)

    def drain_blocking(self, timeout_s: float) -> bool:
        """From a thread other than the event loop's (the consumer's revoke callback): wait
        until no batch's sinks are waiting or in flight; False when ``timeout_s`` passed first."""
        return self._idle.wait(timeout_s)

    async def _run(self) -> None:
        while self._queue:
            head = self._queue[0]
            taken = 1
            try:
                batch = await head.done
                while taken < len(self._queue) and _ready(self._queue[taken].done):
                    batch = batch.joined(self._queue[taken].done.result())
                    taken += 1
                await self._sink(batch)
                await store_processed(batch.consumer, batch.records)
            except Exception as exc:
                await self._failed(exc)
            else:
                self.backoff.reset()
                for _ in range(taken):
                    self._queue.popleft()
            self._changed.set()
        self._idle.set()

    async def _failed(self, exc: Exception) -> None:
        """Rewind now, not at the next poll (an idle line must get its boards again), every
        queued batch with the failed one; the handler sleeps the backoff."""
        queued = list(self._queue)
        self._queue.clear()
        for q in queued:
            q.done.cancel()
        delay = self.backoff.failed()
        log.error(
            "sinks failed for %d board(s) (%s); retrying in %.1fs",
            sum(len(q.records) for q in queued),
            exc,
            delay,
        )
        metrics.SINK_FAILURES.inc()
        records = tuple(r for q in queued for r in q.records)
        await rewind(queued[0].consumer, records)
        self._failure = (records, delay)
