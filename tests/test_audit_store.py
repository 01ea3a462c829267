"""The audit store on the real PostgreSQL: migrations, idempotent insert, live counters on Redis."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from infra.db import current_revision, make_engine, upgrade
from infra.settings import Settings
from schemas.events import Box, DefectType, RegionVerdict, StageTimings, Verdict, VerdictLabel
from workers.audit_sink import AuditStore, LiveStats


def _verdict(label: VerdictLabel = VerdictLabel.FAIL, event_id: str | None = None) -> Verdict:
    return Verdict(
        event_id=event_id or uuid.uuid4().hex,
        line="L9",
        machine="aoi",
        product="p",
        board_serial="S",
        verdict=label,
        board_score=0.9,
        regions=[
            RegionVerdict(
                box=Box(x1=1, y1=2, x2=3, y2=4),
                defect_type=DefectType.SPUR,
                score=0.9,
                type_score=0.8,
            )
        ],
        roi_method="reference",
        model_version="m1",
        threshold_version="t1",
        pass_below=0.2,
        fail_at_or_above=0.8,
        timings=StageTimings(total_ms=5.0),
        worker="w",
        inspected_at=datetime.now(UTC),
    )


def test_migrations_are_at_head_and_rerunnable(settings: Settings) -> None:
    upgrade(
        settings.postgres.url.get_secret_value()
    )  # already applied by the session fixture: a no-op
    from alembic.script import ScriptDirectory

    from infra.db import alembic_config

    head = ScriptDirectory.from_config(
        alembic_config(settings.postgres.url.get_secret_value())
    ).get_current_head()
    assert head is not None and head >= "0001"
    assert current_revision(settings.postgres.url.get_secret_value()) == head
    engine = make_engine(settings.postgres.url.get_secret_value())
    try:
        columns = {c["name"] for c in sa.inspect(engine).get_columns("verdicts")}
    finally:
        engine.dispose()
    assert {
        "event_id",
        "verdict",
        "board_score",
        "regions",
        "model_version",
        "decided_at",
    } <= columns


def test_the_same_event_recorded_twice_is_one_row(settings: Settings) -> None:
    store = AuditStore(settings.postgres.url.get_secret_value())
    try:
        v = _verdict()
        before = store.count()
        assert store.record(v, partition=0, offset=7) is True
        assert store.record(v, partition=1, offset=8) is False  # redelivery
        assert store.count() == before + 1
        with store.engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT verdict, source_offset, regions->0->>'defect_type', decided_at "
                    "FROM verdicts WHERE event_id = :id"
                ),
                {"id": v.event_id},
            ).one()
        assert row[0] == "fail" and row[1] == 7 and row[2] == "spur"
        assert row[3].tzinfo is not None
    finally:
        store.close()


def test_live_counters_roll_per_line(settings: Settings) -> None:
    stats = LiveStats(
        settings.redis.url.get_secret_value(), settings.redis.key_prefix, window_s=600
    )
    try:
        for label in (VerdictLabel.PASS, VerdictLabel.PASS, VerdictLabel.REVIEW):
            stats.record(_verdict(label))
        window = stats.window("L9")
        assert window == {"pass": 2, "review": 1, "boards": 3}
        assert stats.window("other-line") == {}
        assert stats.totals() == {"pass": 2, "review": 1}
    finally:
        stats.close()


def test_a_row_the_database_refuses_is_isolated_not_retried_with_its_batch(
    settings: Settings,
) -> None:
    """PostgreSQL text cannot hold NUL: the batch's other rows land, the bad one is named."""
    store = AuditStore(settings.postgres.url.get_secret_value())
    good, also_good = _verdict(), _verdict()
    bad = _verdict().model_copy(update={"worker": "w\x00rker"})
    batch = store.record_batch([(good, 0, 1), (bad, 0, 2), (also_good, 0, 3)])
    store.close()
    assert batch.new == {good.event_id, also_good.event_id}
    assert set(batch.rejected) == {bad.event_id}
    assert "refused" in batch.rejected[bad.event_id]
    assert batch.resolve(bad) is None and batch.resolve(good) == good


def test_same_id_same_payload_is_the_stored_verdict_another_payload_is_a_conflict(
    settings: Settings,
) -> None:
    store = AuditStore(settings.postgres.url.get_secret_value())
    first = _verdict().model_copy(update={"event_sha256": "a" * 64})
    store.record_batch([(first, 0, 1)])
    # redelivered and decided again (another worker, another score): the audited one wins
    again = first.model_copy(update={"board_score": 0.1, "worker": "w2"})
    batch = store.record_batch([(again, 0, 1)])
    assert batch.new == set()
    resolved = batch.resolve(again)
    assert resolved is not None and resolved.board_score == 0.9 and resolved.worker == "w"
    other = first.model_copy(update={"event_sha256": "b" * 64, "line": "L2"})
    assert store.record_batch([(other, 0, 2)]).resolve(other) is None
    store.close()
