"""The report's figures: matplotlib plots of the panels' rows, each returned as a base64
PNG for embedding in the HTML."""

from __future__ import annotations

import base64
import io
import math
from datetime import UTC, datetime
from typing import Any

from dashboards.report_data import ReportData, Rows, step_text
from infra.settings import Settings


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
        ax.set_title(f"{label} per {step_text(data.step)}, labelled sample")
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
    ax.set_title(f"Review rate and automatic decision rate per {step_text(data.step)}")
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
    ax.set_title(f"Label-free drift per {step_text(data.step)} vs the first boards")
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
