"""Review outcomes through the real broker into PostgreSQL: once each, duplicates ignored,
contradicting and late outcomes resolved by reviewed_at with the history kept, bad ones
dead-lettered; plus the audit-sample flag set by the audit sink."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from infra.db import make_engine, review_outcome_history, verdicts
from infra.kafka_admin import ensure_topics, read_topic
from infra.settings import Settings
from infra.stats import audit_sampled
from linecheck.processes import start_review_sink, stop_workers, wait_ready
from producers.review_outcomes import publish_outcomes
from schemas.events import DeadLetter, DefectType, ReviewOutcome
from tests.helpers import make_verdict, wait_until
from workers.audit_sink import AuditStore
from workers.review_store import ReviewStore


def test_audit_sink_marks_the_audit_sample_deterministically(settings: Settings) -> None:
    store = AuditStore(settings.postgres.url.get_secret_value(), audit_rate=0.5)
    ids = [f"aud-{uuid.uuid4().hex}" for _ in range(40)]
    try:
        for i, event_id in enumerate(ids):
            store.record(make_verdict(event_id, "review" if i % 4 == 0 else "pass"))
        with store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(verdicts.c.event_id, verdicts.c.verdict, verdicts.c.audit_sampled,
                          verdicts.c.audit_rate).where(verdicts.c.event_id.in_(ids))
            ).all()  # fmt: skip
    finally:
        store.close()
    assert len(rows) == 40
    for event_id, verdict, sampled, rate in rows:
        assert rate == 0.5
        # boards sent to review are reviewed anyway: the audit sample is of automatic ones
        assert sampled == (verdict != "review" and audit_sampled(event_id, 0.5))
    assert 0 < sum(r[2] for r in rows) < 30


def test_review_outcomes_through_the_broker_land_once_latest_wins_bad_ones_dead_lettered(
    settings: Settings,
) -> None:
    ensure_topics(settings.kafka.bootstrap_servers, settings.topics, 1)
    event_id = f"rev-{uuid.uuid4().hex}"
    audit = AuditStore(settings.postgres.url.get_secret_value(), audit_rate=0.0)
    audit.record(make_verdict(event_id, "review"))
    audit.close()
    serial = f"S-{event_id}"
    t0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    first = ReviewOutcome(
        event_id=event_id, line="L1", board_serial=serial, defective=True,
        defect_types=[DefectType.OPEN], reviewer="op-1", reviewed_at=t0,
    )  # fmt: skip
    contradicting = ReviewOutcome(
        event_id=event_id, line="L1", board_serial=serial, defective=False,
        reviewer="mes", reviewed_at=t0 + timedelta(hours=2),
    )  # fmt: skip
    late = ReviewOutcome(
        event_id=event_id, line="L1", board_serial=serial, defective=True,
        defect_types=[DefectType.SHORT], reviewer="op-2", reviewed_at=t0 + timedelta(hours=1),
    )  # fmt: skip
    wrong_board = ReviewOutcome(
        event_id=event_id, line="L9", board_serial="OTHER", defective=True, reviewer="op-3"
    )
    reused_id = first.model_copy(update={"defective": False, "defect_types": []})

    sink = start_review_sink(settings, settings.work_dir / "logs")
    try:
        wait_ready([sink], timeout=120)
        publish_outcomes(settings, [first, first, contradicting, late, wrong_board, reused_id])
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
        producer.produce(settings.topics.reviews, value=b'{"event_id": ', key=b"L1:x")
        producer.produce(settings.topics.reviews, value=b'{"event_id": "x"}', key=b"L1:x")
        # anyone can write to boards.verdicts: foreign bytes must not stop the sink
        producer.produce(settings.topics.verdicts, value=b"\x00garbage", key=b"L1:y")
        producer.produce(settings.topics.verdicts, value=b'{"verdict": "pass"}', key=b"L1:y")
        producer.flush(10)

        store = ReviewStore(settings.postgres.url.get_secret_value())
        wait_until(lambda: len(store.history(event_id)) == 3, 60, "three outcomes in the history")
        dead = [
            DeadLetter.model_validate_json(v)
            for v in read_topic(
                settings.kafka.bootstrap_servers,
                settings.topics.deadletter,
                timeout=60,
                until=lambda v: len(v) >= 6,
            )
        ]
        current = store.current(event_id)
        history = store.history(event_id)
        store.close()
    finally:
        stop_workers([sink])
    assert sink.proc.returncode == 0, sink.tail()

    # once each: the duplicate delivery of `first` did not add a row
    assert [h["outcome_id"] for h in history] == [
        first.outcome_id, late.outcome_id, contradicting.outcome_id
    ]  # fmt: skip
    assert current is not None
    assert current["outcome_id"] == contradicting.outcome_id  # latest reviewed_at wins
    assert current["defective"] is False and current["reviewer"] == "mes"
    assert current["n_outcomes"] == 3 and current["contradicted"] is True

    foreign = sorted(
        (d.stage, d.reason) for d in dead if d.source_topic == settings.topics.verdicts
    )
    assert [s for s, _ in foreign] == ["decode", "validate"]
    assert "not a Verdict" in foreign[1][1]
    dead = [d for d in dead if d.source_topic != settings.topics.verdicts]
    assert len(dead) == 4
    assert {d.source_topic for d in dead} == {settings.topics.reviews}
    reasons = sorted((d.stage, d.reason) for d in dead)
    assert [s for s, _ in reasons] == ["decode", "validate", "validate", "validate"]
    text = " | ".join(r for _, r in reasons)
    assert "not valid JSON" in text
    assert "not a ReviewOutcome" in text
    assert "already used for a different outcome" in text
    assert "names 'OTHER' on 'L9'" in text

    # the sink also keeps the dead letters it sees for the operations dashboard
    engine = make_engine(settings.postgres.url.get_secret_value())
    try:
        wait_until(
            lambda: _count_deadletters(engine, settings.topics.reviews) == 4, 30, "dead-letter rows"
        )
        with engine.connect() as conn:
            n_hist = conn.execute(
                sa.select(sa.func.count())
                .select_from(review_outcome_history)
                .where(review_outcome_history.c.event_id == event_id)
            ).scalar_one()
        assert n_hist == 3
    finally:
        engine.dispose()


def _count_deadletters(engine: sa.Engine, topic: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM deadletters WHERE source_topic = :t"), {"t": topic}
            ).scalar_one()
        )


def test_review_command_publishes_an_outcome_looked_up_from_the_audit_store(
    settings: Settings,
) -> None:
    from typer.testing import CliRunner

    from infra.settings import settings_env
    from linecheck.cli import app

    ensure_topics(settings.kafka.bootstrap_servers, settings.topics, 1)
    event_id = f"cli-{uuid.uuid4().hex}"
    audit = AuditStore(settings.postgres.url.get_secret_value())
    line = f"L7-{event_id[-8:]}"  # a line of its own: other tests share the audit store
    audit.record(make_verdict(event_id, "review", line=line))
    audit.close()
    env = settings_env(settings)
    args = ["review", "--event-id", event_id, "--defective", "--types", "open,short"]
    result = CliRunner().invoke(app, [*args, "--reviewer", "anna"], env=env)
    assert result.exit_code == 0, result.output
    outcome_id = result.stdout.strip().splitlines()[-1]
    (raw,) = read_topic(settings.kafka.bootstrap_servers, settings.topics.reviews, timeout=30,
                        until=lambda v: len(v) >= 1)  # fmt: skip
    outcome = ReviewOutcome.model_validate_json(raw)
    assert (outcome.outcome_id, outcome.line, outcome.board_serial) == (
        outcome_id, line, f"S-{event_id}"
    )  # fmt: skip
    assert outcome.defective and outcome.defect_types == [DefectType.OPEN, DefectType.SHORT]
    queue = CliRunner().invoke(app, ["review-queue", "--line", line, "--json"], env=env)
    assert queue.exit_code == 0, queue.output
    waiting = [json.loads(x) for x in queue.stdout.splitlines()]
    assert [(w["event_id"], w["why"]) for w in waiting] == [(event_id, "review")]
    bad = CliRunner().invoke(
        app, ["review", "--event-id", "nope", "--good", "--reviewer", "x"], env=env
    )
    assert bad.exit_code == 2 and "no audit row" in bad.output
    bad = CliRunner().invoke(app, [*args[:3], "--good", "--types", "warp", "--reviewer", "x"],
                             env=env)  # fmt: skip
    assert bad.exit_code == 2 and "invalid review outcome" in bad.output
