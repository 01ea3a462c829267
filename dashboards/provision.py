"""Provision the PostgreSQL datasource and the dashboards through Grafana's HTTP API
(grafana-client): create or update, idempotent, so it can run on every deploy."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import sqlalchemy as sa

from dashboards.build import DATASOURCE_NAME, DATASOURCE_TYPE, DATASOURCE_UID, all_dashboards

FOLDER_UID = "linecheck"
FOLDER_TITLE = "linecheck"


def datasource_payload(postgres_url: str, host_override: str | None = None) -> dict[str, Any]:
    """Grafana's datasource JSON for the audit store at a SQLAlchemy URL."""
    url = sa.make_url(postgres_url)
    host = host_override or f"{url.host or 'localhost'}:{url.port or 5432}"
    return {
        "uid": DATASOURCE_UID,
        "name": DATASOURCE_NAME,
        "type": DATASOURCE_TYPE,
        "access": "proxy",
        "url": host,
        "user": url.username or "",
        "isDefault": False,
        "jsonData": {
            "database": url.database or "",
            "sslmode": "disable",
            "postgresVersion": 1600,
            "timescaledb": False,
            "maxOpenConns": 10,
        },
        "secureJsonData": {"password": unquote(url.password or "")},
    }


def provision(
    grafana_url: str,
    postgres_url: str,
    *,
    token: str | None = None,
    basic: tuple[str, str] | None = None,
    reference_boards: int = 100,
) -> list[str]:
    """Create or update the datasource, the folder and both dashboards; what was done."""
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaClientError

    api = GrafanaApi.from_url(grafana_url, credential=token or basic)
    done: list[str] = []
    payload = datasource_payload(postgres_url)
    try:
        api.datasource.get_datasource_by_uid(DATASOURCE_UID)
    except GrafanaClientError as exc:
        if getattr(exc, "status_code", None) != 404:
            raise
        api.datasource.create_datasource(payload)
        done.append(f"created datasource {DATASOURCE_UID}")
    else:
        api.datasource.update_datasource_by_uid(DATASOURCE_UID, payload)
        done.append(f"updated datasource {DATASOURCE_UID}")
    try:
        api.folder.get_folder(FOLDER_UID)
    except GrafanaClientError as exc:
        if getattr(exc, "status_code", None) != 404:
            raise
        api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
        done.append(f"created folder {FOLDER_UID}")
    for uid, model in all_dashboards(reference_boards).items():
        api.dashboard.update_dashboard(
            {
                "dashboard": model,
                "folderUid": FOLDER_UID,
                "overwrite": True,
                "message": "provisioned by linecheck dashboards push",
            }
        )
        done.append(f"pushed dashboard {uid}")
    return done
