"""A batch's sinks, overlapped with the inspection of the batches behind it.

A worker inspects batch N+1 (or, with ``worker.processes``, several batches in child
processes) while batch N's audit insert and verdict publishes are in flight, so a core does
not idle while PostgreSQL and the broker answer. The delivery guarantee stays as it was:

- what has been inspected goes to the sinks as one *round* (one insert, one publish round):
  a batch inspected before an older one still in a child process does not wait for it;
  rounds pass each sink stage one after the other, in the order they were formed;
- offsets are stored in poll order, only for the batches before the oldest one not through
  both sinks, so FastStream's commit never passes an event whose verdict is not in the audit
  store and on the broker;
- when a round's sinks fail, every batch not stored yet is dropped and rewound (seek to its
  earliest record per partition): all are consumed again, after a backoff, and the
  idempotent sinks decide each event once (a verdict already sent may be sent again).

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

from schemas.events import DeadLetter, Verdict
from workers import metrics
from workers.delivery import Backoff, ConsumerCalls
from workers.inspector import SourceInfo

log = logging.getLogger("linecheck.worker")


@dataclass
class BatchResult:
    """One polled batch, inspected: what the sinks need."""

    results: list[Verdict | DeadLetter]
    sources: list[SourceInfo]
    bodies: list[bytes]
    records: tuple[Any, ...]  # the confluent Messages, for offsets and rewinds
    calls: ConsumerCalls  # of the consumer that polled them: offsets and rewinds
    shadowed: list[Any] = field(default_factory=list)

    def joined(self, other: BatchResult) -> BatchResult:
        """This batch and ``other`` (polled after it, by the same consumer) as one."""
        return BatchResult(
            [*self.results, *other.results],
            [*self.sources, *other.sources],
            [*self.bodies, *other.bodies],
            (*self.records, *other.records),
            self.calls,
            [*self.shadowed, *other.shadowed],
        )


@dataclass(eq=False)
class _Queued:
    done: asyncio.Future[BatchResult]
    records: tuple[Any, ...]
    calls: ConsumerCalls
    taken: bool = False  # in a round
    sunk: bool = False  # through every stage: its offsets may be stored


@dataclass(eq=False)
class _Round:
    batch: BatchResult
    entries: list[_Queued]
    left: list[asyncio.Event]  # set when this round has left stage k (or was dropped)
    dropped: bool = False


# A sink stage: the batch and what the stage before it returned (None for the first).
Stage = Callable[[BatchResult, Any], Awaitable[Any]]


def earliest_offsets(records: Sequence[Any]) -> dict[tuple[str, int], int]:
    """Per (topic, partition), the offset of the earliest record."""
    earliest: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic(), r.partition())
        earliest[key] = min(earliest.get(key, r.offset()), r.offset())
    return earliest


def rewind(calls: ConsumerCalls, *batches: Sequence[Any]) -> None:
    """Have each partition of ``batches`` sought back to its earliest record before the
    consumer's next poll, so that it fetches them again (:meth:`ConsumerCalls.rewind`)."""
    earliest: dict[tuple[str, int], int] = {}
    for records in batches:
        for key, offset in earliest_offsets(records).items():
            earliest[key] = min(earliest.get(key, offset), offset)
    calls.rewind(earliest)


