"""Review outcomes published to boards.reviews, as an operator station or the MES sends
them (keyed by line and board serial, like the board's own events)."""

from __future__ import annotations

from collections.abc import Iterable

from infra.settings import Settings
from producers.publisher import PublishError, producer_config
from schemas.events import ReviewOutcome


def publish_outcomes(settings: Settings, outcomes: Iterable[ReviewOutcome]) -> int:
    """Publish outcomes to boards.reviews (idempotent producer, keyed by line:serial)."""
    from confluent_kafka import Producer

    producer = Producer(producer_config(settings.kafka.bootstrap_servers))
    errors: list[str] = []

    def on_delivery(error: object, _msg: object) -> None:
        if error is not None:
            errors.append(str(error))

    n = 0
    for outcome in outcomes:
        producer.produce(
            settings.topics.reviews,
            value=outcome.model_dump_json().encode(),
            key=f"{outcome.line}:{outcome.board_serial}".encode(),
            on_delivery=on_delivery,
        )
        producer.poll(0)
        n += 1
    remaining = producer.flush(30)
    if remaining or errors:
        raise PublishError(f"{remaining} outcome(s) unacknowledged; errors: {errors[:3]}")
    return n
