"""What a chaos run must leave behind, checked: every accepted event decided once, the audit
store agreeing with the verdict topic, every hostile message a dead letter at its stage,
and the worker group alive."""

from __future__ import annotations

import collections
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from rich.console import Console

from infra.db import verdicts
from infra.kafka_admin import read_topic
from infra.object_store import ObjectStore
from infra.settings import Settings
from linecheck.processes import Supervisor
from producers.hostile import Hostile
from schemas.events import DeadLetter, Verdict
from workers.messages import original_of


@dataclass
class ChaosReport:
    boards: int
    hostile: int
    hostile_kinds: int
    verdicts: int
    deadletters: int
    elapsed_s: float
    invariants: dict[str, bool] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(self.invariants.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check_invariants(
    live: Settings,
    engine: sa.Engine,
    supervisor: Supervisor,
    good_ids: list[str],
    sent_hostile: list[Hostile],
    kinds: int,
    console: Console,
) -> ChaosReport:
    """Wait until every published event is decided (or nothing moves for two minutes),
    then check the delivery invariants."""
    good = set(good_ids)

    def audited() -> set[str]:
        with engine.connect() as conn:
            return {
                str(e)
                for (e,) in conn.execute(
                    sa.select(verdicts.c.event_id).where(verdicts.c.event_id.in_(good_ids))
                )
            }

    def dead() -> list[DeadLetter]:
        return [
            DeadLetter.model_validate_json(v)
            for v in read_topic(live.kafka.bootstrap_servers, live.topics.deadletter, timeout=30)
        ]

    # Done when everything is decided; given up when nothing moved for two minutes (an
    # event lost for good never arrives: the invariants below then say which).
    progress, moved = (-1, -1), time.monotonic()
    with console.status("chaos: waiting for every event to be decided"):
        while True:
            try:
                rows = audited()
                letters = dead()
            except sa.exc.SQLAlchemyError:
                rows, letters = set(), []
            dead_good = {d.event_id for d in letters if d.event_id in good}
            if (rows | dead_good) >= good and len(letters) - len(dead_good) >= len(sent_hostile):
                break
            if (len(rows), len(letters)) != progress:
                progress, moved = (len(rows), len(letters)), time.monotonic()
            elif time.monotonic() - moved > 120:
                console.log(
                    "[red]chaos: events still undecided after 2 minutes without progress[/red]"
                )
                break
            time.sleep(2)
    messages = [
        Verdict.model_validate_json(v)
        for v in read_topic(live.kafka.bootstrap_servers, live.topics.verdicts, timeout=30)
    ]
    per_id: dict[str, set[tuple[str, float, str]]] = collections.defaultdict(set)
    for v in messages:
        per_id[v.event_id].add((v.verdict.value, round(v.board_score, 6), v.model_version))
    verdict_ids = set(per_id) & good
    with engine.connect() as conn:
        n_rows, n_ids = conn.execute(
            sa.select(sa.func.count(), sa.func.count(sa.distinct(verdicts.c.event_id))).where(
                verdicts.c.event_id.in_(good_ids)
            )
        ).one()
    store = ObjectStore(live.images.object_store)
    originals = [original_of(d, store) for d in letters]
    by_original = collections.Counter(originals)
    unexplained = [
        h.kind
        for h in sent_hostile
        if by_original[h.raw] == 0
        or not all(d.reason for d, o in zip(letters, originals, strict=True) if o == h.raw)
    ]
    wrong_stage = sorted(
        {
            h.kind
            for h in sent_hostile
            for d, o in zip(letters, originals, strict=True)
            if o == h.raw and d.stage != h.stage
        }
    )
    alive = [
        name
        for name, child in supervisor.children.items()
        if child.proc.poll() is None and child.ready_path.exists()
    ]
    report = ChaosReport(
        boards=len(good_ids),
        hostile=len(sent_hostile),
        hostile_kinds=kinds,
        verdicts=len(messages),
        deadletters=len(letters),
        elapsed_s=0.0,
    )
    report.invariants = {
        "verdicts_and_deadletters_cover_accepted": (verdict_ids | dead_good) == good,
        "audit_ids_equal_verdict_ids": rows == verdict_ids,
        "one_verdict_per_event": all(len(s) == 1 for s in per_id.values()),
        "no_duplicate_audit_rows": int(n_rows) == int(n_ids),
        "every_hostile_message_dead_lettered_with_reason": not unexplained,
        "hostile_messages_at_their_stage": not wrong_stage,
        "worker_group_alive": len(alive) == len(supervisor.children),
    }
    report.details = {
        "verdict_messages_per_event": round(len(messages) / max(1, len(verdict_ids)), 3),
        "good_boards_dead_lettered": sorted(dead_good)[:10],
        "hostile_not_dead_lettered": sorted(set(unexplained))[:10],
        "hostile_at_another_stage": wrong_stage[:10],
        "workers_alive": alive,
    }
    return report
