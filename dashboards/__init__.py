"""Dashboards as code: the panel SQL (``panels``), Grafana dashboards built from it with
grafana-foundation-sdk (``build``) and pushed with grafana-client (``provision``), and the
static HTML report made from the same SQL (``report``).

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
