"""`linecheck demo`: the whole flow on one machine, end to end, then a summary.

Starts (or uses external) Kafka, PostgreSQL and Redis, makes sure a trained model exists,
runs a group of worker processes and the line simulator, waits until every board has its
verdict or dead-letter record, measures, and stops everything it started.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console

from infra.db import alerts, make_engine, review_outcomes, upgrade, verdicts
from infra.kafka_admin import ensure_topics, read_topic
from infra.object_store import ObjectStore
from infra.progress import progress_bar
from infra.settings import Settings
from linecheck.demo_rates import (
    board_error_rates,
    count_rows,
    rates_per_product,
    verdicts_per_model,
)
from linecheck.embedded import services
from linecheck.processes import (
    ProcessError,
    WorkerProcess,
    start_review_sink,
    start_workers,
    stop_workers,
    wait_ready,
)
from producers.publisher import BoardPublisher
from producers.review_outcomes import publish_outcomes
from producers.simulator import PublishedBoard, publish_boards, synthetic_samples
from schemas.events import DefectType, ReviewOutcome

SWAP_REFRESH_S = 1.0  # `demo --swap-at`: workers look up the model stages every second
DRIFT_DEMO_RATE = 12.0  # boards/s: the line's pace in `demo --drift` unless --rate is given


class DemoError(ProcessError):
    """The demo could not finish: a child exited, or verdicts did not arrive in time."""


@dataclass
class DemoResult:
    published: int
    verdicts: int
    verdict_messages: int
    audit_rows: int
    deadletter: int
    boards_per_s: float
    elapsed_s: float
    fnr: float | None
    fpr: float | None
    review_rate: float
    counts: dict[str, int] = field(default_factory=dict)
    model_version: str = ""
    workers: int = 0
    drift_from_board: int | None = None
    outcomes: int = 0
    alerts: int = 0
    alert_messages: int = 0
    alerts_before_drift: int = 0
    alert_metrics: list[str] = field(default_factory=list)
    first_alert_board: int | None = None
    swap_at: int | None = None
    model_versions: dict[str, int] = field(default_factory=dict)  # audit rows per model
    # --mixed: each product's mode, boards and rates (linecheck.mixed_line)
    products: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def simulated_outcomes(
    engine: sa.Engine, boards: list[PublishedBoard], line: str = "L1"
) -> list[ReviewOutcome]:
    """What the verification station would report: the simulator's ground truth, for every
    board sent to review and every board in the audit sample."""
    truth = {b.event_id: b for b in boards}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(verdicts.c.event_id).where(
                verdicts.c.event_id.in_(list(truth)),
                sa.or_(verdicts.c.verdict == "review", verdicts.c.audit_sampled),
            )
        ).all()
    out = []
    for (event_id,) in rows:
        b = truth[event_id]
        out.append(
            ReviewOutcome(
                event_id=event_id,
                line=line,
                board_serial=b.serial,
                defective=b.defective,
                defect_types=[DefectType(t) for t in b.defect_types] if b.defective else [],
                reviewer="simulator",
            )
        )
    return out


def wait_for_quality(
    live: Settings,
    engine: sa.Engine,
    outcomes: list[ReviewOutcome],
    boards: int,
    seen_before: int,
    sink: WorkerProcess,
    timeout: float,
) -> None:
    """Block until the review sink has seen every verdict and stored every outcome."""
    import redis

    client = redis.Redis.from_url(live.redis.url.get_secret_value())
    ids = [o.event_id for o in outcomes]
    deadline = time.monotonic() + timeout
    try:
        while True:
            seen = int(client.get(f"{live.redis.key_prefix}:quality:verdicts_seen") or 0)
            with engine.connect() as conn:
                stored = int(
                    conn.execute(
                        sa.select(sa.func.count())
                        .select_from(review_outcomes)
                        .where(review_outcomes.c.event_id.in_(ids))
                    ).scalar_one()
                )
            if seen - seen_before >= boards and stored >= len(ids):
                return
            if sink.proc.poll() is not None:
                raise DemoError(
                    f"review sink exited with code {sink.proc.returncode}:\n{sink.tail()}"
                )
            if time.monotonic() > deadline:
                raise DemoError(
                    f"review sink: {seen - seen_before}/{boards} verdicts and "
                    f"{stored}/{len(ids)} outcomes after {timeout:.0f}s"
                )
            time.sleep(0.3)
    finally:
        client.close()


def demo_alerts(
    engine: sa.Engine, boards: list[PublishedBoard], since: float
) -> list[tuple[str, int | None]]:
    """(metric, index of the board that triggered it) of the alerts raised during the demo."""
    index = {b.event_id: i for i, b in enumerate(boards)}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(alerts.c.metric, alerts.c.trigger_event_id)
            .where(alerts.c.raised_at >= sa.func.to_timestamp(since))
            .order_by(alerts.c.raised_at)
        ).all()
    return [(str(m), index.get(str(e)) if e else None) for m, e in rows]


def wait_for_outcomes(
    settings: Settings,
    engine: sa.Engine,
    boards: list[PublishedBoard],
    workers: list[WorkerProcess],
    console: Console,
    timeout: float,
) -> tuple[int, int]:
    """Block until every board has an audit row or a dead-letter record; return both counts."""
    ids = [b.event_id for b in boards]
    deadline = time.monotonic() + timeout
    rows = dead = 0
    with progress_bar(console, "verdicts", len(ids)) as step:
        while True:
            rows = count_rows(engine, ids)
            if rows < len(ids):
                dead = len(
                    read_topic(
                        settings.kafka.bootstrap_servers, settings.topics.deadletter, timeout=5
                    )
                )
            step(completed=rows + dead)
            if rows + dead >= len(ids):
                return rows, dead
            for w in workers:
                if w.proc.poll() is not None:
                    raise DemoError(f"{w.name} exited with code {w.proc.returncode}:\n{w.tail()}")
            if time.monotonic() > deadline:
                raise DemoError(
                    f"timed out after {timeout:.0f}s: {rows} verdicts and {dead} "
                    f"dead letters for {len(ids)} boards"
                )
            time.sleep(0.5)


def run_demo(
    settings: Settings,
    boards: int,
    *,
    workers: int = 2,
    rate: float | None = None,
    seed: int = 0,
    external: bool = False,
    drift: bool = False,
    swap_at: int | None = None,
    mixed: bool = False,
    console: Console | None = None,
) -> DemoResult:
    from inspection.products import register_products
    from linecheck.mixed_line import (
        ensure_mixed_models,
        line_modes,
        mixed_samples,
        register_mixed_line,
    )
    from training.synthetic_model import ensure_model

    console = console or Console(stderr=True)
    if boards < 1:
        raise DemoError(f"--boards must be at least 1, got {boards}")
    if swap_at is not None and not 0 < swap_at < boards:
        raise DemoError(f"--swap-at must be between 1 and boards - 1, got {swap_at}")
    if mixed and swap_at is not None:
        raise DemoError("--mixed and --swap-at do not go together (the swap is of one model)")
    model_dir = ensure_model(settings, console=console)
    mixed_models = ensure_mixed_models(settings, console) if mixed else None
    with services(settings, external, console) as live:
        if swap_at is not None:  # the rehearsal's models apart from the line's own
            from inspection.model.registry import clone_model

            model_dir = clone_model(model_dir, model_dir.name, live.work_dir / "swap-models")
            live.model.models_dir = model_dir.parent
            live.model.version = model_dir.name
            live.model.refresh_s = SWAP_REFRESH_S
        upgrade(live.postgres.url.get_secret_value())
        ensure_topics(live.kafka.bootstrap_servers, live.topics, live.kafka.partitions)
        procs = start_workers(live, workers, live.work_dir / "logs")
        sink = start_review_sink(live, live.work_dir / "logs")
        engine = make_engine(live.postgres.url.get_secret_value())
        drift_from = boards // 2 if drift else None
        if drift and rate is None:
            # A line produces boards at its pace; published all at once, boards would be
            # decided out of production order across partitions and the drift windows would
            # mix boards from before and after the change.
            rate = DRIFT_DEMO_RATE
        wall_start = time.time()
        try:
            seen_before = _verdicts_seen(live)
            # Boards are made before the clock starts: boards/s measures the pipeline.
            samples = []
            source = synthetic_samples(seed=seed, drift_from=drift_from)
            if mixed_models is not None:
                source = mixed_samples(source)
            with progress_bar(console, "generating boards", boards) as step:
                for sample in itertools.islice(source, boards):
                    samples.append(sample)
                    step()
            url = live.postgres.url.get_secret_value()
            modes = line_modes(seed) if mixed_models else {}
            if mixed_models is not None:
                register_mixed_line(url, modes, mixed_models)
            else:  # inspected against their templates (an operator's entry is left alone)
                products = sorted({s.product for s in samples})
                register_products(url, products, "reference", "demo", "linecheck demo")
            with console.status("waiting for the workers to load the model and join the group"):
                wait_ready([*procs, sink])
            store = ObjectStore(live.images.object_store)
            publisher = BoardPublisher.for_settings(live, store)
            start = time.monotonic()
            parts = [(0, swap_at), (swap_at, boards)] if swap_at else [(0, boards)]
            published: list[PublishedBoard] = []
            for lo, hi in parts:
                if lo:  # --swap-at: the first part decided, then the candidate promoted
                    wait_for_outcomes(live, engine, published, procs, console, 120 + 2.0 * lo)
                    promote_candidate(engine, model_dir, console)
                with progress_bar(console, "published", hi - lo) as step:
                    published += publish_boards(
                        publisher,
                        store,
                        iter(samples[lo:hi]),
                        hi - lo,
                        rate=rate,
                        on_published=lambda n: step(completed=n),
                    )
            publisher.close()
            rows, dead = wait_for_outcomes(
                live, engine, published, procs, console, timeout=120 + 2.0 * boards
            )
            elapsed = time.monotonic() - start
            messages = read_topic(
                live.kafka.bootstrap_servers,
                live.topics.verdicts,
                timeout=30,
                until=lambda v: len(v) >= rows,
            )
            verdict_ids = {_event_id(m) for m in messages}
            fnr, fpr, review_rate, counts = board_error_rates(engine, published)
            # Close the loop: the station reports review and audit outcomes; the review sink
            # joins them, watches drift and raises alerts.
            outcomes = simulated_outcomes(engine, published)
            publish_outcomes(live, outcomes)
            with console.status(f"review sink: {len(outcomes)} outcomes, drift windows"):
                wait_for_quality(
                    live, engine, outcomes, len(published), seen_before, sink, 60 + 0.5 * boards
                )
            raised = demo_alerts(engine, published, wall_start)
            versions = verdicts_per_model(engine, published)
            per_product = rates_per_product(engine, published, modes) if mixed_models else {}
            alert_messages = read_topic(
                live.kafka.bootstrap_servers,
                live.topics.alerts,
                timeout=10 if raised else 2,
                until=lambda v: len(v) >= len(raised),
            )
        finally:
            stop_workers([*procs, sink])
            engine.dispose()
    before = [i for _, i in raised if drift_from is None or (i is not None and i < drift_from)]
    return DemoResult(
        published=len(published),
        verdicts=len(verdict_ids & {b.event_id for b in published}),
        verdict_messages=len(messages),
        audit_rows=rows,
        deadletter=dead,
        boards_per_s=len(published) / elapsed if elapsed > 0 else 0.0,
        elapsed_s=elapsed,
        fnr=fnr,
        fpr=fpr,
        review_rate=review_rate,
        counts=counts,
        model_version=model_dir.name,
        workers=workers,
        drift_from_board=drift_from,
        outcomes=len(outcomes),
        alerts=len(raised),
        alert_messages=len(alert_messages),
        alerts_before_drift=len(before),
        alert_metrics=[m for m, _ in raised],
        first_alert_board=raised[0][1] if raised else None,
        swap_at=swap_at,
        model_versions=versions,
        products=per_product,
    )


def promote_candidate(engine: sa.Engine, active: Path, console: Console) -> str:
    """`demo --swap-at`: register the active model again as a candidate version (same
    weights, a new version name) and promote it, as a quality manager would a retrained one;
    wait until the workers have looked it up."""
    from inspection.model.registry import clone_model
    from inspection.model.stages import StageStore

    stages = StageStore(engine)
    if not stages.active():
        stages.promote(active.name, "demo", note="the model the demo started with")
    candidate = clone_model(active, f"{active.name}-candidate").name
    stages.set_stage(candidate, "candidate", "demo")
    stages.promote(candidate, "demo", note="demo --swap-at")
    console.log(f"promoted {candidate} (was {active.name}); workers switch between batches")
    time.sleep(2 * SWAP_REFRESH_S)
    return candidate


def _verdicts_seen(settings: Settings) -> int:
    import redis

    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    try:
        return int(client.get(f"{settings.redis.key_prefix}:quality:verdicts_seen") or 0)
    finally:
        client.close()


def _event_id(value: bytes) -> str:
    import json

    return str(json.loads(value)["event_id"])
