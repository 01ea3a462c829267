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


@dataclass(eq=False)
class _Queued:
    done: asyncio.Future[BatchResult]
    records: tuple[Any, ...]
    consumer: Any


@dataclass(eq=False)
class _Round:
    batch: BatchResult
    left: list[asyncio.Event]  # set when this round has left stage k (or was dropped)
    dropped: bool = False


async def _store_offsets(batch: BatchResult, carry: Any) -> None:
    """The last stage: the offsets after the batch's records, for FastStream's commit."""
    await store_processed(batch.consumer, batch.records)


def _ready(done: asyncio.Future[BatchResult]) -> bool:
    return done.done() and not done.cancelled() and done.exception() is None


# A sink stage: the batch and what the stage before it returned (None for the first).
Stage = Callable[[BatchResult, Any], Awaitable[Any]]


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
    """Inspected batches through the sink stages, in poll order.

    The handler submits (:meth:`submit`) each polled batch (inspected, or still being
    inspected in ``worker.processes`` child processes) and then waits for :meth:`room`. A
    runner awaits the oldest batch's inspection and joins to it the batches behind it that
    are already inspected: a *round* (one audit insert and one publish round for all of
    them). Each round goes through ``stages`` (e.g. the audit insert, then the publishes),
    then its offsets are stored; a round enters a stage only after the round before it has
    left that stage, so the next round's audit insert overlaps this one's publishes, and the
    order of every stage and of the stored offsets is the poll order.

    When a stage fails, that round, every round behind it and every queued batch are rewound
    and dropped, and the handler finds the failure with :meth:`take_failure` (it then rewinds
    its own batch and sleeps the backoff). The revoke callback and shutdown drain it."""

    def __init__(self, stages: Sequence[Stage], backoff: Backoff) -> None:
        self._stages: list[Stage] = [*stages, _store_offsets]
        self.backoff = backoff
        self._queue: deque[_Queued] = deque()  # submitted, not yet in a round
        self._rounds: list[_Round] = []  # in the stages
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._failure: tuple[tuple[Any, ...], float] | None = None
        self._changed = asyncio.Event()
        self._idle = threading.Event()
        self._idle.set()

    @property
    def boards(self) -> int:
        """Boards submitted whose offsets are not stored yet (nor dropped by a failure)."""
        return sum(len(q.records) for q in self._queue) + sum(
            len(r.batch.records) for r in self._rounds
        )

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
        """The records of the batches a failure dropped (rewound already) and the backoff to
        sleep before the next poll; None if nothing failed since the last call."""
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
        loop = asyncio.get_running_loop()
        while self._queue:
            head = self._queue[0]
            try:
                batch = await head.done
            except BaseException as exc:
                if head not in self._queue:  # dropped (and cancelled) by a failure meanwhile
                    continue
                if not isinstance(exc, Exception):
                    raise
                # the inspection itself raised: retry it too
                await rewind(head.consumer, self._failed(exc, None))
                continue
            self._queue.popleft()
            while self._queue and _ready(self._queue[0].done):
                batch = batch.joined(self._queue.popleft().done.result())
            ahead = self._rounds[-1] if self._rounds else None
            round_ = _Round(batch, [asyncio.Event() for _ in self._stages])
            self._rounds.append(round_)
            task = loop.create_task(self._through(round_, ahead))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            # the next round is formed once this one has left the first stage: what has
            # been inspected by then joins it
            await round_.left[0].wait()
        self._check_idle()

    async def _through(self, round_: _Round, ahead: _Round | None) -> None:
        carry: Any = None
        try:
            for k, stage in enumerate(self._stages):
                if ahead is not None:
                    await ahead.left[k].wait()
                if round_.dropped:
                    return
                carry = await stage(round_.batch, carry)
                round_.left[k].set()
            self.backoff.reset()
        except Exception as exc:
            if not round_.dropped:
                await rewind(round_.batch.consumer, self._failed(exc, round_))
        finally:
            for event in round_.left:  # the rounds behind never wait for a dropped one
                event.set()
            self._rounds.remove(round_)
            self._changed.set()
            self._check_idle()

    def _failed(self, exc: Exception, at: _Round | None) -> tuple[Any, ...]:
        """Drop ``at``, the rounds behind it and every queued batch, and record the failure
        (before any await: a batch the handler submits from now on sees it); their records,
        which the caller rewinds now, not at the next poll (an idle line must get its
        boards again)."""
        dropped = self._rounds[self._rounds.index(at) :] if at is not None else []
        for r in dropped:
            r.dropped = True
        queued = list(self._queue)
        self._queue.clear()
        for q in queued:
            q.done.cancel()
        records = tuple(r for d in dropped for r in d.batch.records) + tuple(
            r for q in queued for r in q.records
        )
        delay = self.backoff.failed()
        log.error("sinks failed for %d board(s) (%s); retrying in %.1fs", len(records), exc, delay)
        metrics.SINK_FAILURES.inc()
        self._failure = (records, delay)
        self._changed.set()
        return records

    def _check_idle(self) -> None:
        if not self._queue and not self._rounds:
            self._idle.set()
