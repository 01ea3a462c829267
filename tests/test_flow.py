"""The whole flow through the real broker, PostgreSQL and Redis, with real worker processes."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from board_data.synthetic import BoardGenerator
from infra.db import make_engine, verdicts
from infra.images import encode_png
from infra.kafka_admin import ensure_topics, read_topic
from infra.object_store import ObjectStore
from infra.settings import Settings
from linecheck.processes import start_workers, stop_workers
from producers.publisher import BoardPublisher
from producers.simulator import publish_boards, synthetic_samples
from schemas.events import DeadLetter, Verdict
from tests.helpers import wait_until


def _audit_rows(settings: Settings, ids: list[str]) -> list[tuple[str, str]]:
    engine = make_engine(settings.postgres.url.get_secret_value())
    try:
        with engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(  # type: ignore[misc]
                    sa.select(verdicts.c.event_id, verdicts.c.verdict).where(
                        verdicts.c.event_id.in_(ids)
                    )
                )
            ]
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("workers", "processes"), [(2, 1), (1, 2)], ids=["2-workers", "1-worker-2-processes"]
)
def test_each_board_gets_one_verdict_and_one_audit_row_and_bad_input_is_dead_lettered(
    settings: Settings, workers: int, processes: int
) -> None:
    """Two workers that inspect their boards themselves, and one worker whose boards are
    inspected by two child processes (worker.processes): the same flow, the same guarantees."""
    settings.worker.processes = processes
    dup_id = f"dup-{uuid.uuid4().hex[:8]}"  # the audit store is shared by the test session
    topics = settings.topics
    ensure_topics(settings.kafka.bootstrap_servers, topics, settings.kafka.partitions)
    store = ObjectStore(settings.images.object_store)
    inline = BoardPublisher(
        settings.kafka.bootstrap_servers, topics.flagged, store, inline_max_bytes=10**7
    )
    claim_check = BoardPublisher(
        settings.kafka.bootstrap_servers, topics.flagged, store, inline_max_bytes=0
    )
    procs = start_workers(settings, workers, settings.work_dir / "logs")
    try:
        boards = publish_boards(inline, store, synthetic_samples(seed=7), 6)
        # One more board by claim check, published twice with the same event id (a retry).
        board = BoardGenerator(seed=8).board(0)
        store.put_template(board.template_id, encode_png(board.template))
        twice = dict(
            line="L2",
            machine="aoi-2",
            product=board.product,
            board_serial="DUP-1",
            template_id=board.template_id,
            event_id=dup_id,
        )
        first = claim_check.publish(encode_png(board.image), **twice)  # type: ignore[arg-type]
        claim_check.send(first)  # the line machine's retry: the same event again
        assert first.image.uri is not None and first.image.data is None
        # The same id reused for another board: a conflict, never a second verdict.
        other = BoardGenerator(seed=8).board(1)
        reused = {**twice, "board_serial": "DUP-2", "template_id": other.template_id}
        store.put_template(other.template_id, encode_png(other.template))
        inline.publish(encode_png(other.image), **reused)  # type: ignore[arg-type]
        # Bad input: not JSON at all, and a valid event whose image is not an image.
        inline.send_raw(b'{"line": "L1", "board_serial": ', key=b"L1:broken")
        inline.publish(
            b"definitely not a PNG",
            line="L1",
            machine="aoi-1",
            product="p",
            board_serial="NOT-AN-IMAGE",
            event_id="not-an-image",
        )
        inline.flush()
        claim_check.flush()

        ids = [b.event_id for b in boards] + [dup_id]
        wait_until(lambda: len(_audit_rows(settings, ids)) == len(ids), 120, "audit rows")
        dead = [
            DeadLetter.model_validate_json(v)
            for v in read_topic(
                settings.kafka.bootstrap_servers,
                topics.deadletter,
                timeout=60,
                until=lambda v: len(v) >= 3,
            )
        ]
    finally:
        stop_workers(procs)
    for w in procs:
        assert w.proc.returncode == 0, w.tail()

    rows = _audit_rows(settings, ids)
    assert sorted(r[0] for r in rows) == sorted(ids)  # one row each, the retry did not double
    assert {r[1] for r in rows} <= {"pass", "fail", "review"}

    out = [
        Verdict.model_validate_json(v)
        for v in read_topic(
            settings.kafka.bootstrap_servers,
            topics.verdicts,
            timeout=30,
            until=lambda v: len(v) >= len(ids),
        )
    ]
    assert {v.event_id for v in out} == set(ids)
    assert all(v.model_version == settings.model.version for v in out)
    assert {v.worker for v in out} <= {f"worker-{i + 1}" for i in range(workers)}
    # Failed boards carry the heatmaps of their regions, in the object store.
    from urllib.parse import urlparse

    failed = [v for v in out if v.verdict == "fail"]
    assert failed and all(v.explanation_uri for v in failed)
    assert all(Path(urlparse(v.explanation_uri or "").path).is_file() for v in failed)

    assert len(dead) == 3
    by_stage = {d.stage: d for d in dead}
    assert set(by_stage) == {"decode", "image", "conflict"}
    assert by_stage["conflict"].event_id == dup_id
    assert "already decided for another payload" in by_stage["conflict"].reason
    assert [v.board_serial for v in out if v.event_id == dup_id] == ["DUP-1"] * len(
        [v for v in out if v.event_id == dup_id]
    )
    assert "json" in by_stage["decode"].reason.lower()
    assert base64.b64decode(by_stage["decode"].original_b64).startswith(b'{"line": "L1"')
    assert "not a decodable image" in by_stage["image"].reason
    assert by_stage["image"].event_id == "not-an-image"

    # Live counters moved once per new audit row, not per delivery.
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    totals = {
        k.decode(): int(v) for k, v in client.hgetall(f"{settings.redis.key_prefix}:totals").items()
    }
    assert sum(totals.values()) == len(ids)
    dead_counts = client.hgetall(f"{settings.redis.key_prefix}:deadletters")
    assert {k.decode(): int(v) for k, v in dead_counts.items()} == {
        "decode": 1,
        "image": 1,
        "conflict": 1,
    }
