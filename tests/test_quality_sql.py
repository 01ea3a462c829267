"""Every dashboard panel's SQL against the real PostgreSQL with seeded verdicts, outcomes,
dead letters and alerts; each number equals one computed independently here in Python."""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from dashboards.panels import (
    OPERATIONS_PANELS,
    QUALITY_PANELS,
    expand,
)
from infra.db import (
    alerts,
    deadletters,
    make_engine,
    review_outcomes,
    upgrade,
    verdicts,
)
from infra.stats import (
    CANDIDATE_EDGES,
    audit_sampled,
    histogram,
    psi,
    weighted_rate,
    wilson_interval,
)

T0 = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
HOUR = 3600.0
RATE = 0.25
TYPES = ["open", "short", "mousebite", "spur", "copper", "pin-hole"]


@pytest.fixture(scope="module")
def seeded(stack: Any) -> Iterator[tuple[sa.Engine, list[dict[str, Any]], dict[str, Any]]]:
    """A database of its own (same server), migrated, with 600 boards over 6 hours."""
    name = f"q{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(stack.postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.make_url(stack.postgres_url).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    engine = make_engine(url)
    rng = random.Random(4)
    boards: list[dict[str, Any]] = []
    outcomes: dict[str, Any] = {}
    for i in range(600):
        event_id = f"ev{i:04d}"
        drifted = i >= 300
        defective = rng.random() < 0.4
        score = rng.uniform(0.55, 1.0) if defective else rng.uniform(0.0, 0.8 if drifted else 0.5)
        if defective and rng.random() < 0.1:
            score = rng.uniform(0.0, 0.3)  # an escape
        verdict = "pass" if score < 0.3 else "fail" if score >= 0.7 else "review"
        total = rng.uniform(5, 50)
        board = dict(
            event_id=event_id, line=rng.choice(["L1", "L2"]), machine="aoi",
            product=rng.choice(["P1", "P2"]), board_serial=f"S{i}", verdict=verdict,
            board_score=score, n_regions=rng.randint(0, 30 if drifted else 8), regions=[],
            roi_method="reference", model_version="m1" if i < 400 else "m2",
            threshold_version="t", decode_ms=total * 0.1, roi_ms=total * 0.3,
            classify_ms=total * 0.6, total_ms=total, worker="w",
            inspected_at=T0 + timedelta(seconds=i * 36 - rng.uniform(0.1, 5)),
            decided_at=T0 + timedelta(seconds=i * 36),
            recorded_at=T0 + timedelta(seconds=i * 36 + rng.uniform(0, 1)),
            audit_sampled=verdict != "review" and audit_sampled(event_id, RATE),
            audit_rate=RATE,
        )  # fmt: skip
        boards.append(board)
        labelled = verdict == "review" or board["audit_sampled"] or rng.random() < 0.05
        if labelled:
            kinds = sorted(rng.sample(TYPES, rng.randint(1, 3))) if defective else []
            outcomes[event_id] = dict(
                event_id=event_id, outcome_id=f"o{i}", line=board["line"],
                board_serial=board["board_serial"], defective=defective, defect_types=kinds,
                regions=[], reviewer="op", reviewed_at=board["decided_at"],
            )  # fmt: skip
    dead = [
        dict(source_topic="boards.flagged", dl_partition=0, dl_offset=k, stage="decode",
             reason=f"bad {k}", event_id=None, worker="w",
             failed_at=T0 + timedelta(minutes=7 * k))
        for k in range(30)
    ]  # fmt: skip
    alert = dict(
        alert_id="a1", metric="candidates_psi", line="L1", model_version="m2", value=1.5,
        baseline=0.0, limit_value=0.6, lower=None, upper=None, window_boards=100,
        since=T0 + timedelta(hours=3), trigger_event_id="ev0350", message="shifted",
        raised_at=T0 + timedelta(hours=4),
    )  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(verdicts), boards)
        conn.execute(sa.insert(review_outcomes), list(outcomes.values()))
        conn.execute(sa.insert(deadletters), dead)
        conn.execute(sa.insert(alerts), [alert])
    yield engine, boards, {"outcomes": outcomes, "dead": dead}
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


def _run(engine: sa.Engine, key: str, **variables: list[str]) -> list[dict[str, Any]]:
    panel = {p.key: p for p in (*QUALITY_PANELS, *OPERATIONS_PANELS)}[key]
    sql = expand(
        panel.sql, T0 - timedelta(hours=1), T0 + timedelta(hours=8), HOUR, variables,
        reference_boards=100,
    )  # fmt: skip
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(sql)).mappings()]


