"""`linecheck report`: the dashboards' figures as one static HTML file, for sites without
Grafana. Same SQL as the panels (dashboards.panels, macros expanded as Grafana does),
plotted with matplotlib and embedded as base64 PNG, plus the tables."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dashboards.panels import OPERATIONS_PANELS, QUALITY_PANELS, PanelQuery, expand
from infra.db import make_engine
from infra.settings import Settings

_NICE_S = (
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    172800,
    604800,
)


def bucket_seconds(span_s: float, buckets: int = 12) -> int:
    """The smallest nice bucket width that splits `span_s` into at most `buckets` buckets."""
    for step in _NICE_S:
        if span_s / step <= buckets:
            return step
    return _NICE_S[-1]


Rows = list[dict[str, Any]]


class ReportData:
    """Every panel's rows for one time range."""

    def __init__(
        self, engine: sa.Engine, start: datetime, end: datetime, step: int, reference: int
    ) -> None:
        self.start, self.end, self.step = start, end, step
        self.rows: dict[str, Rows] = {}
        with engine.connect() as conn:
            for panel in (*QUALITY_PANELS, *OPERATIONS_PANELS):
                sql = expand(panel.sql, start, end, step, reference_boards=reference)
                self.rows[panel.key] = [dict(r) for r in conn.execute(sa.text(sql)).mappings()]


def time_range(engine: sa.Engine, hours: float | None) -> tuple[datetime, datetime] | None:
    with engine.connect() as conn:
        lo, hi = conn.execute(
            sa.text("SELECT min(decided_at), max(decided_at) FROM verdicts")
        ).one()
    if lo is None:
        return None
    end = hi + timedelta(seconds=1)
    start = max(lo, end - timedelta(hours=hours)) if hours else lo
    return start, end


# ---------------------------------------------------------------- plots
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _times(rows: Rows) -> Any:  # datetimes: matplotlib's stubs want arrays
    return [datetime.fromtimestamp(float(r["time"]), UTC) for r in rows]


def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


def _time_axis(ax: Any, data: ReportData) -> None:
    import matplotlib.dates as mdates

    ax.xaxis.set_major_formatter(
        mdates.DateFormatter("%H:%M:%S" if data.step < 60 else "%m-%d %H:%M")
    )
    ax.grid(alpha=0.3)
    ax.set_xlim(data.start, data.end)
    for label in ax.get_xticklabels():
        label.set_rotation(30)
        label.set_ha("right")


def _band(ax: Any, rows: Rows, key: str, label: str, color: str) -> None:
    """The rate per bucket with its Wilson interval as error bars (buckets without labels
    are gaps, not zeros)."""
    rows = [r for r in rows if r[key] is not None]
    if not rows:
        ax.text(0.5, 0.5, "no labelled boards yet", ha="center", transform=ax.transAxes)
        return
    t = _times(rows)
    rate = [_f(r[key]) for r in rows]
    lower = [v - _f(r[f"{key}_lower"]) for v, r in zip(rate, rows, strict=True)]
    upper = [_f(r[f"{key}_upper"]) - v for v, r in zip(rate, rows, strict=True)]
    ax.errorbar(
        t,
        rate,
        yerr=[lower, upper],
        fmt="o-",
        ms=4,
        capsize=3,
        color=color,
        ecolor=color,
        elinewidth=1,
        alpha=0.9,
        label=f"{label}, 95% Wilson interval",
    )


def _percent(ax: Any) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0))


def plot_error_rates(data: ReportData, alerts: Rows, settings: Settings) -> str:
    import matplotlib.pyplot as plt

    q = settings.quality
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=False)
    for ax, key, label, color, base, margin in (
        (axes[0], "fnr", "FNR (escapes)", "#c0392b", q.baseline_fnr, q.fnr_margin),
        (axes[1], "fpr", "FPR (false calls)", "#2c6fbb", q.baseline_fpr, q.fpr_margin),
    ):
        _band(ax, data.rows[key], key, label, color)
        ax.axhline(base, color="#555", lw=1, ls=":", label=f"baseline {base:.0%}")
        ax.axhline(
            min(1.0, base + margin),
            color="#555",
            lw=1,
            ls="--",
            label=f"alert limit {min(1.0, base + margin):.0%}",
        )
        _alert_lines(ax, alerts, {key})
        ax.set_ylim(0, 1)
        _percent(ax)
        ax.set_title(f"{label} per {_step_text(data.step)}, labelled sample")
        ax.legend(loc="upper right", fontsize=7)
        _time_axis(ax, data)
    return _png(fig)


