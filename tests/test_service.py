"""`linecheck up` end to end, as a plant engineer runs it: the real command in its own
folder on the embedded servers, other commands finding it without flags, the JSON API and
the review station in a real browser (Debian's Chromium driven by Playwright), a crashed
worker restarted, SIGTERM, and the data still there after `linecheck up` again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from infra.db import make_engine, review_outcome_history, review_outcomes, verdicts
from infra.settings import load_settings
from linecheck.embedded import free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.services

CHROMIUM = Path("/usr/bin/chromium")
OPERATOR, PASSWORD = "op1", "station-pass-1"
BOARDS = 50


@dataclass
class Service:
    folder: Path
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def linecheck(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A `linecheck` command run from the service's folder, without --config."""
        return subprocess.run(
            [sys.executable, "-m", "linecheck", *args],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def start(self) -> None:
        log = (self.folder / "up.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "linecheck", "up", "--workers", "2", "--port", str(self.port)],
            cwd=self.folder,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log_tail()
            try:
                return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 240, "linecheck up to report ready")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(90)

    def log_tail(self) -> str:
        return (self.folder / "up.log").read_text(errors="replace")[-3000:]

    def engine(self) -> sa.Engine:
        running = self.folder / ".linecheck" / "service" / "running.toml"
        return make_engine(load_settings(running).postgres.url.get_secret_value())


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("line-pc")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINECHECK_")}
    env.update(
        LINECHECK_MODEL__MODELS_DIR=str(model_dir.parent),
        LINECHECK_MODEL__VERSION=model_dir.name,
        LINECHECK_QUALITY__AUDIT_RATE="0.3",  # enough boards for the queue
        LINECHECK_WEB__QUEUE_REFRESH_S="0.5",
        PYTHONUNBUFFERED="1",
    )
    svc = Service(folder, env, free_port())
    svc.start()
    try:
        yield svc
    finally:
        if svc.proc is not None and svc.proc.poll() is None:
            try:  # a graceful stop takes its servers down too; a kill would orphan them
                svc.stop()
            except subprocess.TimeoutExpired:
                svc.proc.kill()
                svc.proc.wait(30)


def _basic() -> httpx.BasicAuth:
    return httpx.BasicAuth(OPERATOR, PASSWORD)


def test_commands_find_the_running_service_and_its_boards_reach_the_queue(
    service: Service,
) -> None:
    ready = httpx.get(f"{service.url}/readyz", timeout=10).json()
    assert ready["workers"]["partitions_held"] == ready["broker"]["partitions"]
    assert ready["workers"]["models_loaded"] == 2
    service.linecheck("users", "add", OPERATOR, "--password", PASSWORD)
    service.linecheck("simulate", "--boards", str(BOARDS))

    def summary() -> dict[str, object]:
        answer = httpx.get(f"{service.url}/api/summary", auth=_basic(), timeout=10)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    wait_until(lambda: sum(summary()["verdicts"].values()) == BOARDS, 180, "50 verdicts")  # type: ignore[union-attr]
    queue = httpx.get(f"{service.url}/api/review-queue", auth=_basic(), timeout=10).json()
    assert queue, "boards sent to review or drawn for audit await a person"
    assert [b["decided_at"] for b in queue] == sorted(b["decided_at"] for b in queue)
    assert {b["why"] for b in queue} <= {"review", "audit"}
    cli_queue = service.linecheck("review-queue", "--json").stdout.splitlines()
    assert [json.loads(line)["event_id"] for line in cli_queue] == [b["event_id"] for b in queue]
    board = httpx.get(f"{service.url}/api/boards/{queue[0]['event_id']}", auth=_basic()).json()
    image = httpx.get(f"{service.url}/boards/{queue[0]['event_id']}/image", auth=_basic())
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n", board
    metrics = httpx.get(f"{service.url}/metrics").text
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("linecheck_verdicts_total{")
    )
    assert counted == BOARDS  # the whole group's counters, not one process's


