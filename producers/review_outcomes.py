"""Review outcomes published to boards.reviews, as an operator station or the MES sends
them (keyed by line and board serial, like the board's own events)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from infra.settings import Settings
from producers.publisher import PublishError, producer_config
from schemas.events import ReviewOutcome


class OutcomePublisher:
    """One idempotent producer for boards.reviews; `publish` returns once the broker has
    acknowledged every outcome given (the review station calls it per decision)."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self.topic = settings.topics.reviews
        self._producer = Producer(producer_config(settings.kafka.bootstrap_servers))

    def publish(self, outcomes: Iterable[ReviewOutcome], timeout: float = 30.0) -> int:
        errors: list[str] = []

        def on_delivery(error: Any, _msg: Any) -> None:
            if error is not None:
                errors.append(str(error))

        n = 0
        for outcome in outcomes:
            self._producer.produce(
                self.topic,
                value=outcome.model_dump_json().encode(),
                key=f"{outcome.line}:{outcome.board_serial}".encode(),
                on_delivery=on_delivery,
            )
            self._producer.poll(0)
            n += 1
        remaining = self._producer.flush(timeout)
        if remaining or errors:
            raise PublishError(f"{remaining} outcome(s) unacknowledged; errors: {errors[:3]}")
        return n


def publish_outcomes(settings: Settings, outcomes: Iterable[ReviewOutcome]) -> int:
    """Publish outcomes to boards.reviews (idempotent producer, keyed by line:serial)."""
    return OutcomePublisher(settings).publish(outcomes)
