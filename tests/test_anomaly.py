"""Anomaly mode end to end on a tiny synthetic class-folder set: train through the CLI,
score held-out images with the served model (OpenVINO), evaluate through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from board_data.class_folders import class_images, is_class_folder_set, split_anomaly_set
from training.anomaly_evaluation import auroc

GOOD, N_GOOD, N_BAD = "ok", 28, 8


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Vertical streaks and fine noise, like a ground surface; brightness varies a little."""
    cols = cv2.GaussianBlur(rng.normal(0, 14, (1, w)).astype(np.float32), (0, 0), 1.5)
    img = 110 + rng.normal(0, 8) + np.repeat(cols, h, axis=0) + rng.normal(0, 4, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_set(root: Path) -> None:
    rng = np.random.default_rng(7)
    for cls, count in ((GOOD, N_GOOD), ("spot", N_BAD // 2), ("scratch", N_BAD // 2)):
        (root / cls).mkdir(parents=True)
        for k in range(count):
            h, w = int(rng.integers(64, 97)), int(rng.integers(64, 129))
            img = _texture(rng, h, w)
            mask = np.zeros((h, w), np.uint8)
            cx, cy = int(rng.integers(20, w - 20)), int(rng.integers(20, h - 20))
            if cls == "spot":
                cv2.circle(mask, (cx, cy), 7, 255, -1)
                img[mask > 0] = 230
            elif cls == "scratch":
                cv2.line(mask, (cx - 12, cy - 8), (cx + 12, cy + 8), 255, 4)
                img[mask > 0] = 20
            cv2.imwrite(str(root / cls / f"img_{k:03d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 98])
            cv2.imwrite(str(root / cls / f"img_{k:03d}.png"), mask)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(data folder, model folder, CLI environment): one model trained through the CLI."""
    from linecheck.cli import app

    root = tmp_path_factory.mktemp("anomaly")
    data = root / "data"
    _write_set(data)
    env = {
        "LINECHECK_MODEL__MODELS_DIR": str(root / "models"),
        "LINECHECK_WORK_DIR": str(root / "work"),
    }
    done = CliRunner().invoke(
        app,
        ["train", "--data", str(data), "--task", "anomaly", "--good-class", GOOD,
         "--version", "anom-test", "--threads", "2"],
        env=env,
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    model_dir = Path(done.stdout.strip().splitlines()[-1])
    assert model_dir == root / "models" / "anom-test"
    return data, model_dir, env


def test_class_folder_split_is_seeded_and_keeps_defects_out_of_training(
    tmp_path: Path,
) -> None:
    _write_set(tmp_path)
    items = class_images(tmp_path)
    assert is_class_folder_set(tmp_path) and len(items) == N_GOOD + N_BAD
    assert all(i.mask is not None and i.path.suffix == ".jpg" for i in items)
    a = split_anomaly_set(items, GOOD, seed=3)
    b = split_anomaly_set(list(reversed(items)), GOOD, seed=3)
    assert a == b
    assert {i.cls for i in a["train"]} == {GOOD}
    assert {i.cls for i in a["test"]} == {GOOD, "spot", "scratch"}
    names = [i.path for part in a.values() for i in part]
    assert len(names) == len(set(names)) == len(items)
    with pytest.raises(ValueError, match="good class 'nope'"):
        split_anomaly_set(items, "nope")


def test_model_folder_and_card(trained: tuple[Path, Path, dict[str, str]]) -> None:
    from inspection.anomaly import BANK_FILE, FEATURES_XML, PARAMS_FILE, load_params
    from inspection.model.registry import load_card

    _, model_dir, _ = trained
    card = load_card(model_dir)
    assert card.mode == "anomaly" and card.arch == "efficientnet_lite0"
    assert card.classes == ("good", "anomalous")
    th = card.require_thresholds()
    assert 0.0 <= th.pass_below <= th.fail_at_or_above <= 1.0
    for name in (FEATURES_XML, BANK_FILE, PARAMS_FILE, "split.json"):
        assert (model_dir / name).is_file()
    params = load_params(model_dir)
    assert 0.0 < params.pixel_threshold <= th.pass_below
    from training.anomaly_model import DEFAULT_VIEWS

    assert len(params.views) == len(DEFAULT_VIEWS) and params.views[0].bank == BANK_FILE
    assert len({v.bank for v in params.views}) == len(params.views)  # one bank file each
    for view in params.views:
        assert np.load(model_dir / view.bank).shape[1] == params.feature_dim
        assert 0.0 <= view.floor < view.image_ref  # fitted on the calibration good images


def test_the_map_is_the_maximum_of_the_views_and_each_view_counts(
    trained: tuple[Path, Path, dict[str, str]],
) -> None:
    """The served map is the pixel-wise maximum of the views' normalised maps, and no view is
    idle: on the held-out images each one is the highest somewhere."""
    from inspection.anomaly import AnomalyDetector, normalise

    data, model_dir, _ = trained
    detector = AnomalyDetector(model_dir, threads=2)
    views = detector.params.views
    wins = np.zeros(len(views), int)
    for item in split_anomaly_set(class_images(data), GOOD, seed=0)["test"]:
        image = item.load()
        per_view = np.stack([
            normalise(detector.scorer.raw(image, k), v.image_ref, v.floor)
            for k, v in enumerate(views)
        ])  # fmt: skip
        amap = detector.score(image).amap
        np.testing.assert_allclose(amap, per_view.max(0), atol=1e-6)
        wins += np.bincount(per_view.argmax(0).ravel(), minlength=len(views)) > 0
    assert (wins > 0).all(), f"views never highest: {wins}"


def test_views_show_the_image_their_way() -> None:
    from inspection.anomaly import AnomalyView, model_input

    rng = np.random.default_rng(0)
    image = rng.integers(40, 90, (200, 500), dtype=np.uint8)  # dark, 2.5 : 1
    square = model_input(image, AnomalyView(size=96))
    assert square.shape == (1, 1, 96, 96)
    kept = model_input(image, AnomalyView(size=96, keep_aspect=True))
    h, w = kept.shape[2:]
    assert h % 16 == 0 and w % 16 == 0 and w / h == pytest.approx(2.5, rel=0.15)
    assert h * w == pytest.approx(96 * 96, rel=0.15)
    scaled = model_input(image, AnomalyView(scale=0.5))
    assert scaled.shape == (1, 1, 96, 256)  # 100 × 250 to multiples of 16
    assert kept.mean() < 70  # grey levels as they were
    std = model_input(image, AnomalyView(size=96, keep_aspect=True, standardise=True))
    assert std.mean() == pytest.approx(128, abs=2) and std.std() == pytest.approx(40, abs=2)


def test_views_are_written_size_aspect_standardise(tmp_path: Path) -> None:
    from inspection.anomaly import AnomalyView
    from linecheck.cli import app

    assert AnomalyView.parse("96as") == AnomalyView(size=96, keep_aspect=True, standardise=True)
    assert AnomalyView.parse(" 256") == AnomalyView(size=256)
    assert AnomalyView.parse("128s") == AnomalyView(size=128, standardise=True)
    for bad in ("", "a96", "96x", "96aa", "16"):
        with pytest.raises(ValueError, match="SIZE"):
            AnomalyView.parse(bad)
    _write_set(tmp_path / "d")
    done = CliRunner().invoke(
        app,
        ["train", "--data", str(tmp_path / "d"), "--task", "anomaly", "--good-class", GOOD,
         "--views", "96as,huge"],
        env={"LINECHECK_MODEL__MODELS_DIR": str(tmp_path / "m")},
    )  # fmt: skip
    assert done.exit_code == 2 and "--views" in done.output and "'huge'" in done.output
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_models_of_one_view_load_as_before() -> None:
    """anomaly.json written before views existed (one view's fields at the top level)."""
    from inspection.anomaly import BANK_FILE, AnomalyParams

    old = {
        "scale": 1.0, "input_size": 96, "blur_sigma": 4.0, "floor": 0.5, "image_ref": 2.0,
        "pixel_threshold": 0.3, "min_region_px": 16, "layers": [4, 10], "feature_dim": 152,
    }  # fmt: skip
    params = AnomalyParams.model_validate(old)
    (view,) = params.views
    assert (view.size, view.keep_aspect, view.standardise) == (96, False, False)
    assert (view.floor, view.image_ref, view.bank) == (0.5, 2.0, BANK_FILE)
    with pytest.raises(ValueError, match="views"):
        AnomalyParams.model_validate({**old, "views": []})


def test_the_patch_averages_its_pool_of_neighbours() -> None:
    import torch

    from training.anomaly_model import patch_feature_net

    x = torch.from_numpy(_texture(np.random.default_rng(3), 64, 96)[None, None].astype(np.float32))
    with torch.no_grad():
        single, three, five = (patch_feature_net(pool=k)(x) for k in (1, 3, 5))
    assert single.shape == three.shape == five.shape == (1, 152, 8, 12)  # stride 8, 40 + 112 ch
    # the stride-8 block's 40 channels: 3 x 3 is its 1 x 1 features averaged (away from the
    # edge, where fewer neighbours count; the stride-16 block is averaged before upsampling)
    smoothed = torch.nn.functional.avg_pool2d(single[:, :40], 3, stride=1, padding=1)
    assert torch.allclose(three[:, :40, 1:-1, 1:-1], smoothed[..., 1:-1, 1:-1], atol=1e-5)
    assert five.std() < three.std() < single.std()  # wider pools, smoother features
    with pytest.raises(ValueError, match="odd size"):
        patch_feature_net(pool=4)


def test_held_out_images_scores_maps_and_regions(
    trained: tuple[Path, Path, dict[str, str]],
) -> None:
    from inspection.anomaly import AnomalyDetector, overlay

    data, model_dir, _ = trained
    detector = AnomalyDetector(model_dir, threads=2)
    test = split_anomaly_set(class_images(data), GOOD, seed=0)["test"]
    scores, defective = [], []
    for item in test:
        image = item.load()
        result = detector.score(image)
        assert result.amap.shape == image.shape and result.amap.dtype == np.float32
        assert result.amap.min() >= 0.0 and result.amap.max() <= 1.0
        assert result.score == pytest.approx(float(result.amap.max()))
        assert len(result.regions) == len(result.region_scores)
        scores.append(result.score)
        defective.append(item.cls != GOOD)
        if item.cls != GOOD:
            mask = item.load_mask(image.shape)
            assert mask is not None
            near = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
            peak = np.unravel_index(int(np.argmax(result.amap)), image.shape)
            assert near[peak], f"{item.path}: map peaks at {peak}, outside the defect"
            assert result.regions, f"{item.path}: no region"
            top = result.regions[0]
            assert mask[top.y1 : top.y2, top.x1 : top.x2].any()
            picture = overlay(image, result.amap)
            assert picture.shape == (*image.shape, 3) and picture.dtype == np.uint8
    value = auroc(np.asarray(scores), np.asarray(defective))
    assert value is not None and value >= 0.95


def test_too_small_or_wrong_images_are_refused(
    trained: tuple[Path, Path, dict[str, str]],
) -> None:
    from inspection.anomaly import AnomalyDetector

    detector = AnomalyDetector(trained[1], threads=1)
    with pytest.raises(ValueError, match="too small"):
        detector.score(np.zeros((20, 200), np.uint8))
    with pytest.raises(ValueError, match="2-D grayscale"):
        detector.score(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        detector.score(np.zeros((64, 64), np.float32))


def test_evaluate_writes_metrics_and_scores(
    trained: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    from linecheck.cli import app

    data, model_dir, env = trained
    out = tmp_path / "eval"
    done = CliRunner().invoke(
        app,
        ["evaluate", "--data", str(data), "--out", str(out), "--model", model_dir.name,
         "--held-out", "--draw", "2"],
        env=env,
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "per_class", "board_fnr", "board_fpr",
                "images_per_s"):  # fmt: skip
        assert key in metrics
    assert metrics["image_auroc"] >= 0.95 and metrics["pixel_auroc"] >= 0.9
    assert set(metrics["per_class"]) == {GOOD, "spot", "scratch"}
    assert all(r["detection_rate"] is not None for r in metrics["per_class"].values())
    with (out / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["images"]
    assert all((data / r["path"]).is_file() for r in rows)
    recomputed = auroc(np.array([float(r["score"]) for r in rows]),
                       np.array([r["label"] == "1" for r in rows]))  # fmt: skip
    assert recomputed == pytest.approx(metrics["image_auroc"], abs=1e-6)
    assert len(list((out / "maps").glob("*.jpg"))) == 2
    assert json.loads(done.stdout.strip().splitlines()[-1])["image_auroc"] == pytest.approx(
        metrics["image_auroc"]
    )


def test_train_anomaly_needs_a_good_class(tmp_path: Path) -> None:
    from linecheck.cli import app

    _write_set(tmp_path / "d")
    env = {"LINECHECK_MODEL__MODELS_DIR": str(tmp_path / "m")}
    done = CliRunner().invoke(
        app, ["train", "--data", str(tmp_path / "d"), "--task", "anomaly"], env=env
    )
    assert done.exit_code == 2 and "--good-class" in done.output
    bad = CliRunner().invoke(
        app,
        ["train", "--data", str(tmp_path / "d"), "--task", "anomaly", "--good-class", "x"],
        env=env,
    )
    assert bad.exit_code == 2 and "good class 'x'" in bad.output


MAGNETIC_TILE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "magnetic-tile"


@pytest.mark.skipif(not MAGNETIC_TILE.is_dir(), reason=f"no magnetic-tile data at {MAGNETIC_TILE}")
def test_magnetic_tile_layout_and_split() -> None:
    items = class_images(MAGNETIC_TILE)
    assert is_class_folder_set(MAGNETIC_TILE)
    assert {i.cls for i in items} >= {"MT_Free", "MT_Blowhole", "MT_Crack", "MT_Uneven"}
    assert all(i.mask is not None for i in items)  # every image has its .png mask
    parts = split_anomaly_set(items, "MT_Free", seed=0)
    assert {i.cls for i in parts["train"]} == {"MT_Free"}
    n_good = sum(i.cls == "MT_Free" for i in items)
    assert len(parts["train"]) == n_good - round(0.25 * n_good) - round(0.15 * n_good)
