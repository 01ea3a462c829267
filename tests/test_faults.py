"""Faults through the real servers: an audit-store outage stops the commit, not the data."""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from infra.db import make_engine, upgrade
from infra.kafka_admin import ensure_topics, read_topic
from infra.object_store import ObjectStore
from infra.settings import Settings
from linecheck.processes import start_workers, stop_workers, wait_ready
from producers.publisher import BoardPublisher
from producers.simulator import publish_boards, synthetic_samples
from schemas.events import Verdict
from tests.conftest import register_every_product
from tests.helpers import wait_until


def _own_database(settings: Settings, revision: str = "head") -> str:
    """A fresh database on the session's server at ``revision``, so this test can break it
    alone."""
    name = f"fault_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(settings.postgres.url.get_secret_value(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(settings.postgres.url.get_secret_value()).set(database=name)
    rendered = url.render_as_string(hide_password=False)
    upgrade(rendered, revision)
    if revision == "head":  # its boards are of many products, inspected on templates
        register_every_product(rendered)
    return rendered


def test_audit_store_outage_holds_the_events_and_loses_none(settings: Settings) -> None:
    url = _own_database(settings)
    settings = settings.model_copy(
        update={"postgres": settings.postgres.model_copy(update={"url": SecretStr(url)})}
    )
    topics = settings.topics
    ensure_topics(settings.kafka.bootstrap_servers, topics, settings.kafka.partitions)
    engine = make_engine(url)

    def rows() -> int:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if "verdicts" not in tables:
                return -1
            return int(conn.execute(sa.text("SELECT count(*) FROM verdicts")).scalar_one())

    def execute(sql: str) -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(sql))

    store = ObjectStore(settings.images.object_store)
    publisher = BoardPublisher(settings.kafka.bootstrap_servers, topics.flagged, store, 10**7)
    samples = synthetic_samples(seed=21)
    workers = start_workers(settings, 1, settings.work_dir / "logs")
    try:
        wait_ready(workers)
        first = publish_boards(publisher, store, samples, 3)
        wait_until(lambda: rows() == 3, 60, "3 audit rows")
        execute("ALTER TABLE verdicts RENAME TO verdicts_offline")  # the audit store "fails"
        second = publish_boards(publisher, store, samples, 3)
        time.sleep(4)  # the worker retries with back-off meanwhile
        assert workers[0].proc.poll() is None, workers[0].tail()
        held = read_topic(settings.kafka.bootstrap_servers, topics.verdicts, timeout=5)
        assert len(held) == 3  # nothing published for events whose audit row is not written
        execute("ALTER TABLE verdicts_offline RENAME TO verdicts")
        wait_until(lambda: rows() == 6, 60, "6 audit rows after the store came back")
        out = read_topic(
            settings.kafka.bootstrap_servers,
            topics.verdicts,
            timeout=30,
            until=lambda v: len(v) >= 6,
        )
    finally:
        stop_workers(workers)
        engine.dispose()
    ids = {b.event_id for b in first + second}
    assert {Verdict.model_validate_json(v).event_id for v in out} == ids
    assert "sinks failed" in workers[0].tail(200)


def test_a_worker_killed_mid_stream_loses_nothing_and_doubles_nothing(settings: Settings) -> None:
    import signal

    topics = settings.topics
    ensure_topics(settings.kafka.bootstrap_servers, topics, settings.kafka.partitions)
    fast_failover = settings.kafka.model_copy(update={"session_timeout_ms": 6000})
    settings = settings.model_copy(update={"kafka": fast_failover})
    store = ObjectStore(settings.images.object_store)
    publisher = BoardPublisher(settings.kafka.bootstrap_servers, topics.flagged, store, 10**7)
    workers = start_workers(settings, 2, settings.work_dir / "logs")
    engine = make_engine(settings.postgres.url.get_secret_value())

    def audited(ids: list[str]) -> list[str]:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.text("SELECT event_id FROM verdicts WHERE event_id = ANY(:ids)"),
                    {"ids": ids},
                ).scalars()
            )

    try:
        wait_ready(workers)
        boards = publish_boards(publisher, store, synthetic_samples(seed=33), 40, rate=20)
        ids = [b.event_id for b in boards]
        wait_until(lambda: len(audited(ids)) >= 5, 60, "the first audit rows")
        workers[0].proc.send_signal(signal.SIGKILL)  # mid-stream, no goodbye to the group
        wait_until(lambda: len(audited(ids)) == len(ids), 120, "every board audited")
        out = read_topic(
            settings.kafka.bootstrap_servers,
            topics.verdicts,
            timeout=30,
            until=lambda v: len(v) >= len(ids),
        )
    finally:
        stop_workers(workers)
        engine.dispose()
    rows = audited(ids)
    assert sorted(rows) == sorted(ids)  # exactly one row per event, none lost
    assert {Verdict.model_validate_json(v).event_id for v in out} == set(ids)