def test_api_refuses_strangers_and_a_double_posted_review_is_one_outcome(
    service: Service,
) -> None:
    queue = httpx.get(f"{service.url}/api/review-queue", auth=_basic(), timeout=10).json()
    target = queue[-1]["event_id"]
    body = {"event_id": target, "defective": False, "outcome_id": f"api-{target}"}
    assert httpx.get(f"{service.url}/api/summary").status_code == 401
    wrong = httpx.BasicAuth(OPERATOR, "not-the-password")
    assert httpx.post(f"{service.url}/api/reviews", json=body, auth=wrong).status_code == 401
    other = httpx.post(f"{service.url}/api/reviews", json={**body, "reviewer": "x"}, auth=_basic())
    assert other.status_code == 400 and "signed-in account" in other.text
    unknown = httpx.post(
        f"{service.url}/api/reviews", json={**body, "event_id": "nope"}, auth=_basic()
    )
    assert unknown.status_code == 404
    for _ in range(2):  # a double click
        answer = httpx.post(f"{service.url}/api/reviews", json=body, auth=_basic(), timeout=20)
        assert answer.status_code == 202, answer.text
        assert answer.json()["next"] != target
    engine = service.engine()
    try:

        def stored() -> list[tuple[str, str, bool]]:
            with engine.connect() as conn:
                return [
                    tuple(r)
                    for r in conn.execute(
                        sa.select(
                            review_outcome_history.c.outcome_id,
                            review_outcome_history.c.reviewer,
                            review_outcome_history.c.defective,
                        ).where(review_outcome_history.c.event_id == target)
                    )
                ]

        wait_until(lambda: bool(stored()), 60, "the API's review outcome in PostgreSQL")
        time.sleep(2)  # the second copy would have landed by now
        assert stored() == [(f"api-{target}", OPERATOR, False)]
    finally:
        engine.dispose()
    still = httpx.get(f"{service.url}/api/review-queue", auth=_basic()).json()
    assert target not in {b["event_id"] for b in still}


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_operator_signs_in_and_decides_two_boards_with_the_keyboard(service: Service) -> None:
    from playwright.sync_api import sync_playwright

    decided: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.goto(f"{service.url}/queue")
            assert "/login" in page.url  # no session: the sign-in page
            page.fill("input[name=name]", OPERATOR)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("#queue tbody tr[data-event-id]")
            assert page.text_content("#signed-in-as") == OPERATOR
            page.keyboard.press("Enter")  # the oldest board
            page.wait_for_selector("#decide")
            decided.append(page.url.rsplit("/", 1)[1])
            page.keyboard.press("g")  # good
            page.wait_for_url(lambda url: decided[0] not in url)
            page.wait_for_selector("#decide")
            decided.append(page.url.rsplit("/", 1)[1])
            if not page.is_checked("input[name=types][value=open]"):
                page.keyboard.press("1")
            page.keyboard.press("d")  # defective, with the types checked
            page.wait_for_url(lambda url: decided[1] not in url)
        finally:
            browser.close()
    engine = service.engine()
    try:

        def outcomes() -> dict[str, tuple[bool, list[str], str, int]]:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(
                        review_outcomes.c.event_id,
                        review_outcomes.c.defective,
                        review_outcomes.c.defect_types,
                        review_outcomes.c.reviewer,
                        review_outcomes.c.n_outcomes,
                    ).where(review_outcomes.c.event_id.in_(decided))
                )
                return {e: (d, t, r, n) for e, d, t, r, n in rows}

        wait_until(lambda: len(outcomes()) == 2, 60, "both decisions in PostgreSQL")
        found = outcomes()
        assert found[decided[0]] == (False, [], OPERATOR, 1)
        defective, types, reviewer, n = found[decided[1]]
        assert defective and "open" in types and reviewer == OPERATOR and n == 1
    finally:
        engine.dispose()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_an_anomaly_boards_page_shows_its_map_and_untyped_regions(service: Service) -> None:
    """An anomaly product's verdict as a worker stores it (anomaly map as the explanation,
    regions without a defect type): the operator sees the map and "anomaly" regions."""
    import cv2
    import numpy as np
    from playwright.sync_api import sync_playwright

    from infra.object_store import ObjectStore
    from schemas.events import Box, RegionVerdict
    from tests.helpers import make_verdict
    from workers.audit_sink import AuditStore

    running = load_settings(service.folder / ".linecheck" / "service" / "running.toml")
    store = ObjectStore(service.folder / ".linecheck" / "objects")  # its paths are relative
    tile = np.full((120, 160), 128, np.uint8)
    image_uri = store.put(cv2.imencode(".png", tile)[1].tobytes(), "image/png")
    heat = store.root / "explanations" / "tile-1.jpg"
    heat.parent.mkdir(parents=True, exist_ok=True)
    heat.write_bytes(cv2.imencode(".jpg", cv2.applyColorMap(tile, cv2.COLORMAP_JET))[1].tobytes())
    region = RegionVerdict(box=Box(x1=40, y1=30, x2=70, y2=60), defect_type=None, score=0.8,
                           type_score=0.8)  # fmt: skip
    verdict = make_verdict(
        "tile-1", "review", product="TILE-5", roi_method="anomaly", regions=[region],
        board_score=0.8, image_uri=image_uri, explanation_uri=heat.as_uri(),
    )  # fmt: skip
    audit = AuditStore(running.postgres.url.get_secret_value())
    try:
        assert audit.record(verdict)
    finally:
        audit.close()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.goto(f"{service.url}/login?next=/boards/tile-1")
            page.fill("input[name=name]", OPERATOR)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("#regions")
            assert page.text_content("#regions tbody tr td:nth-child(3)") == "anomaly"
            assert "Anomaly map" in page.content()
            page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0")
            assert page.eval_on_selector("#heatmap", "img => img.naturalWidth") == 160
        finally:
            browser.close()


