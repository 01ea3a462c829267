"""At-least-once delivery on FastStream's confluent consumer: batches of what has arrived,
offsets stored only for what was processed, a backoff after sink failures (an outage is a
slow retry, not a busy loop), and the check that a batch fits the poll interval."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
from faststream.confluent import ConfluentConfig, KafkaMessage

from infra.settings import Settings


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
    """librdkafka settings of a worker's broker: offsets stored by :func:`store_processed`,
    not when polled; the producer's delivery timeout and the consumer's longest fetch wait
    when given.

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


def poll_ready_batches(subscriber: Any, max_records: int, wait_s: float) -> None:
    """Make a FastStream batch ``subscriber`` block only for its batch's first record, then
    take what has already arrived (up to ``max_records``) without waiting.

    FastStream's batch poll is librdkafka's ``consume(n, timeout)``, which returns early only
    when ``n`` records have arrived: on a line slower than the workers every batch waited
    the whole poll timeout (10 ms of every board's latency, measured on the embedded
    broker). ``poll`` returns as soon as one record is there."""

    async def get_msg() -> tuple[Any, ...] | None:
        consumer = subscriber.consumer  # FastStream's async consumer, set when it starts
        first = await consumer.getone(timeout=wait_s)
        if first is None:
            return None
        if max_records == 1:
            return (first,)
        rest = await consumer.getmany(timeout=0, max_records=max_records - 1)
        return (first, *rest)

    subscriber.get_msg = get_msg


def confluent_consumer(msg: KafkaMessage) -> Any:
    """The confluent ``Consumer`` that polled ``msg``."""
    return msg.consumer.consumer  # type: ignore[attr-defined]


async def store_processed(consumer: Any, records: tuple[Any, ...]) -> None:
    """Mark a batch as processed: store, per partition, the offset after its last record
    (what FastStream's ack then commits). ``consumer``: the confluent ``Consumer``."""
    from confluent_kafka import TopicPartition

    last: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic(), r.partition())
        last[key] = max(last.get(key, -1), r.offset())
    await anyio.to_thread.run_sync(
        lambda: consumer.store_offsets(
            offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
        )
    )


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
