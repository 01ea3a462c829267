"""The overlapped sinks' contract, on the pipeline alone (the whole flow through the real
broker and database, outage included, is in test_flow.py and test_faults.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from workers.batch_sinks import BatchResult, SinkPipeline, earliest_offsets
from workers.delivery import Backoff


class Record:
    def __init__(self, partition: int, offset: int) -> None:
        self._p, self._o = partition, offset

    def topic(self) -> str:
        return "boards.flagged"

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


class Consumer:
    """Records what the pipeline asks of the consumer's calls (workers.delivery.ConsumerCalls):
    offsets to store, partitions to seek back."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def processed(self, records: tuple[Any, ...]) -> None:
        after: dict[int, int] = {}
        for r in records:
            after[r.partition()] = max(after.get(r.partition(), -1), r.offset() + 1)
        self.calls.append(("store", sorted(after.items())))

    def rewind(self, earliest: dict[tuple[str, int], int]) -> None:
        for (_, partition), offset in earliest.items():
            self.calls.append(("seek", (partition, offset)))


def _batch(consumer: Consumer, *records: tuple[int, int]) -> BatchResult:
    recs = tuple(Record(p, o) for p, o in records)
    return BatchResult([], [], [], recs, consumer)  # type: ignore[arg-type]


def test_earliest_offsets_per_partition() -> None:
    recs = [Record(0, 7), Record(1, 3), Record(0, 5)]
    assert earliest_offsets(recs) == {("boards.flagged", 0): 5, ("boards.flagged", 1): 3}


def test_sinks_run_behind_the_next_batch_and_store_offsets_only_after_them() -> None:
    events: list[str] = []
    consumer = Consumer()

    async def sink(batch: BatchResult, _: object) -> None:
        events.append(f"sink {batch.records[0].offset()} start")
        await asyncio.sleep(0.05)
        events.append(f"sink {batch.records[0].offset()} done")

    async def run() -> None:
        pipeline = SinkPipeline([sink], Backoff())
        first = _batch(consumer, (0, 0), (0, 1))
        pipeline.submit(first, first.records, consumer)
        await pipeline.room(2)  # only the batch just submitted: the handler returns
        events.append("inspect next")  # the next batch is inspected
        await asyncio.sleep(0.01)
        events.append("inspected next")
        assert consumer.calls == []  # nothing stored while the sinks are in flight
        second = _batch(consumer, (0, 2))
        pipeline.submit(second, second.records, consumer)
        await pipeline.room(1)  # the first batch's sinks are done
        events.append("room")
        await pipeline.wait()
        assert pipeline.take_failure() is None
        assert pipeline.drain_blocking(0.0)

    asyncio.run(run())
    assert events == [
        "inspect next",
        "sink 0 start",
        "inspected next",
        "sink 0 done",
        "room",  # the first batch stored: room for the handler
        "sink 2 start",
        "sink 2 done",
    ]
    assert consumer.calls == [("store", [(0, 2)]), ("store", [(0, 3)])]


def test_what_is_inspected_is_sunk_at_once_and_offsets_are_stored_in_poll_order() -> None:
    """Child processes inspect several polled batches at once: those inspected go to the
    sinks together as one round without waiting for an older batch still in a child, but
    no offset is stored past a batch whose sinks have not finished."""
    consumer = Consumer()
    sunk: list[list[int]] = []

    async def sink(batch: BatchResult, _: object) -> None:
        sunk.append([r.offset() for r in batch.records])

    async def run() -> None:
        pipeline = SinkPipeline([sink], Backoff())
        first_gate, last_gate = asyncio.Event(), asyncio.Event()

        async def inspected(batch: BatchResult, gate: asyncio.Event | None) -> BatchResult:
            if gate is not None:
                await gate.wait()
            return batch

        polled = [
            (_batch(consumer, (0, 0)), first_gate),
            (_batch(consumer, (0, 1), (0, 2)), None),
            (_batch(consumer, (1, 7)), None),
            (_batch(consumer, (0, 3)), last_gate),
        ]
        for batch, gate in polled:
            pipeline.submit(inspected(batch, gate), batch.records, consumer)
        await asyncio.sleep(0.01)
        assert sunk == [[1, 2, 7]]  # the two inspected batches, as one round
        assert consumer.calls == []  # nothing stored: the oldest is still being inspected
        assert pipeline.boards == 5
        first_gate.set()
        await pipeline.room(1)
        assert sunk == [[1, 2, 7], [0]]
        assert consumer.calls == [("store", [(0, 3), (1, 8)])]  # the three oldest at once
        last_gate.set()
        await pipeline.wait()
        assert pipeline.boards == 0

    asyncio.run(run())
    assert sunk == [[1, 2, 7], [0], [3]]
    assert consumer.calls == [("store", [(0, 3), (1, 8)]), ("store", [(0, 4)])]