def test_a_killed_worker_is_restarted_and_counted(service: Service) -> None:
    children = service.folder / ".linecheck" / "service" / "children.json"
    pid = json.loads(children.read_text())["worker-1"]["pid"]
    os.kill(pid, signal.SIGKILL)

    def restarted() -> bool:
        now = json.loads(children.read_text())["worker-1"]
        return bool(now["restarts"] == 1 and now["pid"] != pid)

    wait_until(restarted, 60, "worker-1 restarted by the supervisor")
    wait_until(
        lambda: (
            'linecheck_restarts_total{process="worker-1"} 1.0'
            in httpx.get(f"{service.url}/metrics").text
        ),
        10,
        "the restart counted in /metrics",
    )
    assert "worker-1 exited with code -9" in service.log_tail()


def test_watch_feeds_the_running_service_from_a_folder(service: Service) -> None:
    from board_data.synthetic import BoardGenerator
    from infra.images import encode_png

    inbox, out = service.folder / "aoi-drop", service.folder / "sorted"
    inbox.mkdir()
    boards = BoardGenerator(seed=11)
    for i in range(5):
        (inbox / f"W{i:03d}.png").write_bytes(encode_png(boards.board(i).image))
    # an operator registers the product the folder's machine inspects, then starts the watch
    service.linecheck("products", "set", "P9", "--mode", "reference", "--by", "qa")
    args = ["watch", str(inbox), "--line", "L9", "--machine", "aoi-9", "--product", "P9"]
    service.linecheck(*args, "--once", "--sort", str(out), "--settle-s", "0.2", timeout=240)
    rows = (out / "verdicts.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[1] for r in rows) == [f"W{i:03d}.png" for i in range(5)]
    assert sorted(p.name for p in (inbox / ".published").iterdir()) == [
        f"W{i:03d}.png" for i in range(5)
    ]
    engine = service.engine()
    try:
        with engine.connect() as conn:
            line_rows = conn.execute(
                sa.select(sa.func.count()).select_from(verdicts).where(verdicts.c.line == "L9")
            ).scalar_one()
    finally:
        engine.dispose()
    assert line_rows == 5


def test_sigterm_exits_zero_and_the_data_is_there_after_up_again(service: Service) -> None:
    engine = service.engine()
    try:
        with engine.connect() as conn:
            before = conn.execute(sa.select(sa.func.count()).select_from(verdicts)).scalar_one()
            of_tiles = sa.select(sa.func.count()).where(verdicts.c.product == "TILE-5")
            tiles = conn.execute(of_tiles).scalar_one()
            outcomes = conn.execute(
                sa.select(sa.func.count()).select_from(review_outcome_history)
            ).scalar_one()
    finally:
        engine.dispose()
    # the simulated boards and the folder's, plus the anomaly board's stored verdict where
    # the browser test that stores it ran (it skips without chromium)
    assert tiles == int(CHROMIUM.exists())
    assert before == BOARDS + 5 + tiles and outcomes >= 1
    assert service.stop() == 0, service.log_tail()
    assert not (service.folder / ".linecheck" / "service" / "running.json").exists()
    service.start()
    engine = service.engine()
    try:
        with engine.connect() as conn:
            assert (
                conn.execute(sa.select(sa.func.count()).select_from(verdicts)).scalar_one()
                == before
            )
            assert (
                conn.execute(
                    sa.select(sa.func.count()).select_from(review_outcome_history)
                ).scalar_one()
                == outcomes
            )
    finally:
        engine.dispose()
    # the account survived too, and the API takes it at once
    assert httpx.get(f"{service.url}/api/summary", auth=_basic()).status_code == 200
    assert service.stop() == 0, service.log_tail()
