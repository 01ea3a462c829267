"""The SQL behind every dashboard panel and every figure of the HTML report (one source).

Queries are written for Grafana's PostgreSQL datasource: they use its macros
(`$__timeFilter`, `$__timeGroupAlias`, `$__interval_ms`) and the dashboards' variables
(`$line`, `$product`, `$model_version`, `$reference_boards`). `expand` turns them into
plain SQL the same way Grafana does, so the report and the tests run exactly these queries.

Words: positive = defective. A board sent to review is decided by a person: if defective it
counts as caught (not an escape), if good it is not a false call. Error rates use the
unbiased labelled sample only — every board sent to review plus the audit sample of automatic
decisions — each weighted by 1 / P(labelled) (1 for review, 1 / audit rate for an audited
board); Wilson intervals use Kish's effective sample size of those weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from dashboards.model_compare import SHADOW_AGREEMENT
from infra.stats import CANDIDATE_EDGES

PanelKind = Literal["timeseries", "table", "barchart", "stat"]


@dataclass(frozen=True)
class PanelQuery:
    key: str
    title: str
    kind: PanelKind
    sql: str
    description: str = ""
    unit: str = "short"
    fmt: Literal["time_series", "table"] = "table"
    width: int = 12
    height: int = 8
    extra: dict[str, object] = field(default_factory=dict)


VARIABLES: dict[str, str] = {
    # name → the query that lists its values (also the "All" value, inlined as a subquery)
    "line": "SELECT DISTINCT line FROM verdicts",
    "product": "SELECT DISTINCT product FROM verdicts",
    "model_version": "SELECT DISTINCT model_version FROM verdicts",
}

_FILTER = (
    "$__timeFilter(v.decided_at) AND v.line IN ($line) AND v.product IN ($product) "
    "AND v.model_version IN ($model_version)"
)

# One row per board of the selection, with its current review outcome and sample weight.
_BOARDS = f"""
b AS (
  SELECT v.event_id, v.line, v.product, v.model_version, v.verdict, v.board_score,
         v.n_regions, v.decided_at, v.audit_sampled,
         o.defective,
         (o.event_id IS NOT NULL AND (v.verdict = 'review' OR v.audit_sampled)) AS in_sample,
         CASE WHEN v.verdict = 'review' THEN 1.0::float
              ELSE 1.0 / NULLIF(v.audit_rate, 0) END AS w
  FROM verdicts v LEFT JOIN review_outcomes o ON o.event_id = v.event_id
  WHERE {_FILTER}
)"""


def _rate(name: str, hit: str, among: str) -> str:
    """Weighted rate of `hit` among `among` in the sample, with its Wilson bounds."""
    sw = f"sum(w) FILTER (WHERE in_sample AND {among})"
    sw2 = f"sum(w * w) FILTER (WHERE in_sample AND {among})"
    sh = f"coalesce(sum(w) FILTER (WHERE in_sample AND {among} AND {hit}), 0)"
    n_eff = f"({sw} * {sw} / NULLIF({sw2}, 0))"
    rate = f"({sh} / NULLIF({sw}, 0))"
    return (
        f"{rate} AS {name},\n"
        f"  wilson_lower({rate} * {n_eff}, {n_eff}) AS {name}_lower,\n"
        f"  wilson_upper({rate} * {n_eff}, {n_eff}) AS {name}_upper,\n"
        f"  count(*) FILTER (WHERE in_sample AND {among}) AS {name}_labelled"
    )


_FNR = _rate("fnr", "verdict = 'pass'", "defective")
_FPR = _rate("fpr", "verdict = 'fail'", "NOT defective")
_REVIEW = (
    "avg((verdict = 'review')::int)::float AS review_rate,\n"
    "  wilson_lower(count(*) FILTER (WHERE verdict = 'review'), count(*)) AS review_lower,\n"
    "  wilson_upper(count(*) FILTER (WHERE verdict = 'review'), count(*)) AS review_upper,\n"
    "  1 - avg((verdict = 'review')::int)::float AS automatic_rate"
)

FNR_OVER_TIME = f"""WITH {_BOARDS}
SELECT $__timeGroupAlias(decided_at, $__interval),
  {_FNR}
FROM b GROUP BY 1 ORDER BY 1"""

FPR_OVER_TIME = f"""WITH {_BOARDS}
SELECT $__timeGroupAlias(decided_at, $__interval),
  {_FPR}
FROM b GROUP BY 1 ORDER BY 1"""

REVIEW_OVER_TIME = f"""WITH {_BOARDS}
SELECT $__timeGroupAlias(decided_at, $__interval),
  {_REVIEW},
  count(*) AS boards
