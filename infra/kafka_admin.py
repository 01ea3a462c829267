"""Topic creation and read-back helpers (confluent-kafka admin and plain consumers)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.topics import Topics


def ensure_topics(bootstrap: str, topics: Topics, partitions: int, timeout: float = 30.0) -> None:
    """Create the flow's topics if missing (idempotent)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(
            name,
            num_partitions=partitions if name == topics.flagged else max(1, partitions),
            replication_factor=1,
        )
        for name in topics.all()
        if name not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"could not create topic {name!r}: {exc}") from exc


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[bytes]], bool] | None = None,
    timeout: float = 10.0,
) -> list[bytes]:
    """Every message value in `topic` from the beginning (all partitions), by direct assignment.

    Stops when the end of every partition is reached and `until` (if given) holds, or at timeout.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"linecheck-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            raise RuntimeError(f"topic {topic!r} not found on {bootstrap}")
        parts = [TopicPartition(topic, p, 0) for p in meta.partitions]
        consumer.assign(parts)
        values: list[bytes] = []
        at_eof: set[int] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                if len(at_eof) == len(parts) and (until is None or until(values)):
                    break
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_eof.add(msg.partition() or 0)
                    if len(at_eof) == len(parts) and (until is None or until(values)):
                        break
                    continue
                raise RuntimeError(f"reading {topic!r}: {error}")
            at_eof.discard(msg.partition() or 0)
            values.append(msg.value() or b"")
        return values
    finally:
        consumer.close()
