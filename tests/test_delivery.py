"""The worker's batch poll on the real broker: a batch is what has arrived when its first
record comes, not what arrives until the poll times out (a quiet line's boards used to
wait the whole poll timeout); offsets stored by the thread that polls."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from faststream import AckPolicy
from faststream.confluent import KafkaBroker, KafkaMessage

from infra.kafka_admin import ensure_topics
from infra.settings import Settings
from workers.delivery import broker_config, commit_stored, poll_ready_batches

WAIT_S = 3.0  # the poll's timeout: the old poll held every short batch this long


def test_a_short_batch_is_handed_over_without_waiting_for_the_poll_timeout(
    settings: Settings,
) -> None:
    topic = settings.topics.flagged
    ensure_topics(settings.kafka.bootstrap_servers, settings.topics, 1)
    received: list[tuple[float, int]] = []

    async def run() -> None:
        broker = KafkaBroker(settings.kafka.bootstrap_servers)
        subscriber = broker.subscriber(
            topic,
            group_id=settings.kafka.group_id,
            auto_offset_reset="earliest",
            batch=True,
            max_records=16,
            polling_interval=WAIT_S,
        )
        poll_ready_batches(subscriber, 16, WAIT_S)

        @subscriber
        async def handle(bodies: list[bytes]) -> None:
            received.append((time.monotonic(), len(bodies)))

        producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
        async with broker:
            await broker.start()
            # the group is joined once a first record comes through
            producer.produce(topic, b"warm-up")
            producer.flush(10)
            deadline = time.monotonic() + 60
            while not received and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert received, "the subscriber never got the warm-up record"
            await asyncio.sleep(WAIT_S + 0.5)  # an idle poll in progress now

            sent = time.monotonic()
            producer.produce(topic, b"one board")
            producer.flush(10)
            while len(received) < 2 and time.monotonic() < sent + 2 * WAIT_S:
                await asyncio.sleep(0.01)
            assert len(received) == 2, "the lone record was not handed over"
            at, size = received[1]
            assert size == 1
            # consume(16, timeout) would have held it until the poll's timeout ran out
            assert at - sent < WAIT_S / 2, f"a lone record waited {at - sent:.2f}s"

            for i in range(40):  # a burst: taken in batches of at most 16, none lost
                producer.produce(topic, f"burst {i}".encode())
            producer.flush(10)
            deadline = time.monotonic() + 30
            while sum(n for _, n in received[2:]) < 40 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            burst = [n for _, n in received[2:]]
            assert sum(burst) == 40 and max(burst) <= 16

    asyncio.run(run())


def test_offsets_are_stored_by_the_polling_thread_and_committed_when_partitions_move(
    settings: Settings,
) -> None:
    """confluent-kafka serialises the calls on one consumer, so a worker's offsets are stored
    by the thread that polls (``ConsumerCalls``): queued when processed, stored before the next
    poll, and in the revoke callback (called inside the poll), which then commits them before
    the partitions move to another member of the group."""
    topic = settings.topics.flagged
    group = f"{settings.kafka.group_id}-calls"
    bootstrap = settings.kafka.bootstrap_servers
    ensure_topics(bootstrap, settings.topics, 1)
    handled: list[bytes] = []
    revokes: list[int] = []

    def committed_after_a_second_member_joins() -> int:
        other = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
        try:
            other.subscribe([topic])
            deadline = time.monotonic() + 60
            while not revokes and time.monotonic() < deadline:
                other.poll(0.2)  # joins the group: the first member's partition is revoked
            assert revokes, "the first member's partition was never revoked"
            [tp] = other.committed([TopicPartition(topic, 0)], timeout=10)
            return int(tp.offset)
        finally:
            other.close()

    async def run() -> int:
        def on_revoke(consumer: Any, partitions: list[Any]) -> None:
            calls.apply()  # on the polling thread, inside its poll: admitted at once
            commit_stored(consumer)
            revokes.append(len(partitions))

        broker = KafkaBroker(bootstrap, config=broker_config(fetch_wait_ms=25))
        subscriber = broker.subscriber(
            topic,
            group_id=group,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
            batch=True,
            max_records=16,
            on_revoke=on_revoke,
        )
        calls = poll_ready_batches(subscriber, 16, 0.1)

        @subscriber
        async def handle(bodies: list[bytes], msg: KafkaMessage) -> None:
            handled.extend(bodies)
            records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
            calls.processed(records)  # stored by the polling thread, not here

        producer = Producer({"bootstrap.servers": bootstrap})
        for i in range(5):
            producer.produce(topic, f"board {i}".encode())
        producer.flush(10)
        async with broker:
            await broker.start()
            deadline = time.monotonic() + 60
            while len(handled) < 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert len(handled) == 5
            return await asyncio.to_thread(committed_after_a_second_member_joins)

    assert asyncio.run(run()) == 5  # every processed record, committed by the revoke