class SinkPipeline:
    """Inspected batches through the sink stages; offsets stored in poll order.

    The handler submits (:meth:`submit`) each polled batch (inspected, or still being
    inspected in ``worker.processes`` child processes) and then waits for :meth:`room`. A
    runner takes every submitted batch already inspected (in poll order, joined) as a
    *round*, and the next round when this one has left the first stage: what has been
    inspected by then joins it. Each round goes through ``stages`` (the audit insert, then
    the publishes); a round enters a stage only after the round before it has left that
    stage, so the next round's audit insert overlaps this one's publishes. Then the offsets
    of the oldest batches, as far as all are through the stages, are stored.

    When a stage fails, every round and batch not stored yet is dropped and rewound, and the
    handler finds the failure with :meth:`take_failure` (it then rewinds its own batch and
    sleeps the backoff). The revoke callback and shutdown drain it."""

    def __init__(self, stages: Sequence[Stage], backoff: Backoff) -> None:
        self._stages = list(stages)
        self.backoff = backoff
        self._entries: deque[_Queued] = deque()  # submitted, offsets not stored; poll order
        self._rounds: list[_Round] = []  # in the stages, in the order formed
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._failure: tuple[tuple[Any, ...], float] | None = None
        self._changed = asyncio.Event()
        self._arrived = asyncio.Event()
        self._idle = threading.Event()
        self._idle.set()

    @property
    def boards(self) -> int:
        """Boards submitted whose offsets are not stored yet (nor dropped by a failure)."""
        return sum(len(e.records) for e in self._entries)

    def submit(
        self,
        batch: BatchResult | Awaitable[BatchResult],
        records: tuple[Any, ...],
        calls: ConsumerCalls,
    ) -> None:
        """Queue ``batch`` (its ``records`` and its consumer's ``calls``, for a rewind before
        it is inspected) behind the batches already submitted."""
        done: asyncio.Future[BatchResult]
        if isinstance(batch, BatchResult):
            done = asyncio.get_running_loop().create_future()
            done.set_result(batch)
        else:
            done = asyncio.ensure_future(batch)
        self._entries.append(_Queued(done, records, calls))
        self._idle.clear()
        self._arrived.set()
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
        """Wait until every submitted batch's sinks have finished and its offsets are
        stored, or a failure has dropped and rewound it."""
        await self.room(0)
        while busy := [t for t in (self._runner, *self._tasks) if t is not None and not t.done()]:
            await asyncio.gather(*busy, return_exceptions=True)

    def drain_blocking(self, timeout_s: float) -> bool:
        """From a thread other than the event loop's (the consumer's revoke callback): wait
        until no batch's sinks are waiting or in flight; False when ``timeout_s`` passed first."""
        return self._idle.wait(timeout_s)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while waiting := [e for e in self._entries if not e.taken]:
            ready = [e for e in waiting if e.done.done()]
            if not ready:  # until one is inspected, or another is submitted
                self._arrived.clear()
                arrival = loop.create_task(self._arrived.wait())
                watched: list[asyncio.Future[Any]] = [arrival, *(e.done for e in waiting)]
                await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                arrival.cancel()
                continue
            broken = next((e for e in ready if e.done.cancelled() or e.done.exception()), None)
            if broken is not None:  # the inspection itself raised: retry it with the rest
                exc = broken.done.exception() if not broken.done.cancelled() else None
                rewind(broken.calls, self._failed(exc or RuntimeError("cancelled")))
                continue
            batch = ready[0].done.result()
            for e in ready[1:]:
                batch = batch.joined(e.done.result())
            for e in ready:
                e.taken = True
            ahead = self._rounds[-1] if self._rounds else None
            round_ = _Round(batch, ready, [asyncio.Event() for _ in self._stages])
            self._rounds.append(round_)
            task = loop.create_task(self._through(round_, ahead))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
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
            for e in round_.entries:
                e.sunk = True
            self._store_ready()
            self.backoff.reset()
        except Exception as exc:
            if not round_.dropped:
                rewind(round_.batch.calls, self._failed(exc))
        finally:
            for event in round_.left:  # the rounds behind never wait for a dropped one
                event.set()
            self._rounds.remove(round_)
            self._changed.set()
            self._check_idle()

    def _store_ready(self) -> None:
        """Queue the offsets of the oldest batches, as far as all are through the stages, to
        be stored by the consumer's thread (in poll order: never backwards)."""
        done: list[_Queued] = []
        while self._entries and self._entries[0].sunk:
            done.append(self._entries.popleft())
        if done:
            done[0].calls.processed(tuple(r for e in done for r in e.records))

    def _failed(self, exc: BaseException) -> tuple[Any, ...]:
        """Drop every round and batch not stored yet, and record the failure (before any
        await: a batch the handler submits from now on sees it); their records, which the
        caller rewinds now (sought back before the consumer's next poll, which an idle line
        makes too: it gets its boards again without a new batch to notice the failure)."""
        for r in self._rounds:
            r.dropped = True
        dropped = list(self._entries)
        self._entries.clear()
        for e in dropped:
            e.done.cancel()
        records = tuple(r for e in dropped for r in e.records)
        delay = self.backoff.failed()
        log.error("sinks failed for %d board(s) (%s); retrying in %.1fs", len(records), exc, delay)
        metrics.SINK_FAILURES.inc()
        self._failure = (records, delay)
        self._changed.set()
        return records

    def _check_idle(self) -> None:
        if not self._entries and not self._rounds:
            self._idle.set()
