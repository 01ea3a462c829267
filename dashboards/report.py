"""`linecheck report`: the dashboards' figures as one static HTML file, for sites without
Grafana. Same SQL as the panels (``dashboards.report_data``), plotted with matplotlib
(``dashboards.report_plots``) and embedded as base64 PNG, plus the tables."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from dashboards.panels import PanelQuery
from dashboards.report_data import ReportData, Rows, bucket_seconds, step_text, time_range
from dashboards.report_plots import (
    plot_drift,
    plot_error_rates,
    plot_histogram,
    plot_operations,
    plot_pareto,
    plot_review_rate,
)
from infra.db import make_engine
from infra.settings import Settings


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


REPORT_CSS = """
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
    """The report as one HTML document."""
    return "\n".join(
        [
            "<!doctype html><html><head><meta charset='utf-8'><title>linecheck quality report"
            f"</title><style>{REPORT_CSS}</style></head><body>",
            "<h1>linecheck · quality report</h1>",
            render_body(data, settings),
            "</body></html>",
        ]
    )


def render_body(data: ReportData, settings: Settings) -> str:
    """The report's sections (the review station's quality page shows them in its layout)."""
    q = settings.quality
    alerts = data.rows["alerts"]
    alerts_by_time = sorted(alerts, key=lambda a: a["time"])
    where = f"line {_cell(data.line)} · " if data.line else ""
    parts = [
        f"<p class='meta'>{where}{_cell(data.start)} — {_cell(data.end)} UTC · buckets of "
        f"{step_text(data.step)} · generated {_cell(datetime.now(UTC))}</p>",
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
    ]
    return "\n".join(parts)


def report_data(
    engine: Engine, settings: Settings, hours: float | None = None, line: str | None = None
) -> ReportData:
    """Every figure's rows for the last ``hours`` (all data when None), one line or all."""
    import matplotlib

    matplotlib.use("Agg")
    found = time_range(engine, hours)
    if found is None:
        raise ValueError("the audit store has no verdicts yet: nothing to report")
    start, end = found
    step = bucket_seconds((end - start).total_seconds())
    return ReportData(engine, start, end, step, settings.quality.reference_boards, line)


def write_report(settings: Settings, out: Path, hours: float | None = None) -> Path:
    """Write the report from the audit store that ``settings.postgres.url`` names."""
    engine = make_engine(settings.postgres.url.get_secret_value())
    try:
        data = report_data(engine, settings, hours)
    finally:
        engine.dispose()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(data, settings), encoding="utf-8")
    return out


__all__ = [
    "REPORT_CSS",
    "PanelQuery",
    "ReportData",
    "bucket_seconds",
    "render",
    "render_body",
    "report_data",
    "write_report",
]