def test_a_failed_batch_is_rewound_with_the_batches_behind_it_and_not_stored() -> None:
    consumer = Consumer()

    async def sink(batch: BatchResult, _: object) -> None:
        raise ConnectionError("database down")

    async def run() -> tuple[tuple[Any, ...], float] | None:
        pipeline = SinkPipeline([sink], Backoff())
        slow = asyncio.Event()

        async def later(batch: BatchResult) -> BatchResult:
            await slow.wait()  # still being inspected when the first batch's sinks fail
            return batch

        first = _batch(consumer, (0, 4), (1, 9), (0, 5))
        second = _batch(consumer, (0, 6), (2, 3))
        pipeline.submit(first, first.records, consumer)
        pipeline.submit(later(second), second.records, consumer)
        await pipeline.wait()
        assert pipeline.boards == 0
        return pipeline.take_failure()

    failed = asyncio.run(run())
    assert failed is not None
    records, pause = failed
    assert [r.offset() for r in records] == [4, 9, 5, 6, 3] and pause == 0.25
    assert not any(c[0] == "store" for c in consumer.calls)
    assert sorted(c for c in consumer.calls) == [
        ("seek", (0, 4)),
        ("seek", (1, 9)),
        ("seek", (2, 3)),
    ]


def test_the_next_rounds_audit_overlaps_this_rounds_publishes_in_poll_order() -> None:
    """Two stages (audit, then publish): round 2's audit runs while round 1 publishes; each
    stage and the stored offsets keep the poll order."""
    consumer = Consumer()
    log: list[str] = []
    publishing = asyncio.Event()

    async def audit(batch: BatchResult, _: object) -> int:
        first = batch.records[0].offset()
        log.append(f"audit {first}")
        if first == 1:
            assert publishing.is_set()  # round 1 is publishing meanwhile
        return first

    async def publish(batch: BatchResult, first: int) -> None:
        log.append(f"publish {first} start")
        if first == 0:
            publishing.set()
            await asyncio.sleep(0.05)
        log.append(f"publish {first} done")

    async def run() -> None:
        pipeline = SinkPipeline([audit, publish], Backoff())
        for b in (_batch(consumer, (0, 0)), _batch(consumer, (0, 1))):
            pipeline.submit(b, b.records, consumer)
            await asyncio.sleep(0.01)  # the second arrives while the first publishes
        await pipeline.wait()
        assert pipeline.take_failure() is None

    asyncio.run(run())
    assert log == [
        "audit 0",
        "publish 0 start",
        "audit 1",
        "publish 0 done",
        "publish 1 start",
        "publish 1 done",
    ]
    assert consumer.calls == [("store", [(0, 1)]), ("store", [(0, 2)])]


def test_a_round_behind_a_failed_publish_is_dropped_after_its_audit() -> None:
    consumer = Consumer()
    published: list[int] = []

    async def audit(batch: BatchResult, _: object) -> int:
        return batch.records[0].offset()

    async def publish(batch: BatchResult, first: int) -> None:
        await asyncio.sleep(0.03)
        if first == 0:
            raise ConnectionError("broker down")
        published.append(first)

    async def run() -> tuple[tuple[Any, ...], float] | None:
        pipeline = SinkPipeline([audit, publish], Backoff())
        for b in (_batch(consumer, (0, 0)), _batch(consumer, (0, 1)), _batch(consumer, (1, 5))):
            pipeline.submit(b, b.records, consumer)
            await asyncio.sleep(0.01)
        await pipeline.wait()
        return pipeline.take_failure()

    failed = asyncio.run(run())
    assert failed is not None and sorted(r.offset() for r in failed[0]) == [0, 1, 5]
    assert published == []  # nothing behind the failed round was sent
    assert not any(c[0] == "store" for c in consumer.calls)
    assert sorted(c for c in consumer.calls) == [("seek", (0, 0)), ("seek", (1, 5))]
