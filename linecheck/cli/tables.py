"""Rich tables of the model commands' results (evaluation metrics, cross-validation)."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table


def fmt(value: Any) -> str:
    if value is None:
        return "—"  # undefined: e.g. FNR on a set without defective boards
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def cv_table(report: dict[str, Any]) -> Table:
    """Per fold and mean ± sd (min) of the headline figures."""
    keys = ("f_score", "map", "roi_recall", "board_fnr", "board_fpr", "review_rate")
    table = Table(title=f"leave-one-group-out cross-validation ({len(report['folds'])} folds)")
    table.add_column("fold (inner)")
    for key in keys:
        table.add_column(key, justify="right")
    table.add_column("inner f_score (val)", justify="right")  # what chose for the fold
    for group, row in report["folds"].items():
        inner = fmt(row["inner_validation"]["f_score"])
        table.add_row(
            f"{group} ({row['inner_validation_group']})", *(fmt(row[k]) for k in keys), inner
        )
    summary = report["summary"]
    table.add_row(
        "mean ± sd (min)",
        *(
            f"{summary[k]['mean']:.4f} ± {summary[k]['sd']:.4f} ({summary[k]['min']:.4f})"
            if k in summary
            else "—"
            for k in keys
        ),
        "",
    )
    return table


def metrics_table(metrics: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    from training.evaluation import HEADLINE_METRICS

    for key in (*HEADLINE_METRICS, "truths", "images_per_s"):
        if key in metrics:
            table.add_row(key, fmt(metrics[key]))
    for kind, row in metrics.get("per_class", {}).items():
        table.add_row(
            f"{kind}: ap / precision / recall",
            " / ".join(fmt(row[k]) for k in ("ap", "precision", "recall")),
        )
    for group, row in metrics.get("per_group", {}).items():
        table.add_row(
            f"{group}: F / mAP / roi_recall",
            " / ".join(fmt(row.get(k)) for k in ("f_score", "map", "roi_recall")),
        )
    for group, row in metrics.get("board_rates_cross_group", {}).items():
        table.add_row(
            f"{group} (thresholds from the other groups): FNR / FPR / review",
            " / ".join(fmt(row[k]) for k in ("board_fnr", "board_fpr", "review_rate")),
        )
    return table
