"""At-least-once delivery on FastStream's confluent consumer: batches of what has arrived,
offsets stored only for what was processed, a backoff after sink failures (an outage is a
slow retry, not a busy loop), and the check that a batch fits the poll interval."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from faststream.confluent import ConfluentConfig, KafkaMessage

from infra.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


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


def broker_config(
    delivery_timeout_ms: int | None = None, fetch_wait_ms: int | None = None
) -> ConfluentConfig:
    """librdkafka settings of a worker's broker: offsets stored once processed
    (:class:`ConsumerCalls`, :func:`store_processed`), not when polled; the producer's
    delivery timeout and the consumer's longest fetch wait when given.

    The embedded broker (Tansu) holds a fetch that finds no data for the whole
    ``fetch.wait.max.ms`` even when data arrives meanwhile: with librdkafka's 500 ms, a board
    arriving on a quiet line waited 250 ms on average before a worker saw it.

    FastStream's ack commits every stored offset of the consumer. librdkafka by default stores
    a record's offset as soon as it is polled, so a batch that failed (and was rewound) on one
    partition would be committed past by the next successful batch of another partition, and
    lost at the next rebalance (found by `linecheck chaos`)."""
    config: ConfluentConfig = {"enable.auto.offset.store": False}
    if delivery_timeout_ms is not None:
        config["delivery.timeout.ms"] = delivery_timeout_ms
    if fetch_wait_ms is not None:
        config["fetch.wait.max.ms"] = fetch_wait_ms
    return config


def next_offsets(records: Sequence[Any]) -> dict[tuple[str, int], int]:
    """Per (topic, partition), the offset after the last of ``records``: what to store once
    they are processed."""
    after: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic(), r.partition())
        after[key] = max(after.get(key, -1), r.offset() + 1)
    return after


class ConsumerCalls:
    """The calls a worker makes on its consumer besides the poll (storing the offsets of
    processed boards, rewinding after a failure), made by the thread that polls it.

    confluent-kafka (2.16 on) serialises the calls on one Consumer: a call from another
    thread waits, waking every millisecond, until the call in progress returns. A worker's
    consumer is nearly always inside a poll, so a store from another thread waited for the
    next record or the poll's timeout (17 ms at the median, 164–172 ms at the p99, two
    workers paced at 48 boards/s: BENCHMARKS "Offsets stored by the thread that polls"), and
    one made while a rebalance callback (called inside the poll) waited for the sinks could
    not get in at all. So offsets to store and partitions to rewind are queued here
    (:meth:`processed`, :meth:`rewind`, from any thread) and applied (:meth:`apply`) on the
    consumer's thread: before each poll of :func:`poll_ready_batches`, and by the revoke
    callback (which the consumer's close calls too) before it commits."""

    def __init__(self) -> None:
        self._consumer: Any = None  # FastStream's async consumer, once polling
        self._lock = threading.Lock()
        self._store: dict[tuple[str, int], int] = {}  # the next offset to read, per partition
        self._seek: dict[tuple[str, int], int] = {}  # the earliest record to read again

    def bind(self, consumer: Any) -> None:
        """Poll through FastStream's async ``consumer`` (a new one after a restart: what was
        queued for the old one is dropped; the new one starts from the committed offsets)."""
        if consumer is not self._consumer:
            if not hasattr(consumer, "_thread_pool"):  # FastStream 0.6–0.7's one consumer thread
                raise RuntimeError("this FastStream consumer has no thread of its own")
            with self._lock:
                self._consumer = consumer
                self._store.clear()
                self._seek.clear()

    @property
    def raw(self) -> Any:
        """The confluent ``Consumer``."""
        if self._consumer is None:
            raise RuntimeError("the consumer has not polled yet")
        return self._consumer.consumer

    async def run(self, call: Callable[[], T]) -> T:
        """``call()`` on the consumer's thread (after the call in progress there)."""
        if self._consumer is None:
            raise RuntimeError("the consumer has not polled yet")
        pool = self._consumer._thread_pool
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    def processed(self, records: Sequence[Any]) -> None:
        """Queue the offsets after ``records`` (processed, in poll order) to be stored."""
        with self._lock:
            for key, offset in next_offsets(records).items():
                self._store[key] = max(self._store.get(key, -1), offset)

    def rewind(self, earliest: dict[tuple[str, int], int]) -> None:
        """Queue a seek of each partition back to its ``earliest`` record (fetched again)."""
        with self._lock:
            for key, offset in earliest.items():
                self._seek[key] = min(self._seek.get(key, offset), offset)

    def apply(self) -> None:
        """On the consumer's thread: store the queued offsets, then seek the queued
        partitions back (the stored offsets are those before a failed batch). A partition no
        longer assigned is skipped: its new owner starts from the committed offset."""
        from confluent_kafka import KafkaException, TopicPartition

        with self._lock:
            store, self._store = self._store, {}
            seek, self._seek = self._seek, {}
        if not (store or seek):
            return
        consumer = self.raw
        if store:  # raises only when no partition could be stored
            try:
                offsets = [TopicPartition(t, p, o) for (t, p), o in store.items()]
                consumer.store_offsets(offsets=offsets)
            except KafkaException as exc:
                log.info("not storing offsets %s: %s", store, exc)
        for (topic, partition), offset in seek.items():
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                log.info("not rewinding %s/%d: %s", topic, partition, exc)


def poll_ready_batches(subscriber: Any, max_records: int, wait_s: float) -> ConsumerCalls:
    """Make a FastStream batch ``subscriber`` block only for its batch's first record, then
    take what has already arrived (up to ``max_records``) without waiting; return the
    :class:`ConsumerCalls` applied before each poll.

    FastStream's batch poll is librdkafka's ``consume(n, timeout)``, which returns early only
    when ``n`` records have arrived: on a line slower than the workers every batch waited
    the whole poll timeout (10 ms of every board's latency, measured on the embedded
    broker). ``poll`` returns as soon as one record is there."""
    calls = ConsumerCalls()

    def first_record() -> Any:
        calls.apply()
        msg = calls.raw.poll(wait_s)
        return None if msg is None or msg.error() else msg

    async def get_msg() -> tuple[Any, ...] | None:
        consumer = subscriber.consumer  # FastStream's async consumer, set when it starts
        calls.bind(consumer)
        first = await calls.run(first_record)
        if first is None:
            return None
        if max_records == 1:
            return (first,)
        rest = await consumer.getmany(timeout=0, max_records=max_records - 1)
        return (first, *rest)

    subscriber.get_msg = get_msg
    return calls


def confluent_consumer(msg: KafkaMessage) -> Any:
    """The confluent ``Consumer`` that polled ``msg``."""
    return msg.consumer.consumer  # type: ignore[attr-defined]


async def store_processed(consumer: Any, records: tuple[Any, ...]) -> None:
    """Mark records as processed from a handler (the consumer is not polling meanwhile):
    store, per partition, the offset after its last record (what FastStream's ack then
    commits). ``consumer``: the confluent ``Consumer``."""
    from confluent_kafka import TopicPartition

    offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets(records).items()]
    await anyio.to_thread.run_sync(lambda: consumer.store_offsets(offsets=offsets))