FROM b GROUP BY 1 ORDER BY 1"""

RATES_BY_GROUP = f"""WITH {_BOARDS}
SELECT line, product, model_version, count(*) AS boards,
  {_REVIEW},
  {_FNR},
  {_FPR}
FROM b GROUP BY line, product, model_version ORDER BY line, product, model_version"""

RATES_OVERALL = f"""WITH {_BOARDS}
SELECT count(*) AS boards,
  {_REVIEW},
  {_FNR},
  {_FPR}
FROM b"""

DEFECT_PARETO = f"""WITH {_BOARDS},
t AS (
  SELECT jsonb_array_elements_text(o.defect_types) AS defect_type
  FROM b JOIN review_outcomes o ON o.event_id = b.event_id
  WHERE o.defective
),
c AS (SELECT defect_type, count(*) AS boards FROM t GROUP BY defect_type)
SELECT defect_type, boards,
  (100.0 * sum(boards) OVER (ORDER BY boards DESC, defect_type ROWS UNBOUNDED PRECEDING)
    / sum(boards) OVER ())::float AS cumulative_pct
FROM c ORDER BY boards DESC, defect_type"""

_CANDIDATE_BIN = (
    "CASE "
    + " ".join(f"WHEN n_regions < {hi} THEN {i}" for i, hi in enumerate(CANDIDATE_EDGES[1:]))
    + f" ELSE {len(CANDIDATE_EDGES) - 1} END"
)

# PSI per time bucket of board scores (10 equal bins on [0, 1]) and of candidate regions per
# board (the drift monitor's bins) against the selection's first $reference_boards boards;
# counts get +0.5 per bin (as infra.stats.psi). Buckets with under 20 boards are skipped.
SCORE_DRIFT = f"""WITH {_BOARDS},
ranked AS (
  SELECT b.*, row_number() OVER (ORDER BY decided_at, event_id) AS k FROM b
),
binned AS (
  SELECT 'score' AS what, LEAST(width_bucket(board_score, 0, 1, 10), 10) AS bin, decided_at, k
  FROM ranked
  UNION ALL
  SELECT 'candidates', {_CANDIDATE_BIN}, decided_at, k FROM ranked
),
bins AS (
  SELECT 'score' AS what, g AS bin FROM generate_series(1, 10) g
  UNION ALL
  SELECT 'candidates', g FROM generate_series(0, {len(CANDIDATE_EDGES) - 1}) g
),
ref AS (
  SELECT bins.what, bins.bin, count(binned.k) AS n
  FROM bins LEFT JOIN binned
    ON binned.what = bins.what AND binned.bin = bins.bin AND binned.k <= $reference_boards
  GROUP BY 1, 2
),
cur_raw AS (
  SELECT $__timeGroupAlias(decided_at, $__interval), what, bin, count(*) AS n
  FROM binned WHERE k > $reference_boards GROUP BY 1, 2, 3
),
buckets AS (
  SELECT "time", what, sum(n) AS total FROM cur_raw GROUP BY 1, 2 HAVING sum(n) >= 20
),
cur AS (
  SELECT bk."time", bins.what, bins.bin, coalesce(c.n, 0) AS n
  FROM buckets bk JOIN bins ON bins.what = bk.what
  LEFT JOIN cur_raw c ON c."time" = bk."time" AND c.what = bins.what AND c.bin = bins.bin
),
p AS (
  SELECT cur."time", cur.what,
    (cur.n + 0.5)::float / sum(cur.n + 0.5) OVER (PARTITION BY cur."time", cur.what) AS pc,
    (ref.n + 0.5)::float / sum(ref.n + 0.5) OVER (PARTITION BY cur."time", cur.what) AS pr
  FROM cur JOIN ref ON ref.what = cur.what AND ref.bin = cur.bin
)
SELECT "time",
  sum((pc - pr) * ln(pc / pr)) FILTER (WHERE what = 'score') AS score_psi,
  sum((pc - pr) * ln(pc / pr)) FILTER (WHERE what = 'candidates') AS candidates_psi
FROM p GROUP BY 1 ORDER BY 1"""

SCORE_HISTOGRAM = f"""WITH {_BOARDS},
ranked AS (SELECT b.*, row_number() OVER (ORDER BY decided_at, event_id) AS k FROM b),
latest AS (
  SELECT board_score FROM ranked ORDER BY k DESC LIMIT $reference_boards
)
SELECT g / 10.0 AS score_from,
  (SELECT count(*) FROM ranked WHERE k <= $reference_boards
     AND LEAST(width_bucket(board_score, 0, 1, 10), 10) = g) AS reference,
  (SELECT count(*) FROM latest
     WHERE LEAST(width_bucket(board_score, 0, 1, 10), 10) = g) AS latest
