"""The report's data: every panel's rows for one time range, from the same SQL as the
Grafana panels (``dashboards.panels``, Grafana's macros expanded as Grafana does)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from dashboards.panels import OPERATIONS_PANELS, QUALITY_PANELS, expand

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
        self,
        engine: sa.Engine,
        start: datetime,
        end: datetime,
        step: int,
        reference: int,
        line: str | None = None,
    ) -> None:
        self.start, self.end, self.step, self.line = start, end, step, line
        self.rows: dict[str, Rows] = {}
        variables: dict[str, list[str] | None] = {"line": [line] if line else None}
        with engine.connect() as conn:
            for panel in (*QUALITY_PANELS, *OPERATIONS_PANELS):
                sql = expand(panel.sql, start, end, step, variables, reference_boards=reference)
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


def step_text(step: int) -> str:
    """A bucket width as people say it: "30 s", "5 min", "2 h", "1 d"."""
    if step < 60:
        return f"{step} s"
    if step < 3600:
        return f"{step // 60} min"
    if step < 86400:
        return f"{step // 3600} h"
    return f"{step // 86400} d"