def _bucket(t: datetime) -> float:
    return math.floor(t.timestamp() / HOUR) * HOUR


def _by_bucket(boards: list[dict[str, Any]]) -> dict[float, list[dict[str, Any]]]:
    out: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for b in boards:
        out[_bucket(b["decided_at"])].append(b)
    return dict(sorted(out.items()))


def _expected_rate(
    boards: list[dict[str, Any]], outcomes: dict[str, Any], defective: bool, miss: str
) -> tuple[float | None, float | None, float | None, int]:
    items = []
    for b in boards:
        o = outcomes.get(b["event_id"])
        in_sample = o is not None and (b["verdict"] == "review" or b["audit_sampled"])
        if in_sample and o["defective"] is defective:
            w = 1.0 if b["verdict"] == "review" else 1.0 / b["audit_rate"]
            items.append((b["verdict"] == miss, w))
    if not items:
        return None, None, None, 0
    rate, n_eff, k_eff = weighted_rate(items)
    lo, hi = wilson_interval(k_eff, n_eff)
    return rate, lo, hi, len(items)


def _approx(value: Any) -> Any:
    return None if value is None else pytest.approx(value, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    ("key", "defective", "miss"), [("fnr", True, "pass"), ("fpr", False, "fail")]
)
def test_error_rates_over_time_with_wilson_intervals(
    seeded: Any, key: str, defective: bool, miss: str
) -> None:
    engine, boards, extra = seeded
    rows = _run(engine, key)
    expected = _by_bucket(boards)
    assert [float(r["time"]) for r in rows] == list(expected)
    for row, group in zip(rows, expected.values(), strict=True):
        rate, lo, hi, n = _expected_rate(group, extra["outcomes"], defective, miss)
        assert row[key] == _approx(rate)
        assert row[f"{key}_lower"] == _approx(lo)
        assert row[f"{key}_upper"] == _approx(hi)
        assert row[f"{key}_labelled"] == n
    assert any(r[key] for r in rows)  # the seeded data has escapes and false calls


def test_review_rate_over_time_and_by_group_with_filters(seeded: Any) -> None:
    engine, boards, extra = seeded
    rows = _run(engine, "review")
    for row, group in zip(rows, _by_bucket(boards).values(), strict=True):
        k = sum(b["verdict"] == "review" for b in group)
        assert row["boards"] == len(group)
        assert float(row["review_rate"]) == pytest.approx(k / len(group))
        assert float(row["automatic_rate"]) == pytest.approx(1 - k / len(group))
        assert (row["review_lower"], row["review_upper"]) == pytest.approx(
            wilson_interval(k, len(group))
        )
    (overall,) = _run(engine, "overall", product=["P2"])
    group = [b for b in boards if b["product"] == "P2"]
    assert overall["boards"] == len(group)
    rate, lo, hi, n = _expected_rate(group, extra["outcomes"], True, "pass")
    assert (overall["fnr"], overall["fnr_lower"], overall["fnr_upper"]) == (
        _approx(rate), _approx(lo), _approx(hi)
    )  # fmt: skip
    rate, lo, hi, n = _expected_rate(group, extra["outcomes"], False, "fail")
    assert (overall["fpr"], overall["fpr_labelled"]) == (_approx(rate), n)
    table = _run(engine, "by_group", line=["L1"], model_version=["m2"])
    assert {(r["line"], r["model_version"]) for r in table} == {("L1", "m2")}
    for row in table:
        group = [
            b for b in boards
            if (b["line"], b["product"], b["model_version"]) == ("L1", row["product"], "m2")
        ]  # fmt: skip
        assert row["boards"] == len(group)
        rate, lo, hi, n = _expected_rate(group, extra["outcomes"], True, "pass")
        assert (row["fnr"], row["fnr_lower"], row["fnr_upper"], row["fnr_labelled"]) == (
            _approx(rate), _approx(lo), _approx(hi), n
        )  # fmt: skip
        rate, lo, hi, n = _expected_rate(group, extra["outcomes"], False, "fail")
        assert (row["fpr"], row["fpr_lower"], row["fpr_upper"], row["fpr_labelled"]) == (
            _approx(rate), _approx(lo), _approx(hi), n
        )  # fmt: skip


