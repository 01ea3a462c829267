"""The quality and operations dashboards, built with grafana-foundation-sdk builders."""

from __future__ import annotations

import json
from typing import Any, Self

from grafana_foundation_sdk.builders import barchart, dashboard, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.panels import OPERATIONS_PANELS, QUALITY_PANELS, VARIABLES, PanelQuery

DATASOURCE_TYPE = "grafana-postgresql-datasource"
DATASOURCE_UID = "linecheck-postgres"
DATASOURCE_NAME = "linecheck PostgreSQL"
DATASOURCE = dm.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)


class SQLQuery(cogvariants.Dataquery):
    """A raw-SQL target of Grafana's PostgreSQL datasource (the SDK has no builder for it)."""

    def __init__(self, ref_id: str = "A", raw_sql: str = "", fmt: str = "table") -> None:
        self.ref_id = ref_id
        self.raw_sql = raw_sql
        self.format = fmt

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": DATASOURCE.to_json(),
            "editorMode": "code",
            "format": self.format,
            "rawQuery": True,
            "rawSql": self.raw_sql,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(str(data.get("refId", "A")), str(data["rawSql"]), str(data.get("format")))


class SQLQueryBuilder(cogbuilder.Builder[SQLQuery]):
    def __init__(self, sql: str, fmt: str) -> None:
        self._internal = SQLQuery("A", sql, fmt)

    def build(self) -> SQLQuery:
        return self._internal


def _panel(p: PanelQuery) -> Any:  # a panel builder (timeseries, barchart or table)
    target = SQLQueryBuilder(p.sql, p.fmt)
    panel: Any
    if p.kind == "timeseries":
        panel = (
            timeseries.Panel()
            .line_width(2)
            .fill_opacity(8)
            .show_points(common.VisibilityMode.AUTO)
            .span_nulls(True)
        )
        if p.unit == "percentunit":
            panel = panel.min(0)
    elif p.kind == "barchart":
        first_column = {"pareto": "defect_type", "histogram": "score_from"}.get(p.key, "")
        panel = barchart.Panel().x_field(first_column).show_value(common.VisibilityMode.AUTO)
    else:
        panel = table.Panel()
    return (
        panel.title(p.title)
        .description(p.description)
        .datasource(DATASOURCE)
        .with_target(target)
        .unit(p.unit)
        .span(p.width)
        .height(p.height)
    )


def _variables(board: dashboard.Dashboard, reference_boards: int) -> dashboard.Dashboard:
    for name, sql in VARIABLES.items():
        board = board.with_variable(
            dashboard.QueryVariable(name)
            .label(name.replace("_", " "))
            .datasource(DATASOURCE)
            .query(sql)
            .multi(True)
            .include_all(True)
            .all_value(sql)  # "All" becomes a subquery: no giant IN lists
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        )
    return board.with_variable(
        dashboard.ConstantVariable("reference_boards")
        .label("reference boards")
        .description("the first N boards of the selection form the drift reference")
        .value(str(reference_boards))
    )


def _dashboard(
    uid: str,
    title: str,
    description: str,
    panels: tuple[PanelQuery, ...],
    reference_boards: int,
    base_id: int,
) -> dict[str, Any]:
    board = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["linecheck"])
        .time("now-24h", "now")
        .refresh("1m")
        .timezone("utc")
        .editable()
    )
    board = _variables(board, reference_boards)
    for i, p in enumerate(panels, start=1):
        board = board.with_panel(_panel(p).id(base_id + i))
    # the SDK's encoder turns the nested model objects into plain JSON
    model = dict(json.loads(json.dumps(board.build(), cls=JSONEncoder)))
    for panel, query in zip(model["panels"], panels, strict=True):
        if panel["type"] == "timeseries":
            panel["fieldConfig"]["overrides"] = _interval_overrides(query.sql)
    return model


def _interval_overrides(sql: str) -> list[dict[str, Any]]:
    """Wilson intervals as a shaded band (upper filled down to lower) between thin dashed
    bounds; sample sizes hidden from the graph."""
    bands = [
        {
            "matcher": {"id": "byName", "options": f"{name}_upper"},
            "properties": [
                {"id": "custom.fillBelowTo", "value": f"{name}_lower"},
                {"id": "custom.fillOpacity", "value": 20},
            ],
        }
        for name in ("fnr", "fpr", "review")
        if f"AS {name}_upper" in sql
    ]
    return [
        *bands,
        {
            "matcher": {"id": "byRegexp", "options": ".*_(lower|upper)$"},
            "properties": [
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [6, 4]}},
                {"id": "custom.lineWidth", "value": 1},
            ],
        },
        {
            "matcher": {"id": "byRegexp", "options": ".*_labelled$|^boards$"},
            "properties": [
                {"id": "custom.hideFrom", "value": {"viz": True, "legend": False, "tooltip": False}}
            ],
        },
    ]


def quality_dashboard(reference_boards: int = 100) -> dict[str, Any]:
    return _dashboard(
        "linecheck-quality",
        "linecheck · quality",
        "Escape rate (FNR), false-call rate (FPR) with Wilson intervals from the review and "
        "audit sample, review rate, defect Pareto, score drift and alerts.",
        QUALITY_PANELS,
        reference_boards,
        base_id=100,
    )


def operations_dashboard(reference_boards: int = 100) -> dict[str, Any]:
    return _dashboard(
        "linecheck-operations",
        "linecheck · operations",
        "Throughput, stage latency from the audit table, event-to-audit delay and dead letters.",
        OPERATIONS_PANELS,
        reference_boards,
        base_id=200,
    )


def all_dashboards(reference_boards: int = 100) -> dict[str, dict[str, Any]]:
    return {
        "linecheck-quality": quality_dashboard(reference_boards),
        "linecheck-operations": operations_dashboard(reference_boards),
    }
