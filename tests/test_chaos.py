"""A short chaos run in the suite (`linecheck chaos --boards 2000` is the full one): its own
embedded servers, hostile messages of every kind, workers killed, PostgreSQL and Redis
restarted, a worker slower than the poll interval; every invariant must hold."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from infra.settings import load_settings
from linecheck.chaos import run_chaos


def test_a_short_chaos_run_keeps_every_invariant(model_dir: Path, tmp_path: Path) -> None:
    settings = load_settings(
        work_dir=str(tmp_path / "work"),
        images={"object_store": str(tmp_path / "objects")},
        model={"models_dir": str(model_dir.parent), "version": model_dir.name},
        kafka={"partitions": 2},
    )
    log = io.StringIO()  # the run's log, shown when an invariant fails
    report = run_chaos(
        settings,
        boards=60,
        hostile=70,
        workers=2,
        rate=2.0,
        slow_s=16.0,
        console=Console(file=log, width=160),
    )
    assert report.hostile >= 70 and report.hostile_kinds >= 30
    assert report.boards >= 60  # the probes come on top
    failed = [name for name, holds in report.invariants.items() if not holds]
    unrecovered = [f for f in report.faults if not f.get("recovered", True)]
    assert not failed, (failed, unrecovered, report.details, log.getvalue()[-4000:])
    kinds = {f["fault"] for f in report.faults}
    assert {"restart PostgreSQL", "restart and flush Redis"} <= kinds
    assert sum(report.restarts.values()) >= 3  # every SIGKILL was followed by a restart
    assert all(f["recovered"] for f in report.faults)