FROM generate_series(1, 10) g ORDER BY g"""

ALERTS = """SELECT raised_at AS "time", metric, line, model_version, value, lower, upper,
  limit_value AS "limit", window_boards, since, message
FROM alerts
WHERE $__timeFilter(raised_at) AND line IN ($line)
ORDER BY raised_at DESC"""

LABEL_COVERAGE = f"""WITH {_BOARDS}
SELECT count(*) AS boards,
  count(*) FILTER (WHERE verdict = 'review') AS sent_to_review,
  count(*) FILTER (WHERE audit_sampled) AS audit_sampled,
  count(*) FILTER (WHERE in_sample) AS labelled_in_sample,
  count(*) FILTER (WHERE (verdict = 'review' OR audit_sampled) AND defective IS NULL)
    AS awaiting_review,
  count(*) FILTER (WHERE defective IS NOT NULL AND NOT in_sample) AS outside_sample
FROM b"""

# ---------------------------------------------------------------- operations
THROUGHPUT = f"""SELECT $__timeGroupAlias(v.decided_at, $__interval),
  count(*) / ($__interval_ms / 1000.0)::float AS boards_per_s,
  count(*) FILTER (WHERE v.verdict = 'pass') AS pass,
  count(*) FILTER (WHERE v.verdict = 'fail') AS fail,
  count(*) FILTER (WHERE v.verdict = 'review') AS review
FROM verdicts v WHERE {_FILTER}
GROUP BY 1 ORDER BY 1"""

STAGE_LATENCY = f"""SELECT $__timeGroupAlias(v.decided_at, $__interval),
  percentile_cont(0.5) WITHIN GROUP (ORDER BY v.decode_ms) AS decode_p50,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY v.roi_ms) AS roi_p50,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY v.classify_ms) AS classify_p50,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY v.total_ms) AS total_p50,
  percentile_cont(0.95) WITHIN GROUP (ORDER BY v.total_ms) AS total_p95
FROM verdicts v WHERE {_FILTER}
GROUP BY 1 ORDER BY 1"""

# Time from the line machine's event to the audit row: queueing (consumer lag) + processing.
PIPELINE_DELAY = f"""SELECT $__timeGroupAlias(v.decided_at, $__interval),
  percentile_cont(0.5) WITHIN GROUP (
    ORDER BY extract(epoch FROM v.recorded_at - v.inspected_at)::float) AS delay_p50_s,
  percentile_cont(0.95) WITHIN GROUP (
    ORDER BY extract(epoch FROM v.recorded_at - v.inspected_at)::float) AS delay_p95_s
FROM verdicts v WHERE {_FILTER}
GROUP BY 1 ORDER BY 1"""

DEADLETTER_RATE = """WITH d AS (
  SELECT $__timeGroupAlias(failed_at, $__interval), count(*) AS dead
  FROM deadletters WHERE $__timeFilter(failed_at) GROUP BY 1
),
v AS (
  SELECT $__timeGroupAlias(decided_at, $__interval), count(*) AS boards
  FROM verdicts WHERE $__timeFilter(decided_at) GROUP BY 1
)
SELECT "time", coalesce(d.dead, 0) / ($__interval_ms / 1000.0)::float AS deadletters_per_s,
  coalesce(d.dead, 0)::float / NULLIF(coalesce(d.dead, 0) + coalesce(v.boards, 0), 0)
    AS deadletter_share
FROM d FULL OUTER JOIN v USING ("time") ORDER BY 1"""

DEADLETTERS_BY_STAGE = """SELECT source_topic, stage, count(*) AS messages,
  max(failed_at) AS last_at, (array_agg(reason ORDER BY failed_at DESC))[1] AS last_reason
