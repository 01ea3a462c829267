"""Readiness of the running system (GET /readyz): the broker answers, the audit store is
at the schema's head, and — when the web server runs under `linecheck up` — the workers
have loaded their model and hold the partitions of boards.flagged."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from infra.settings import Settings


@dataclass
class Check:
    ok: bool
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, **self.extra}


def check_broker(settings: Settings, timeout: float = 2.0) -> Check:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "socket.timeout.ms": 2000}
    )
    try:
        topics = admin.list_topics(timeout=timeout).topics
    except Exception as exc:  # KafkaException: unreachable, timed out
        return Check(False, f"{settings.kafka.bootstrap_servers}: {exc}")
    flagged = settings.topics.flagged
    if flagged not in topics:
        return Check(False, f"topic {flagged} does not exist yet")
    partitions = len(topics[flagged].partitions)
    return Check(True, settings.kafka.bootstrap_servers, {"partitions": partitions})


def check_database(engine: sa.Engine) -> Check:
    from infra.db import head_revision

    try:
        with engine.connect() as conn:
            revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    except Exception as exc:  # OperationalError (down, timed out), ProgrammingError (no schema)
        return Check(False, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    head = head_revision()
    if revision != head:
        return Check(
            False, f"schema at {revision}, code expects {head}: run `linecheck db upgrade`"
        )
    return Check(True, f"schema at {revision}")


def group_gauges() -> dict[str, float] | None:
    """Sum over live processes of the workers' livesum gauges, from the multiprocess
    metrics folder; None when this process is not part of a supervised group."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    out: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def check_workers(expected_partitions: int | None) -> Check:
    gauges = group_gauges()
    if gauges is None:
        return Check(True, "not supervised by this process (compose: see the workers' /metrics)")
    loaded = int(gauges.get("linecheck_model_loaded", 0))
    held = int(gauges.get("linecheck_assigned_partitions", 0))
    extra = {"models_loaded": loaded, "partitions_held": held}
    if loaded == 0:
        return Check(False, "no worker has loaded its model yet", extra)
    if held == 0 or (expected_partitions is not None and held < expected_partitions):
        want = expected_partitions if expected_partitions is not None else "all"
        return Check(False, f"workers hold {held} of {want} partitions", extra)
    return Check(True, f"{loaded} worker(s) with the model, {held} partitions held", extra)


def readiness(settings: Settings, engine: sa.Engine) -> tuple[bool, dict[str, Any]]:
    broker = check_broker(settings)
    checks = {
        "broker": broker,
        "database": check_database(engine),
        "workers": check_workers(broker.extra.get("partitions")),
    }
    ok = all(c.ok for c in checks.values())
    return ok, {"ready": ok, **{name: c.as_dict() for name, c in checks.items()}}