def commit_stored(consumer: Any) -> None:
    """Commit the stored offsets now, synchronously (from a rebalance callback); nothing
    stored is not an error."""
    from confluent_kafka import KafkaError, KafkaException

    try:
        consumer.commit(asynchronous=False)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError._NO_OFFSET:
            raise


def poll_budget_s(settings: Settings) -> float:
    """The worst time one batch may hold the handler: every board at its budget, then the
    audit statement, the Redis round trip and the broker's acks at their timeouts."""
    return (
        settings.kafka.batch_size * settings.worker.max_board_s
        + settings.postgres.connect_timeout_s
        + settings.postgres.statement_timeout_ms / 1e3
        + 2 * settings.redis.timeout_s
        + settings.kafka.delivery_timeout_ms / 1e3
    )


def check_poll_budget(settings: Settings) -> None:
    """Refuse to start a worker whose worst batch would outlast ``max.poll.interval.ms``
    (the group would evict it mid-batch, and the batch would be redone elsewhere)."""
    budget = poll_budget_s(settings)
    limit = settings.kafka.max_poll_interval_ms / 1e3
    if budget >= 0.9 * limit:
        raise ValueError(
            f"a batch may take {budget:.0f}s (kafka.batch_size {settings.kafka.batch_size} × "
            f"worker.max_board_s {settings.worker.max_board_s} + sink timeouts), over 90% of "
            f"kafka.max_poll_interval_ms ({limit:.0f}s): lower the batch size or the timeouts, "
            "or raise the poll interval"
        )