def test_workers_do_not_migrate_they_say_how(settings: Settings) -> None:
    """A worker has no owner rights: on a database behind this code's migrations it refuses
    to start and names the command that fixes it."""
    import pytest

    from infra.db import head_revision, prepare

    rendered = _own_database(settings, "0003")
    with pytest.raises(
        RuntimeError, match=r"at migration 0003, this code needs .*linecheck db upgrade"
    ):
        prepare(rendered, migrate=False)
    prepare(rendered, migrate=True)  # the opt-in
    prepare(rendered, migrate=False)  # now at head: passes
    assert head_revision() >= "0004"


def test_a_hung_audit_store_times_out_instead_of_holding_the_worker(settings: Settings) -> None:
    """A lock held on the audit table makes every insert wait: the statement timeout cancels
    it, the worker backs off and retries, and the events land once the lock is gone."""
    url = _own_database(settings)
    pg = settings.postgres.model_copy(update={"url": SecretStr(url), "statement_timeout_ms": 1000})
    settings = settings.model_copy(update={"postgres": pg})
    topics = settings.topics
    ensure_topics(settings.kafka.bootstrap_servers, topics, settings.kafka.partitions)
    store = ObjectStore(settings.images.object_store)
    publisher = BoardPublisher(settings.kafka.bootstrap_servers, topics.flagged, store, 10**7)
    samples = synthetic_samples(seed=31)
    engine = make_engine(url)
    workers = start_workers(settings, 1, settings.work_dir / "logs")
    try:
        wait_ready(workers)
        with engine.connect() as locker:
            tx = locker.begin()
            locker.execute(sa.text("LOCK TABLE verdicts IN ACCESS EXCLUSIVE MODE"))
            boards = publish_boards(publisher, store, samples, 3)
            wait_until(
                lambda: "canceling statement due to statement timeout" in workers[0].tail(400),
                60,
                "a statement cancelled by the timeout",
            )
            assert workers[0].proc.poll() is None
            tx.rollback()
        ids = [b.event_id for b in boards]

        def landed() -> int:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        sa.text("SELECT count(*) FROM verdicts WHERE event_id = ANY(:ids)"),
                        {"ids": ids},
                    ).scalar_one()
                )

        wait_until(lambda: landed() == 3, 60, "3 audit rows after the lock")
    finally:
        stop_workers(workers)
        engine.dispose()
    assert workers[0].proc.returncode == 0, workers[0].tail()


def test_the_review_sink_backs_off_through_an_outage_and_loses_no_outcome(
    settings: Settings,
) -> None:
    import re

    from linecheck.processes import start_review_sink
    from producers.review_outcomes import publish_outcomes
    from schemas.events import ReviewOutcome

    url = _own_database(settings)
    settings = settings.model_copy(
        update={"postgres": settings.postgres.model_copy(update={"url": SecretStr(url)})}
    )
    ensure_topics(settings.kafka.bootstrap_servers, settings.topics, settings.kafka.partitions)
    engine = make_engine(url)

    def execute(sql: str) -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(sql))

    outcome = ReviewOutcome(
        event_id=f"e-{uuid.uuid4().hex}", line="L1", board_serial="S1", defective=True,
        reviewer="op",
    )  # fmt: skip
    sink = start_review_sink(settings, settings.work_dir / "logs")
    try:
        wait_ready([sink], timeout=120)
        execute("ALTER TABLE review_outcome_history RENAME TO history_offline")
        publish_outcomes(settings, [outcome])
        wait_until(lambda: sink.tail(400).count("retrying in") >= 3, 60, "three retries")
        assert sink.proc.poll() is None
        execute("ALTER TABLE history_offline RENAME TO review_outcome_history")

        def stored() -> int:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        sa.text("SELECT count(*) FROM review_outcome_history WHERE event_id = :e"),
                        {"e": outcome.event_id},
                    ).scalar_one()
                )

        wait_until(lambda: stored() == 1, 60, "the outcome after the outage")
    finally:
        stop_workers([sink])
        engine.dispose()
    delays = [float(d) for d in re.findall(r"retrying in ([0-9.]+)s", sink.tail(400))]
    assert delays[:3] == sorted(delays[:3]) and delays[2] > delays[0]  # backing off, not spinning
