"""Grafana dashboards as code (grafana-foundation-sdk), from the SQL in linecheck.quality_sql.

`all_dashboards()` gives the dashboard JSON models by uid; `linecheck dashboards export DIR`
writes them for file provisioning and `linecheck dashboards push` sends them through
grafana-client (see dashboards/provision.py).
"""

from dashboards.build import (
    DATASOURCE_NAME,
    DATASOURCE_TYPE,
    DATASOURCE_UID,
    all_dashboards,
    operations_dashboard,
    quality_dashboard,
)

__all__ = [
    "DATASOURCE_NAME",
    "DATASOURCE_TYPE",
    "DATASOURCE_UID",
    "all_dashboards",
    "operations_dashboard",
    "quality_dashboard",
]
