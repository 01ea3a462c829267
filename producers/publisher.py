"""Publish flagged boards to Kafka: what a line test machine calls for each board.

Idempotent producer (`enable.idempotence`, `acks=all`), keyed by line and serial so one
board's events stay ordered; images above `inline_max_bytes` go to the object store and
travel as a claim-check URI.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from schemas.events import Box, FlaggedBoard, ImageRef

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from infra.object_store import ObjectStore
    from infra.settings import Settings


class PublishError(RuntimeError):
    pass


def producer_config(bootstrap_servers: str, **extra: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        # a board waits at most 1 ms for others to share its request (librdkafka's 5 ms
        # default was 5 ms of every board's latency on a line publishing one at a time)
        "linger.ms": 1,
        "compression.type": "none",  # PNG is already compressed
        "message.max.bytes": 4 * 1024 * 1024,
        **extra,
    }


class BoardPublisher:
    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        store: ObjectStore,
        inline_max_bytes: int,
        producer: Producer | None = None,
    ) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.store = store
        self.inline_max_bytes = inline_max_bytes
        self._producer = producer or Producer(producer_config(bootstrap_servers))
        self._errors: list[str] = []

    @classmethod
    def for_settings(cls, settings: Settings, store: ObjectStore | None = None) -> BoardPublisher:
        """A publisher to the settings' boards.flagged, claim-checking into their object store
        (or ``store``) above ``images.inline_max_bytes``."""
        from infra.object_store import ObjectStore

        return cls(
            settings.kafka.bootstrap_servers,
            settings.topics.flagged,
            store or ObjectStore(settings.images.object_store),
            settings.images.inline_max_bytes,
        )

    def image_ref(
        self, data: bytes, media_type: str = "image/png", claim_check: bool = False
    ) -> ImageRef:
        """Inline when small enough (and no ``claim_check`` is asked for), else a claim-check
        URI into the object store."""
        digest = hashlib.sha256(data).hexdigest()
        if len(data) <= self.inline_max_bytes and not claim_check:
            return ImageRef(media_type=media_type, data=data, sha256=digest)  # type: ignore[arg-type]
        return ImageRef(media_type=media_type, uri=self.store.put(data, media_type), sha256=digest)  # type: ignore[arg-type]

    def publish(
        self,
        image: bytes,
        *,
        line: str,
        machine: str,
        product: str,
        board_serial: str,
        media_type: str = "image/png",
        template_id: str | None = None,
        flagged_regions: Sequence[Box] = (),
        event_id: str | None = None,
    ) -> FlaggedBoard:
        fields: dict[str, Any] = {}
        if event_id is not None:
            fields["event_id"] = event_id
        event = FlaggedBoard(
            line=line,
            machine=machine,
            product=product,
            board_serial=board_serial,
            image=self.image_ref(image, media_type),
            template_id=template_id,
            flagged_regions=list(flagged_regions),
            **fields,
        )
        self.send(event)
        return event

    def send(self, event: FlaggedBoard) -> None:
        self.send_raw(event.model_dump_json().encode(), key=event.key())

    def send_raw(self, value: bytes, key: bytes | None = None) -> None:
        """Produce bytes as they are (also used to inject malformed events in tests)."""
        while True:
            try:
                self._producer.produce(
                    self.topic, value=value, key=key, on_delivery=self._on_delivery
                )
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)
        self._producer.poll(0)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def close(self) -> None:
        """Flush, then release the producer's connections (before the broker goes away)."""
        self.flush()
        self._producer.close()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every event to be acknowledged by the broker; raise if any failed."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise PublishError(f"{remaining} event(s) not acknowledged within {timeout:.0f}s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise PublishError(f"{len(errors)} event(s) failed delivery, first: {errors[0]}")
