"""Dashboards as code: the SDK's own model accepts the JSON, every panel carries SQL that
the report and tests run, and `dashboards push` sends exactly the expected HTTP requests
(to a local recording server: there is no Grafana here)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dashboards import DATASOURCE_UID, all_dashboards
from dashboards.panels import OPERATIONS_PANELS, QUALITY_PANELS
from linecheck.cli import app


def test_dashboard_json_round_trips_through_the_sdk_model() -> None:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    boards = all_dashboards()
    assert set(boards) == {"linecheck-quality", "linecheck-operations"}
    for uid, model in boards.items():
        parsed = Dashboard.from_json(model)  # the SDK's own model validation
        assert parsed.uid == uid and parsed.title
        again = json.loads(json.dumps(parsed, cls=JSONEncoder))
        assert again["panels"] == model["panels"]
        assert [v["name"] for v in model["templating"]["list"]] == [
            "line", "product", "model_version", "reference_boards"
        ]  # fmt: skip
    panels = {p["title"]: p for m in boards.values() for p in m["panels"]}
    expected = {p.title: p for p in (*QUALITY_PANELS, *OPERATIONS_PANELS)}
    assert set(panels) == set(expected)
    for title, panel in panels.items():
        (target,) = panel["targets"]
        assert target["rawSql"] == expected[title].sql  # the SQL the tests run
        assert target["datasource"]["uid"] == DATASOURCE_UID
        assert panel["type"] == expected[title].kind
    ids = [p["id"] for m in boards.values() for p in m["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboards_export_writes_one_file_per_dashboard(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["dashboards", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["linecheck-operations.json", "linecheck-quality.json"]
    assert (
        json.loads((tmp_path / "linecheck-quality.json").read_text())
        == all_dashboards()["linecheck-quality"]
    )


class _Recorder(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]]
    existing: set[str]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append(
            {
                "method": self.command,
                "path": self.path,
                "body": body,
                "auth": self.headers.get("Authorization"),
            }
        )
        status, reply = 200, {"status": "success"}
        if self.command == "GET" and self.path not in self.existing:
            status, reply = 404, {"message": "not found"}
        if self.command in ("POST", "PUT") and self.path.startswith("/api/datasources"):
            self.existing.add(f"/api/datasources/uid/{DATASOURCE_UID}")
        if self.command == "POST" and self.path == "/api/folders":
            self.existing.add("/api/folders/linecheck")
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def grafana() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    recorded: list[dict[str, Any]] = []
    handler = type("H", (_Recorder,), {"requests": recorded, "existing": set()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", recorded
    server.shutdown()
    server.server_close()


def test_dashboards_push_sends_the_datasource_folder_and_dashboards(
    grafana: tuple[str, list[dict[str, Any]]],
) -> None:
    url, recorded = grafana
    env = {"LINECHECK_POSTGRES__URL": "postgresql+psycopg://lc:s%40cret@db.example:5433/audit"}
    runner = CliRunner()
    result = runner.invoke(app, ["dashboards", "push", "--url", url, "--token", "tok"], env=env)
    assert result.exit_code == 0, result.output
    calls = [(r["method"], r["path"]) for r in recorded]
    assert calls == [
        ("GET", f"/api/datasources/uid/{DATASOURCE_UID}"),
        ("POST", "/api/datasources"),
        ("GET", "/api/folders/linecheck"),
        ("POST", "/api/folders"),
        ("POST", "/api/dashboards/db"),
        ("POST", "/api/dashboards/db"),
    ]
    assert {r["auth"] for r in recorded} == {"Bearer tok"}
    ds = recorded[1]["body"]
    assert ds["uid"] == DATASOURCE_UID and ds["type"] == "grafana-postgresql-datasource"
    assert (ds["url"], ds["user"], ds["jsonData"]["database"]) == (
        "db.example:5433", "lc", "audit"
    )  # fmt: skip
    assert ds["secureJsonData"] == {"password": "s@cret"}
    assert recorded[3]["body"] == {"title": "linecheck", "uid": "linecheck"}
    pushed = {r["body"]["dashboard"]["uid"]: r["body"] for r in recorded[4:]}
    assert set(pushed) == set(all_dashboards())
    for uid, body in pushed.items():
        assert body["overwrite"] is True and body["folderUid"] == "linecheck"
        assert body["dashboard"] == all_dashboards()[uid]

    # a second push updates in place: PUT the datasource, folder already there
    recorded.clear()
    result = runner.invoke(app, ["dashboards", "push", "--url", url, "--password", "pw"], env=env)
    assert result.exit_code == 0, result.output
    assert [(r["method"], r["path"]) for r in recorded] == [
        ("GET", f"/api/datasources/uid/{DATASOURCE_UID}"),
        ("PUT", f"/api/datasources/uid/{DATASOURCE_UID}"),
        ("GET", "/api/folders/linecheck"),
        ("POST", "/api/dashboards/db"),
        ("POST", "/api/dashboards/db"),
    ]
    assert recorded[0]["auth"].startswith("Basic ")


def test_compose_provisioning_files_match_the_code() -> None:
    """compose/grafana/dashboards holds `linecheck dashboards export`'s output, and the
    provisioned datasource has the uid the panels use."""
    root = Path(__file__).resolve().parents[1] / "compose" / "grafana"
    for uid, model in all_dashboards().items():
        assert json.loads((root / "dashboards" / f"{uid}.json").read_text()) == model, (
            f"run: linecheck dashboards export {root / 'dashboards'}"
        )
    datasource = (root / "provisioning" / "datasources" / "linecheck.yml").read_text()
    assert f"uid: {DATASOURCE_UID}" in datasource
    assert "type: grafana-postgresql-datasource" in datasource
