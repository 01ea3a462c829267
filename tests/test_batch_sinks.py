"""The overlapped sinks' contract, on the pipeline alone (the whole flow through the real
broker and database, outage included, is in test_flow.py and test_faults.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

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
    """Records what the pipeline asks of the confluent consumer."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def store_offsets(self, offsets: list[Any]) -> None:
        self.calls.append(("store", sorted((tp.partition, tp.offset) for tp in offsets)))

    def seek(self, tp: Any) -> None:
        self.calls.append(("seek", (tp.partition, tp.offset)))


def _batch(consumer: Consumer, *records: tuple[int, int]) -> BatchResult:
    recs = tuple(Record(p, o) for p, o in records)
    return BatchResult([], [], [], recs, consumer)


def test_earliest_offsets_per_partition() -> None:
    recs = [Record(0, 7), Record(1, 3), Record(0, 5)]
    assert earliest_offsets(recs) == {("boards.flagged", 0): 5, ("boards.flagged", 1): 3}


def test_sinks_run_behind_the_next_batch_and_store_offsets_only_after_them() -> None:
    events: list[str] = []
    consumer = Consumer()

    async def sink(batch: BatchResult) -> None:
        events.append(f"sink {batch.records[0].offset()} start")
        await asyncio.sleep(0.05)
        events.append(f"sink {batch.records[0].offset()} done")

    async def run() -> None:
        pipeline = SinkPipeline(sink, Backoff())
        pipeline.start(_batch(consumer, (0, 0), (0, 1)))
        events.append("inspect next")  # the handler returns; the next batch is inspected
        await asyncio.sleep(0.01)
        events.append("inspected next")
        assert consumer.calls == []  # nothing stored while the sinks are in flight
        with pytest.raises(RuntimeError, match="in flight"):
            pipeline.start(_batch(consumer, (0, 2)))
        assert await pipeline.wait() is None
        pipeline.start(_batch(consumer, (0, 2)))
        assert await pipeline.wait() is None
        assert pipeline.drain_blocking(0.0)

    asyncio.run(run())
    assert events == [
        "inspect next",
        "sink 0 start",
        "inspected next",
        "sink 0 done",
        "sink 2 start",
        "sink 2 done",
    ]
    assert consumer.calls == [("store", [(0, 2)]), ("store", [(0, 3)])]


def test_a_failed_batch_is_rewound_and_not_stored() -> None:
    consumer = Consumer()

    async def sink(batch: BatchResult) -> None:
        raise ConnectionError("database down")

    async def run() -> tuple[BatchResult, float] | None:
        pipeline = SinkPipeline(sink, Backoff())
        pipeline.start(_batch(consumer, (0, 4), (1, 9), (0, 5)))
        return await pipeline.wait()

    failed = asyncio.run(run())
    assert failed is not None
    batch, pause = failed
    assert [r.offset() for r in batch.records] == [4, 9, 5] and pause == 0.25
    assert ("store", [(0, 6), (1, 10)]) not in consumer.calls
    assert sorted(c for c in consumer.calls) == [("seek", (0, 4)), ("seek", (1, 9))]