FROM deadletters WHERE $__timeFilter(failed_at)
GROUP BY source_topic, stage ORDER BY messages DESC"""


QUALITY_PANELS: tuple[PanelQuery, ...] = (
    PanelQuery("fnr", "Escape rate (FNR) with 95% Wilson interval", "timeseries",
               FNR_OVER_TIME, "FN / (FN + TP) over the weighted review + audit sample",
               unit="percentunit", fmt="time_series"),
    PanelQuery("fpr", "False-call rate (FPR) with 95% Wilson interval", "timeseries",
               FPR_OVER_TIME, "FP / (FP + TN) over the weighted review + audit sample",
               unit="percentunit", fmt="time_series"),
    PanelQuery("review", "Review rate and automatic decision rate", "timeseries",
               REVIEW_OVER_TIME, "share of boards sent to a person (Wilson interval)",
               unit="percentunit", fmt="time_series"),
    PanelQuery("drift", "Score and candidate-count drift (PSI vs the first boards)",
               "timeseries", SCORE_DRIFT, "PSI > 0.25: the distribution has shifted",
               fmt="time_series"),
    PanelQuery("pareto", "Defect Pareto (reviewed defective boards)", "barchart",
               DEFECT_PARETO, "boards per defect type, with the cumulative share"),
    PanelQuery("histogram", "Board score distribution: reference vs latest boards",
               "barchart", SCORE_HISTOGRAM, "first vs last $reference_boards boards"),
    PanelQuery("overall", "Error and review rates over the selected range", "table",
               RATES_OVERALL, width=24, height=4),
    PanelQuery("by_group", "Rates by line, product and model version", "table",
               RATES_BY_GROUP, width=24),
    PanelQuery("coverage", "Labels: review, audit sample and pending", "table",
               LABEL_COVERAGE, width=24, height=5),
    PanelQuery("alerts", "Drift alerts", "table", ALERTS, width=24),
    PanelQuery("shadow", "Shadow models: agreement with the active model", "table",
               SHADOW_AGREEMENT, "same boards; `linecheck models compare A B` for rates",
               width=24, height=5),
)  # fmt: skip

OPERATIONS_PANELS: tuple[PanelQuery, ...] = (
    PanelQuery("throughput", "Boards per second and verdict mix", "timeseries", THROUGHPUT,
               unit="short", fmt="time_series"),
    PanelQuery("latency", "Stage latency (audit table, ms)", "timeseries", STAGE_LATENCY,
               unit="ms", fmt="time_series"),
    PanelQuery("delay", "Event to audit row (consumer lag + processing)", "timeseries",
               PIPELINE_DELAY, unit="s", fmt="time_series"),
    PanelQuery("deadletter_rate", "Dead-letter rate", "timeseries", DEADLETTER_RATE,
               unit="short", fmt="time_series"),
    PanelQuery("deadletters", "Dead letters by topic and stage", "table",
               DEADLETTERS_BY_STAGE, width=24),
)  # fmt: skip


# ---------------------------------------------------------------- macro expansion
def _interval_s(text: str) -> float:
    m = re.fullmatch(r"\s*'?(\d+(?:\.\d+)?)(ms|s|m|h|d)'?\s*", text)
    if not m:
        raise ValueError(f"bad interval {text!r}")
    return float(m.group(1)) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def expand(
    sql: str,
    start: datetime,
    end: datetime,
    interval_s: float,
    variables: dict[str, list[str] | None] | None = None,
    reference_boards: int = 100,
) -> str:
    """Grafana's PostgreSQL macro and variable interpolation, for the report and the tests.

    A variable that is None or missing means "All" (its values query, inlined)."""
    variables = variables or {}
    out = sql.replace("$__interval_ms", repr(interval_s * 1000.0))
    out = out.replace("$__interval", f"'{interval_s:g}s'")
    out = out.replace("$reference_boards", str(int(reference_boards)))

    def time_group(m: re.Match[str]) -> str:
        column, interval = (p.strip() for p in m.group(2).split(",", 1))
        step = _interval_s(interval)
        expr = f"(floor(extract(epoch from {column})/{step:g})*{step:g})::float"
        return expr + (' AS "time"' if m.group(1) == "Alias" else "")

    out = re.sub(r"\$__timeGroup(Alias)?\(([^()]*)\)", time_group, out)
    frm, to = start.isoformat(), end.isoformat()
    out = re.sub(
        r"\$__timeFilter\(([^()]*)\)",
        lambda m: f"{m.group(1).strip()} BETWEEN '{frm}' AND '{to}'",
        out,
    )
    for name, values_sql in VARIABLES.items():
        chosen = variables.get(name)
        value = ", ".join(_quote(v) for v in chosen) if chosen else values_sql
        out = out.replace(f"${name}", value)
    if "$" in re.sub(r"\$\$.*?\$\$", "", out, flags=re.S):
        leftover = re.findall(r"\$\w+", out)
        if leftover:
            raise ValueError(f"unexpanded Grafana variables: {sorted(set(leftover))}")
    return out
