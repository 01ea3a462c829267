"""What both worker apps do with a raw message: name the worker, say why a message is
not a valid event, and wrap a bad one as a :class:`DeadLetter` with its original bytes."""

from __future__ import annotations

import base64
import os
import socket

from pydantic import ValidationError

from infra.object_store import ObjectStore
from schemas.events import DeadLetter


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def validation_reason(exc: ValidationError) -> str:
    """The first five schema errors as ``field: message``, joined."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{where}: {err['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "; ".join(parts) + more


def is_json_error(exc: ValidationError) -> bool:
    """Whether the message failed before the schema: not JSON at all."""
    return any(err["type"] == "json_invalid" for err in exc.errors())


def decode_failure(exc: ValidationError) -> tuple[str, str]:
    """(stage, reason) of a message that is not a valid event: ``decode`` when it is not
    JSON, ``validate`` when it does not match the schema."""
    if is_json_error(exc):
        return "decode", f"message is not valid JSON: {validation_reason(exc)}"
    return "validate", validation_reason(exc)


def dead_letter(
    raw: bytes,
    *,
    topic: str,
    partition: int | None,
    offset: int | None,
    key: bytes | None,
    stage: str,
    reason: str,
    event_id: str | None,
    worker: str,
    store: ObjectStore | None = None,
    inline_max_bytes: int = 256 * 1024,
) -> DeadLetter:
    """The dead-letter record of ``raw``, read from ``topic`` at ``partition``/``offset``.
    An original over ``inline_max_bytes`` goes to ``store`` and travels as a claim check:
    base64 makes it a third larger, and a dead letter the broker refuses would stop the
    partition instead of moving it on."""
    claim_check = store is not None and len(raw) > inline_max_bytes
    return DeadLetter(
        source_topic=topic,
        partition=partition,
        offset=offset,
        key=key.decode("utf-8", "replace") if key is not None else None,
        stage=stage,  # type: ignore[arg-type]
        reason=reason,
        event_id=event_id,
        original_b64="" if claim_check else base64.b64encode(raw).decode("ascii"),
        original_uri=store.put(raw, "application/octet-stream") if claim_check and store else None,
        original_bytes=len(raw),
        worker=worker,
    )


def original_of(letter: DeadLetter, store: ObjectStore) -> bytes:
    """The original bytes of a dead letter, inline or from its claim check."""
    if letter.original_uri is not None:
        return store.get(letter.original_uri)
    return base64.b64decode(letter.original_b64)
