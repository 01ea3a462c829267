"""Two models on the same boards (`linecheck models compare A B`, and the shadow panel):
agreement, the boards they disagree on, each one's FNR/FPR on the boards people reviewed
(Wilson intervals) and classify latency. A model's decisions are its audit rows when it was
active and its ``shadow_verdicts`` when it shadowed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from infra.stats import wilson_interval

# Grafana panel (quality dashboard): each shadow against the active model it shadowed.
SHADOW_AGREEMENT = """SELECT s.model_version AS shadow, v.model_version AS active,
  count(*) AS boards, avg((s.verdict = v.verdict)::int)::float AS agreement,
  count(*) FILTER (WHERE s.verdict <> v.verdict) AS disagreements,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY s.classify_ms) AS shadow_classify_ms_p50,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY v.classify_ms) AS active_classify_ms_p50
FROM shadow_verdicts s JOIN verdicts v USING (event_id)
WHERE $__timeFilter(v.decided_at) AND v.line IN ($line)
GROUP BY s.model_version, v.model_version ORDER BY boards DESC"""

_PAIRS = sa.text(
    """WITH d AS (
  SELECT event_id, model_version, verdict, board_score, classify_ms, decided_at FROM verdicts
  UNION ALL
  SELECT event_id, model_version, verdict, board_score, classify_ms, decided_at
  FROM shadow_verdicts)
SELECT a.event_id, v.line, v.board_serial, a.verdict AS a_verdict, b.verdict AS b_verdict,
  a.board_score AS a_score, b.board_score AS b_score, a.classify_ms AS a_ms,
  b.classify_ms AS b_ms, o.defective
FROM d a JOIN d b ON b.event_id = a.event_id AND b.model_version = :b
JOIN verdicts v ON v.event_id = a.event_id
LEFT JOIN review_outcomes o ON o.event_id = a.event_id
WHERE a.model_version = :a AND a.decided_at >= :since
ORDER BY v.decided_at"""
)


def _rates(rows: list[dict[str, Any]], key: str, z: float) -> dict[str, Any]:
    """FNR and FPR of one model's verdicts on the reviewed boards (review counts as caught
    for a defective board and as no false call for a good one, as in the quality loop)."""
    defective = [r for r in rows if r["defective"] is True]
    good = [r for r in rows if r["defective"] is False]
    fn = sum(r[key] == "pass" for r in defective)
    fp = sum(r[key] == "fail" for r in good)
    out: dict[str, Any] = {"reviewed_defective": len(defective), "reviewed_good": len(good)}
    for name, k, n in (("fnr", fn, len(defective)), ("fpr", fp, len(good))):
        lo, hi = wilson_interval(k, n, z)
        out[name] = k / n if n else None
        out[f"{name}_interval"] = [lo, hi] if n else None
    return out


def compare_models(
    engine: sa.Engine, a: str, b: str, since: datetime, z: float = 1.96, show: int = 20
) -> dict[str, Any]:
    """Everything `linecheck models compare` prints, as JSON-ready data."""
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(_PAIRS, {"a": a, "b": b, "since": since}).mappings()]
    agree = sum(r["a_verdict"] == r["b_verdict"] for r in rows)
    disagreements = [
        {k: r[k] for k in ("event_id", "line", "board_serial", "a_verdict", "b_verdict",
                           "a_score", "b_score", "defective")}
        for r in rows
        if r["a_verdict"] != r["b_verdict"]
    ]  # fmt: skip

    def latency(key: str) -> dict[str, float | None]:
        ms = np.asarray([r[key] for r in rows], float)
        if not len(ms):
            return {"p50": None, "p99": None}
        return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}

    return {
        "a": a,
        "b": b,
        "since": since.isoformat(),
        "boards": len(rows),
        "agreement": agree / len(rows) if rows else None,
        "disagreements": len(disagreements),
        "disagreeing_boards": disagreements[:show],
        "rates": {a: _rates(rows, "a_verdict", z), b: _rates(rows, "b_verdict", z)},
        "classify_ms": {a: latency("a_ms"), b: latency("b_ms")},
    }