def test_defect_pareto_and_label_coverage(seeded: Any) -> None:
    engine, boards, extra = seeded
    counts = Counter(
        t for o in extra["outcomes"].values() if o["defective"] for t in o["defect_types"]
    )
    rows = _run(engine, "pareto")
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    assert [(r["defect_type"], r["boards"]) for r in rows] == ordered
    cumulative = np.cumsum([c for _, c in ordered]) * 100.0 / sum(counts.values())
    assert [float(r["cumulative_pct"]) for r in rows] == pytest.approx(cumulative.tolist())

    (cov,) = _run(engine, "coverage")
    sampled = [b for b in boards if b["verdict"] == "review" or b["audit_sampled"]]
    assert cov["boards"] == len(boards)
    assert cov["sent_to_review"] == sum(b["verdict"] == "review" for b in boards)
    assert cov["audit_sampled"] == sum(b["audit_sampled"] for b in boards)
    assert cov["labelled_in_sample"] == sum(b["event_id"] in extra["outcomes"] for b in sampled)
    assert cov["awaiting_review"] == 0
    assert cov["outside_sample"] == len(extra["outcomes"]) - cov["labelled_in_sample"]


def test_score_and_candidate_drift_psi_and_histogram(seeded: Any) -> None:
    engine, boards, _ = seeded
    ordered = sorted(boards, key=lambda b: (b["decided_at"], b["event_id"]))
    ref, rest = ordered[:100], ordered[100:]

    def score_bins(group: list[dict[str, Any]]) -> list[int]:
        return histogram([b["board_score"] for b in group], [k / 10 for k in range(1, 10)])

    def cand_bins(group: list[dict[str, Any]]) -> list[int]:
        return histogram([b["n_regions"] for b in group], CANDIDATE_EDGES[1:])

    rows = _run(engine, "drift")
    expected = {t: g for t, g in _by_bucket(rest).items() if len(g) >= 20}
    assert [float(r["time"]) for r in rows] == list(expected)
    for row, group in zip(rows, expected.values(), strict=True):
        assert row["score_psi"] == pytest.approx(psi(score_bins(ref), score_bins(group)))
        assert row["candidates_psi"] == pytest.approx(psi(cand_bins(ref), cand_bins(group)))
    assert rows[-1]["candidates_psi"] > 0.25 > rows[0]["candidates_psi"]  # the seeded drift

    hist = _run(engine, "histogram")
    assert [r["reference"] for r in hist] == score_bins(ref)
    assert [r["latest"] for r in hist] == score_bins(ordered[-100:])


def test_alerts_and_operations_panels(seeded: Any) -> None:
    engine, boards, extra = seeded
    (alert,) = _run(engine, "alerts")
    assert (alert["metric"], alert["value"], alert["limit"]) == ("candidates_psi", 1.5, 0.6)
    assert _run(engine, "alerts", line=["L2"]) == []

    buckets = _by_bucket(boards)
    rows = _run(engine, "throughput")
    for row, group in zip(rows, buckets.values(), strict=True):
        assert float(row["boards_per_s"]) == pytest.approx(len(group) / HOUR)
        assert row["review"] == sum(b["verdict"] == "review" for b in group)
    rows = _run(engine, "latency")
    for row, group in zip(rows, buckets.values(), strict=True):
        total = [b["total_ms"] for b in group]
        assert row["total_p50"] == pytest.approx(np.percentile(total, 50))
        assert row["total_p95"] == pytest.approx(np.percentile(total, 95))
        assert row["classify_p50"] == pytest.approx(
            np.percentile([b["classify_ms"] for b in group], 50)
        )
    rows = _run(engine, "delay")
    for row, group in zip(rows, buckets.values(), strict=True):
        delay = [(b["recorded_at"] - b["inspected_at"]).total_seconds() for b in group]
        assert float(row["delay_p95_s"]) == pytest.approx(np.percentile(delay, 95))
    rows = _run(engine, "deadletter_rate")
    dead_by = Counter(_bucket(d["failed_at"]) for d in extra["dead"])
    assert [float(r["time"]) for r in rows] == sorted(set(dead_by) | set(buckets))
    for row in rows:
        t = float(row["time"])
        n_dead, n_boards = dead_by.get(t, 0), len(buckets.get(t, []))
        assert float(row["deadletters_per_s"]) == pytest.approx(n_dead / HOUR)
        assert row["deadletter_share"] == pytest.approx(n_dead / (n_dead + n_boards))
    (by_stage,) = _run(engine, "deadletters")
    assert (by_stage["stage"], by_stage["messages"], by_stage["last_reason"]) == (
        "decode", 30, "bad 29"
    )  # fmt: skip
