"""The README's main command, end to end on the embedded servers, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _demo_env(model_dir: Path, tmp_path: Path) -> dict[str, str]:
    """The demo on its own folders, with the session's registered test model."""
    return {
        **os.environ,
        "LINECHECK_MODEL__MODELS_DIR": str(model_dir.parent),
        "LINECHECK_MODEL__VERSION": model_dir.name,
        "LINECHECK_WORK_DIR": str(tmp_path / "work"),
        "LINECHECK_IMAGES__OBJECT_STORE": str(tmp_path / "objects"),
    }


def test_demo_json_reports_one_verdict_and_one_audit_row_per_board(
    model_dir: Path, tmp_path: Path
) -> None:
    env = _demo_env(model_dir, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "linecheck", "demo", "--boards", "12", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["published"] == summary["verdicts"] == summary["audit_rows"] == 12
    assert summary["deadletter"] == 0
    assert summary["boards_per_s"] > 0
    assert 0.0 <= summary["review_rate"] <= 1.0
    assert sum(summary["counts"].values()) == 12
    for key in ("fnr", "fpr"):
        assert summary[key] is None or 0.0 <= summary[key] <= 1.0
    assert summary["alerts"] == 0 and summary["drift_from_board"] is None
    # Every process the demo started is gone (workers, broker, Redis, PostgreSQL on its folders).
    assert _processes_mentioning(str(tmp_path)) == []


def test_demo_swap_promotes_a_candidate_half_way_and_no_verdict_is_lost_or_doubled(
    model_dir: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "linecheck", "demo", "--boards", "24", "--swap-at", "12",
         "--json"],
        env=_demo_env(model_dir, tmp_path),
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["published"] == summary["verdicts"] == summary["audit_rows"] == 24
    assert summary["verdict_messages"] == 24 and summary["deadletter"] == 0
    # the first half decided by the model the line started with, the rest by the candidate
    assert summary["model_versions"] == {model_dir.name: 12, f"{model_dir.name}-candidate": 12}
    assert not (model_dir.parent / f"{model_dir.name}-candidate").exists()  # line's own intact


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or text in environ:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_demo_drift_raises_an_alert_after_the_change_and_none_before_and_report_plots_it(
    model_dir: Path, tmp_path: Path
) -> None:
    env = {
        **_demo_env(model_dir, tmp_path),
        # smaller windows than the defaults, so that 240 boards are enough
        "LINECHECK_QUALITY__REFERENCE_BOARDS": "80",
        "LINECHECK_QUALITY__WINDOW_BOARDS": "60",
        "LINECHECK_QUALITY__CHECK_EVERY": "5",
        "LINECHECK_QUALITY__AUDIT_RATE": "0.2",
    }
    done = subprocess.run(
        [sys.executable, "-m", "linecheck", "demo", "--boards", "240", "--drift", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["published"] == summary["audit_rows"] == 240
    assert summary["drift_from_board"] == 120
    assert summary["alerts"] >= 1, summary
    assert summary["alert_messages"] == summary["alerts"]  # on boards.alerts, and in the table
    assert summary["alerts_before_drift"] == 0
    assert summary["first_alert_board"] >= 120
    assert "candidates_psi" in summary["alert_metrics"]
    assert summary["outcomes"] > 0

    out = tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-m", "linecheck", "report", "--embedded", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    page = out.read_text()
    assert page.count("src='data:image/png;base64,") == 6  # the plots, not only tables
    for text in (
        "Error rates",
        "FNR (escape rate)",
        "Defects and score drift",
        "candidates_psi",
        "Wilson",
    ):
        assert text in page
    assert _processes_mentioning(str(tmp_path)) == []


def test_mixed_line_demo_inspects_each_product_its_own_way(model_dir: Path, tmp_path: Path) -> None:
    """Boards with templates, boards without and part surfaces on one line: each product is
    registered for its mode, decided by its own model, and reported with its own rates."""
    from inspection.model.registry import clone_model

    models = tmp_path / "models"  # the locator and anomaly models are trained into it
    clone_model(model_dir, model_dir.name, models)
    env = {**_demo_env(model_dir, tmp_path), "LINECHECK_MODEL__MODELS_DIR": str(models)}
    done = subprocess.run(
        [sys.executable, "-m", "linecheck", "demo", "--mixed", "--boards", "16", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["published"] == summary["verdicts"] == summary["audit_rows"] == 16
    assert summary["deadletter"] == 0
    products = summary["products"]
    by_mode: dict[str, int] = {}
    for name, p in products.items():
        by_mode[p["mode"]] = by_mode.get(p["mode"], 0) + p["boards"]
        expected = {"reference": "reference", "locator": "locator", "anomaly": "anomaly"}
        # every board of the product went down its mode's path, none fell back to the recipe
        assert p["roi_methods"] == {expected[p["mode"]]: p["boards"]}, name
        assert sum(p["counts"].values()) == p["boards"]
    assert by_mode == {"reference": 8, "locator": 4, "anomaly": 4}
    tiles = [p for p in products.values() if p["mode"] == "anomaly"]
    # the tiles' anomaly model separates its calibration tiles perfectly: no defective tile
    # of the line passes
    assert len(tiles) == 1 and tiles[0]["defective"] >= 1 and tiles[0]["fnr"] == 0.0
    assert (models / "mixed-locator-v1" / "locator.xml").is_file()
    assert _processes_mentioning(str(tmp_path)) == []