def plot_review_rate(data: ReportData) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.2))
    rows = data.rows["review"]
    if rows:
        t = _times(rows)
        ax.plot(
            t,
            [_f(r["review_rate"]) for r in rows],
            marker="o",
            ms=3,
            color="#8e44ad",
            label="review rate",
        )
        ax.fill_between(
            t,
            [_f(r["review_lower"]) for r in rows],
            [_f(r["review_upper"]) for r in rows],
            color="#8e44ad",
            alpha=0.18,
            label="95% Wilson interval",
        )
        ax.plot(
            t,
            [_f(r["automatic_rate"]) for r in rows],
            color="#27ae60",
            label="automatic decision rate",
        )
    ax.set_ylim(0, 1.02)
    _percent(ax)
    ax.set_title(f"Review rate and automatic decision rate per {_step_text(data.step)}")
    ax.legend(loc="center right", fontsize=8)
    _time_axis(ax, data)
    return _png(fig)


def plot_pareto(data: ReportData) -> str:
    import matplotlib.pyplot as plt

    rows = data.rows["pareto"]
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    names = [str(r["defect_type"]) for r in rows]
    ax.bar(names, [int(r["boards"]) for r in rows], color="#e67e22")
    ax.set_ylabel("reviewed defective boards")
    ax2 = ax.twinx()
    ax2.plot(names, [_f(r["cumulative_pct"]) for r in rows], color="#34495e", marker="o")
    ax2.set_ylim(0, 105)
    ax2.set_ylabel("cumulative %")
    ax.set_title("Defect Pareto (review outcomes)")
    if not rows:
        ax.text(0.5, 0.5, "no defective review outcomes yet", ha="center", transform=ax.transAxes)
    return _png(fig)


def plot_histogram(data: ReportData, reference: int) -> str:
    import matplotlib.pyplot as plt

    rows = data.rows["histogram"]
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    x = [float(r["score_from"]) for r in rows]
    ref_total = sum(int(r["reference"]) for r in rows) or 1
    cur_total = sum(int(r["latest"]) for r in rows) or 1
    ax.bar(
        [v - 0.1 + 0.025 for v in x],
        [int(r["reference"]) / ref_total for r in rows],
        width=0.045,
        label=f"first {reference} boards",
        color="#95a5a6",
    )
    ax.bar(
        [v - 0.1 + 0.075 for v in x],
        [int(r["latest"]) / cur_total for r in rows],
        width=0.045,
        label=f"last {reference} boards",
        color="#c0392b",
    )
    ax.set_xlim(0, 1)
    ax.set_xlabel("board score (P(defective))")
    _percent(ax)
    ax.set_title("Board score distribution: reference vs latest")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_drift(data: ReportData, alerts: Rows, limit: float) -> str:
    import matplotlib.pyplot as plt

    rows = data.rows["drift"]
    fig, ax = plt.subplots(figsize=(11, 3.2))
    if rows:
        t = _times(rows)
        ax.plot(t, [_f(r["score_psi"]) for r in rows], marker="o", ms=3, label="board score PSI")
        ax.plot(
            t,
            [_f(r["candidates_psi"]) for r in rows],
            marker="s",
            ms=3,
            label="candidates per board PSI",
        )
    ax.axhline(limit, color="#c0392b", ls="--", lw=1, label=f"PSI limit {limit:g}")
    _alert_lines(ax, alerts, {"score_psi", "candidates_psi", "review_rate"})
    ax.set_title(f"Label-free drift per {_step_text(data.step)} vs the first boards")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    _time_axis(ax, data)
    return _png(fig)


def plot_operations(data: ReportData) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 6.4))
    series = (
        (axes[0][0], "throughput", (("boards_per_s", "boards/s"),), "Throughput (boards/s)"),
        (
            axes[0][1],
            "latency",
            (
                ("decode_p50", "decode p50"),
                ("roi_p50", "ROI p50"),
                ("classify_p50", "classify p50"),
                ("total_p50", "total p50"),
                ("total_p95", "total p95"),
            ),
            "Stage latency (ms)",
        ),
        (
            axes[1][0],
            "delay",
            (("delay_p50_s", "p50"), ("delay_p95_s", "p95")),
            "Event to audit row (s): queueing + processing",
        ),
        (
            axes[1][1],
            "deadletter_rate",
            (("deadletter_share", "dead-letter share"),),
            "Dead letters / (dead letters + verdicts)",
        ),
    )
    for ax, key, columns, title in series:
        rows = data.rows[key]
        for column, label in columns:
            if rows:
                ax.plot(_times(rows), [_f(r[column]) for r in rows], marker="o", ms=3, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        if len(columns) > 1:
            ax.legend(fontsize=7)
        _time_axis(ax, data)
    fig.tight_layout()
    return _png(fig)


def _alert_lines(ax: Any, alerts: Rows, metrics: set[str]) -> None:
    shown = False
    for a in alerts:
        if a["metric"] in metrics:
            ax.axvline(
                a["time"], color="#c0392b", lw=1, alpha=0.8, label=None if shown else "alert raised"
            )
            shown = True


def _step_text(step: int) -> str:
    if step < 60:
        return f"{step} s"
    if step < 3600:
        return f"{step // 60} min"
    if step < 86400:
        return f"{step // 3600} h"
    return f"{step // 86400} d"


# ---------------------------------------------------------------- html
def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return html.escape(str(v))


def _table(rows: Rows, columns: Sequence[str] | None = None, empty: str = "none") -> str:
    if not rows:
        return f"<p class='empty'>{html.escape(empty)}</p>"
    cols = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(b64: str, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{b64}'>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1160px;
color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.meta{color:#666}.row{display:flex;gap:12px;flex-wrap:wrap}.row img{width:560px}
img{max-width:100%}table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}.empty{color:#888;font-style:italic}
.kpi{display:flex;gap:16px}.kpi div{background:#f7f7f7;border-radius:6px;padding:8px 14px}
.kpi b{display:block;font-size:22px}.kpi small{font-size:12px;color:#666}
.note{color:#555;font-size:13px}
"""


def _kpis(data: ReportData) -> str:
    (cov,) = data.rows["coverage"] or [{}]
    (overall,) = data.rows["overall"] or [{}]

    def rate(key: str) -> str:
        if overall.get(key) is None:
            return "—"
        return (
            f"{overall[key]:.1%}<small> [{overall[f'{key}_lower']:.1%}, "
            f"{overall[f'{key}_upper']:.1%}]</small>"
        )

    items = [
        ("boards", cov.get("boards", 0)),
        ("sent to review", cov.get("sent_to_review", 0)),
        ("audit sample", cov.get("audit_sampled", 0)),
        ("labelled (sample)", cov.get("labelled_in_sample", 0)),
        ("awaiting review", cov.get("awaiting_review", 0)),
    ]
    rates = [("FNR (escape rate)", rate("fnr")), ("FPR (false calls)", rate("fpr"))]
    return (
        "<div class='kpi'>"
        + "".join(f"<div><b>{_cell(v)}</b>{html.escape(k)}</div>" for k, v in items)
        + "".join(f"<div><b>{v}</b>{html.escape(k)}</div>" for k, v in rates)
        + "</div>"
    )


def render(data: ReportData, settings: Settings) -> str:
    q = settings.quality
    alerts = data.rows["alerts"]
    alerts_by_time = sorted(alerts, key=lambda a: a["time"])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>linecheck quality report"
        f"</title><style>{_CSS}</style></head><body>",
        "<h1>linecheck · quality report</h1>",
        f"<p class='meta'>{_cell(data.start)} — {_cell(data.end)} UTC · buckets of "
        f"{_step_text(data.step)} · generated {_cell(datetime.now(UTC))}</p>",
        _kpis(data),
        "<p class='note'>Positive = defective. FNR = FN / (FN + TP), the escape rate; FPR = "
        "FP / (FP + TN), the false-call rate. Both come from the unbiased labelled sample: "
        "every board sent to review plus the audit sample of automatic decisions (rate "
        f"{q.audit_rate:g}), weighted by 1 / P(labelled); a board sent to review counts as "
        "caught if defective and as no false call if good. Bands are 95% Wilson intervals on "
        "the effective sample size.</p>",
        "<h2>Error rates</h2>",
        _img(plot_error_rates(data, alerts_by_time, settings), "FNR and FPR over time"),
        "<h2>Review rate</h2>",
        _img(plot_review_rate(data), "review rate over time"),
        "<h2>Defects and score drift</h2>",
        "<div class='row'>",
        _img(plot_pareto(data), "defect Pareto"),
        _img(plot_histogram(data, q.reference_boards), "score histogram"),
        "</div>",
        _img(plot_drift(data, alerts_by_time, q.psi_limit), "PSI over time"),
        "<h2>Alerts</h2>",
        _table(
            alerts,
            [
                "time",
                "metric",
                "line",
                "model_version",
                "value",
                "lower",
                "upper",
                "limit",
                "window_boards",
                "since",
                "message",
            ],
            empty="no drift alerts in this range",
        ),
        "<h2>By line, product and model version</h2>",
        _table(
            data.rows["by_group"],
            [
                "line",
                "product",
                "model_version",
                "boards",
                "review_rate",
                "fnr",
                "fnr_lower",
                "fnr_upper",
                "fnr_labelled",
                "fpr",
                "fpr_lower",
                "fpr_upper",
                "fpr_labelled",
            ],
        ),
        "<h2>Labels</h2>",
        _table(data.rows["coverage"]),
        "<h2>Operations</h2>",
        _img(plot_operations(data), "operations"),
        _table(data.rows["deadletters"], empty="no dead letters in this range"),
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(settings: Settings, out: Path, hours: float | None = None) -> Path:
    """Write the report from the audit store that ``settings.postgres.url`` names."""
    import matplotlib

    matplotlib.use("Agg")
    engine = make_engine(settings.postgres.url)
    try:
        found = time_range(engine, hours)
        if found is None:
            raise ValueError("the audit store has no verdicts yet: nothing to report")
        start, end = found
        step = bucket_seconds((end - start).total_seconds())
        data = ReportData(engine, start, end, step, settings.quality.reference_boards)
    finally:
        engine.dispose()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(data, settings), encoding="utf-8")
    return out


__all__ = ["PanelQuery", "ReportData", "bucket_seconds", "render", "write_report"]
