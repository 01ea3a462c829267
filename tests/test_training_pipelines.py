"""Training, calibration and evaluation on real-layout data (a tiny DeepPCB-layout folder of
synthetic boards, a tiny folder of class-labelled images); DeepPCB itself where present."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from board_data.deeppcb import read_detections, write_annotations
from board_data.image_folder import labelled_images
from board_data.scan import simulate_good_board
from board_data.synthetic import BoardGenerator
from inspection.backends import load_classifier
from inspection.crops import make_crops
from inspection.model.registry import Thresholds, load_card
from inspection.roi import find_regions_aligned, find_regions_reference
from schemas.events import Box
from training.calibration import calibrate_model
from training.crop_table import CANDIDATE, GOOD, TRUTH, build_table, jitter_box
from training.deeppcb_model import train_deeppcb
from training.image_folder_model import stratified_split, train_image_folder
from training.scoring import board_rates
from training.splits import eval_samples, is_deeppcb, samples_of, split_deeppcb

from .conftest import DEEPPCB

QUIET = Console(quiet=True)


def _deeppcb_folder(root: Path, groups: dict[str, int]) -> Path:
    gen = BoardGenerator(seed=7, n_designs=2, size=256, defect_rate=1.0)
    i = 0
    lines = []
    for group, n in groups.items():
        folder, notes = root / f"group{group}" / group, root / f"group{group}" / f"{group}_not"
        folder.mkdir(parents=True)
        notes.mkdir(parents=True)
        for k in range(n):
            board = gen.board(i)
            i += 1
            stem = f"{group}{k:03d}"
            cv2.imwrite(str(folder / f"{stem}_test.jpg"), board.image)
            cv2.imwrite(str(folder / f"{stem}_temp.jpg"), board.template)
            write_annotations(notes / f"{stem}.txt", board.defects)
            lines.append(f"group{group}/{group}/{stem}.jpg group{group}/{group}_not/{stem}.txt")
    (root / "trainval.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_deeppcb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _deeppcb_folder(tmp_path_factory.mktemp("deeppcb"), {"11000": 8, "22000": 4})


def test_good_board_simulation_moves_the_template_a_little() -> None:
    template = BoardGenerator(seed=1, n_designs=1, size=256).template("syn1-d0")
    rng = np.random.default_rng(0)
    good = simulate_good_board(np.array(template), rng)
    assert good.shape == template.shape and good.dtype == np.uint8
    assert 0 < (np.abs(good.astype(int) - template) > 127).mean() < 0.1  # moved, same design
    # the ROI stage sees (almost) nothing on a good board
    assert len(find_regions_reference(good, np.array(template))) <= 2
    box = jitter_box(Box(x1=10, y1=10, x2=50, y2=40), rng, (64, 64), 0.15)
    assert 0 <= box.x1 < box.x2 <= 64 and 0 <= box.y1 < box.y2 <= 64


def test_crop_table_rows_and_cache(tiny_deeppcb: Path, tmp_path: Path) -> None:
    samples = samples_of(tiny_deeppcb)
    table = build_table(tiny_deeppcb, samples, cache_dir=tmp_path)
    n_truths = sum(len(s.truths) for s in samples)
    assert (table.kinds == TRUTH).sum() == n_truths
    assert table.crops.shape[1:] == (3, 64, 64) and len(table.labels) == len(table.kinds)
    assert (table.labels[table.kinds == GOOD] == 0).all()
    cand = table.kinds == CANDIDATE
    assert (table.labels[cand] > 0).mean() > 0.7  # most candidates are real defects
    again = build_table(tiny_deeppcb, samples, cache_dir=tmp_path)  # from the cache
    assert len(list(tmp_path.glob("*.npz"))) == 1
    np.testing.assert_array_equal(again.crops, table.crops)
    # another smallest square is another table, cached apart, cut as serving cuts it
    wide = build_table(tiny_deeppcb, samples, cache_dir=tmp_path, min_side=64)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    assert not np.array_equal(wide.crops, table.crops)
    image, template = samples[0].load()
    _, aligned = find_regions_aligned(image, template)
    boxes = [t.box for t in samples[0].truths]
    for t, side in ((table, 0), (wide, 64)):
        truths = t.select((t.pairs == 0) & (t.kinds == TRUTH))
        served = make_crops(image, aligned, boxes, aligned=True, min_side=side)
        np.testing.assert_array_equal(truths.crops, served)
    with pytest.raises(ValueError, match="empty split"):  # the default groups are not here
        split_deeppcb(samples, tiny_deeppcb, None)


def test_split_holds_out_whole_groups(tiny_deeppcb: Path, tmp_path: Path) -> None:
    samples = samples_of(tiny_deeppcb)
    split = tmp_path / "val.txt"
    split.write_text("group22000/22000/22000001.jpg group22000/22000_not/22000001.txt\n")
    train, val = split_deeppcb(samples, tiny_deeppcb, split)
    assert [s.image_id for s in val] == ["22000001"]
    assert {s.group for s in train} == {"group11000"}  # the whole group is held out
    assert is_deeppcb(tiny_deeppcb) and not is_deeppcb(tmp_path)
    # evaluate/calibrate without a split file use the model's validation groups
    assert {s.group for s in eval_samples(tiny_deeppcb, None, ["group22000"])} == {"group22000"}
    assert [s.image_id for s in eval_samples(tiny_deeppcb, split, ["group11000"])] == ["22000001"]


def test_board_rates() -> None:
    th = Thresholds(pass_below=0.2, fail_at_or_above=0.8, threshold_version="t", target_fnr=0.0)
    scores = np.array([0.1, 0.5, 0.9, 0.95, 0.1, 0.85])
    defective = np.array([True, True, True, True, False, False])
    r = board_rates(scores, defective, th)
    assert r["board_fnr"] == pytest.approx(0.25) and r["board_fpr"] == pytest.approx(0.5)
    assert r["review_rate"] == pytest.approx(1 / 6)


def test_rates_without_boards_to_count_are_undefined_not_zero_or_one() -> None:
    from board_data.deeppcb import DeepPcbSample
    from training.scoring import PairResult, board_arrays

    th = Thresholds(pass_below=0.2, fail_at_or_above=0.8, threshold_version="t", target_fnr=0.0)
    clean = DeepPcbSample("0001", "g1", Path("t.jpg"), Path("r.jpg"), truths=())
    empty = np.zeros((0, 7), np.float32)
    results = [PairResult(clean, [], empty, [], empty, 0.0)]
    scores, defective = board_arrays(results)
    assert defective.tolist() == [False, False]  # a board without annotated defects is good
    rates = board_rates(scores, defective, th)
    assert rates["board_fnr"] is None and rates["board_fpr"] == 0.0
    assert board_rates(np.array([0.9]), np.array([True]), th)["board_fpr"] is None


def test_train_calibrate_evaluate_on_deeppcb_layout(tiny_deeppcb: Path, tmp_path: Path) -> None:
    split = tmp_path / "val.txt"
    split.write_text(
        "".join(
            f"group22000/22000/22000{k:03d}.jpg group22000/22000_not/22000{k:03d}.txt\n"
            for k in range(4)
        )
    )
    models = tmp_path / "models"
    model_dir = train_deeppcb(
        models,
        tiny_deeppcb,
        split,
        epochs=2,
        threads=2,
        version="tiny",
        cache_dir=None,
        console=QUIET,
    )  # the recipe: a network per crop view (0 and 64 px), their mean calibrated
    card = load_card(model_dir)
    assert card.thresholds is not None and card.thresholds.target_fnr == 0.001
    assert card.views == (0, 64)  # serving (and evaluate below) cut crops as training did
    assert load_classifier(model_dir).crop_sides == (0, 64)
    assert card.metrics["val_groups"] == ["group22000"]
    assert set(card.metrics["views"]) == {"view0", "view64"}
    assert {"val", "val_int8"} <= set(card.metrics)  # the INT8 model of views was scored
    for side in (0, 64):
        member = load_card(model_dir / f"view{side}")
        assert member.crop_min_side == side and (model_dir / f"view{side}/model_int8.xml").is_file()
        prior = member.topology()  # log p(signature | class), counted on the training crops
        assert prior is not None and prior.shape == (9, 7)
        np.testing.assert_allclose(np.exp(prior).sum(0), 1.0, rtol=1e-5)
    assert {"f_score", "map", "board_fnr", "review_rate"} <= set(card.metrics["val"])

    th, rates = calibrate_model(model_dir, tiny_deeppcb, split, target_fnr=0.0, console=QUIET)
    assert rates["board_fnr"] == 0.0  # the target holds on the calibration data
    assert load_card(model_dir).thresholds == th

    out = tmp_path / "eval"
    from linecheck.cli import app

    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--data",
            str(tiny_deeppcb),
            "--split",
            str(split),
            "--out",
            str(out),
            "--draw",
            "1",
        ],
        env={"LINECHECK_MODEL__MODELS_DIR": str(models)},
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "precision",
        "recall",
        "f_score",
        "map",
        "roi_recall",
        "candidates_per_board",
        "board_fnr",
        "board_fpr",
        "review_rate",
        "per_class",
        "images_per_s",
    ):
        assert key in metrics
    assert metrics["variant"] == "fp32" and metrics["boards"] == 4
    assert sorted(p.name for p in (out / "detections").iterdir()) == [
        f"22000{k:03d}.txt" for k in range(4)
    ]
    for p in (out / "detections").iterdir():
        read_detections(p)  # well-formed
    # a split file listing every pair: evaluating needs no training pairs
    everything = CliRunner().invoke(
        app,
        ["evaluate", "--data", str(tiny_deeppcb), "--split", str(tiny_deeppcb / "trainval.txt"),
         "--out", str(tmp_path / "eval-all")],
        env={"LINECHECK_MODEL__MODELS_DIR": str(models)},
    )  # fmt: skip
    assert everything.exit_code == 0, everything.output
    assert json.loads((tmp_path / "eval-all" / "metrics.json").read_text())["boards"] == 12
    (line,) = [x for x in everything.stdout.splitlines() if x.startswith("{")]

    def no_nan(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    assert set(json.loads(line, parse_constant=no_nan)) >= {"f_score", "map", "board_fnr"}
    pictures = list((out / "boards").glob("*.png"))
    assert len(pictures) == 1
    picture = cv2.imread(str(pictures[0]))
    assert picture.shape[0] == 256 and picture.shape[1] > 256  # the board, then the zooms


def test_classify_folder_of_labelled_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(24):
        for name, axis in (("stripes", 0), ("rolled-in_scale", 1)):
            img = rng.integers(0, 60, (48, 48)).astype(np.uint8)
            img = np.ascontiguousarray(img if axis == 0 else img.T)
            if axis == 0:
                img[:24] += 150  # bright top half
            else:
                img[:, :24] += 150  # bright left half
            cv2.imwrite(str(folder / f"{name}_{k}.jpg"), img)
    (folder / "notes.txt").write_text("not an image")
    items = labelled_images(tmp_path)
    assert len(items) == 48 and {c for _, c in items} == {"stripes", "rolled-in_scale"}
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    tr, va = stratified_split(y, 0.2, 0)
    assert sorted(y[va].tolist()) == [0, 1] and len(tr) == 8
    model_dir = train_image_folder(
        tmp_path / "models",
        tmp_path,
        arch="small",
        epochs=6,
        batch_size=8,
        size=32,
        threads=2,
        version="cls",
        console=QUIET,
    )
    card = load_card(model_dir)
    assert card.classes == ("rolled-in_scale", "stripes") and card.input_size == 32
    assert card.metrics["held_out_accuracy_openvino"] >= 0.8
    # evaluate scores the same held-out images the trainer did, and every image on request
    from linecheck.cli import app

    (tmp_path / "models" / "classify").mkdir()
    model_dir.rename(tmp_path / "models" / "classify" / "cls")
    out = tmp_path / "eval-cls"
    held = CliRunner().invoke(
        app, ["evaluate", "--data", str(tmp_path), "--out", str(out), "--model", "cls",
              "--held-out"], env={"LINECHECK_MODEL__MODELS_DIR": str(tmp_path / "models")},
    )  # fmt: skip
    assert held.exit_code == 0, held.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 10  # 20 % of each class of 24
    assert metrics["accuracy"] == pytest.approx(card.metrics["held_out_accuracy_openvino"])
    assert sum(map(sum, metrics["confusion"])) == 10
    assert json.loads(held.stdout.strip().splitlines()[-1])["images"] == 10
    everything = CliRunner().invoke(
        app, ["evaluate", "--data", str(tmp_path), "--out", str(out / "all"), "--model", "cls"],
        env={"LINECHECK_MODEL__MODELS_DIR": str(tmp_path / "models")},
    )  # fmt: skip
    assert everything.exit_code == 0, everything.output
    rows = (out / "all" / "scores.csv").read_text().splitlines()
    assert len(rows) == 49 and rows[0].startswith("file,true,predicted,p_rolled-in_scale")


def test_real_deeppcb_roi_recall_on_one_group() -> None:
    if not DEEPPCB.is_dir():
        pytest.skip(reason=f"DeepPCB not found at {DEEPPCB}")
    from inspection.roi import find_regions_reference
    from training.detection_metrics import roi_recall

    samples = [s for s in samples_of(DEEPPCB) if s.group == "group50600"][:20]
    boxes, truths = [], []
    for s in samples:
        image, template = s.load()
        boxes.append(find_regions_reference(image, template))
        truths.append(s.truths)
    assert roi_recall(boxes, truths) >= 0.97


def test_a_boosted_tree_head_on_the_cnn_features_is_registered_and_served(
    tiny_deeppcb: Path, tmp_path: Path
) -> None:
    from inspection.backends import load_classifier
    from inspection.backends.gbdt_backend import FeatureExtractor, GbdtClassifier
    from inspection.model.topology import one_hot
    from training.gbdt_head import train_gbdt_head

    split = tmp_path / "val.txt"
    split.write_text(
        "".join(
            f"group22000/22000/22000{k:03d}.jpg group22000/22000_not/22000{k:03d}.txt\n"
            for k in range(4)
        )
    )
    cnn = train_deeppcb(tmp_path / "models", tiny_deeppcb, split, epochs=2, threads=2,
                        version="tiny-cnn", cache_dir=None, int8=False, views=(0,),
                        fragment=0.5, console=QUIET)  # fmt: skip
    assert load_card(cnn).metrics["augment_fragment"] == 0.5  # recorded with the recipe
    model_dir = train_gbdt_head(
        cnn, tiny_deeppcb, split, threads=2, rounds=30, cache_dir=None, console=QUIET
    )
    card = load_card(model_dir)
    assert model_dir.name == "tiny-cnn-gbdt" and card.head == "gbdt"
    assert card.thresholds is not None and card.metrics["base_cnn"] == "tiny-cnn"
    assert set(card.metrics["heads_val"]) == {"cnn", "gbdt"}
    classifier = load_classifier(model_dir)
    assert isinstance(classifier, GbdtClassifier) and classifier.version == "tiny-cnn-gbdt"
    crops = np.random.default_rng(1).integers(0, 255, (5, 3, 64, 64)).astype(np.uint8)
    probs = classifier.predict_proba(crops)
    assert probs.shape == (5, 7) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    # the CNN carries the topology prior, so the trees also see each crop's signature
    features = FeatureExtractor(model_dir).features(crops)
    np.testing.assert_array_equal(features[:, -9:], one_hot(crops))
    assert classifier.predict_proba(crops[:0]).shape == (0, 7)
    with pytest.raises(ValueError, match="OpenVINO FP32"):
        load_classifier(model_dir, backend="torch")
    assert load_card(cnn).head == "cnn"  # the CNN version is untouched


def test_leave_one_group_out_cross_validation_never_measures_on_a_choosing_group(
    tmp_path: Path,
) -> None:
    from training.cross_validation import cross_validate
    from training.deeppcb_model import AUGMENT_ZOOM

    data = _deeppcb_folder(tmp_path / "three", {"11000": 4, "22000": 4, "33000": 4})
    report = cross_validate(data, tmp_path / "cv", epochs=1, threads=2, cache_dir=None,
                            console=QUIET)  # fmt: skip
    folds = report["folds"]
    assert set(folds) == {"group11000", "group22000", "group33000"}
    for group, row in folds.items():
        assert row["inner_validation_group"] != group and row["boards"] == 4
        # the inner group's own validation figures, as the fold's model card has them
        assert set(row["inner_validation"]) == {"f_score", "map"}
        assert all(isinstance(v, float) for v in row["inner_validation"].values())
        assert (tmp_path / "cv" / group / "metrics.json").is_file()
    f_scores = [row["f_score"] for row in folds.values()]
    assert report["summary"]["f_score"]["mean"] == pytest.approx(np.mean(f_scores))
    assert report["summary"]["f_score"]["min"] == pytest.approx(min(f_scores))
    on_disk = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert on_disk["folds"].keys() == folds.keys()
    from linecheck.cli.tables import cv_table

    printed = Console(width=250, record=True, file=io.StringIO())
    printed.print(cv_table(report))
    lines = printed.export_text().splitlines()
    for group, row in folds.items():  # the printed table names each fold's inner figure
        line = next(ln for ln in lines if ln.startswith(f"│ {group}"))
        assert f"{row['inner_validation']['f_score']:.4f}" in line.split("│")[-2]
    assert not list((tmp_path / "cv").glob("cv-*"))  # the fold models are cleaned up
    assert on_disk["topology_prior"] is True and on_disk["crop_views"] == [0, 64]
    assert on_disk["augment_zoom"] == AUGMENT_ZOOM
    from linecheck.cli import app

    unknown = CliRunner().invoke(app, ["train", "--data", str(data), "--cv", "groups",
                                       "--cv-groups", "group11000,group99999",
                                       "--cv-out", str(tmp_path / "cv2")])  # fmt: skip
    assert unknown.exit_code == 2 and "group99999" in unknown.output
    assert not (tmp_path / "cv2" / "group11000").exists()  # refused before any fold ran
    bad = CliRunner().invoke(app, ["train", "--data", str(data), "--crop-views", "0,x"])
    assert bad.exit_code == 2 and "--crop-views" in bad.output and "'0,x'" in bad.output
    elsewhere = CliRunner().invoke(app, ["train", "--data", str(data), "--roi", "locator",
                                         "--zoom", "1.2"])  # fmt: skip
    assert elsewhere.exit_code == 2 and "--zoom" in elsewhere.output
    elsewhere = CliRunner().invoke(app, ["train", "--data", str(data), "--roi", "locator",
                                         "--fragment", "0.5"])  # fmt: skip
    assert elsewhere.exit_code == 2 and "--fragment" in elsewhere.output


def test_classification_metrics_count_and_leave_undefined_rates_undefined() -> None:
    from training.classify_evaluation import classification_metrics

    truth = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0, 0])
    m = classification_metrics(truth, predicted, ("a", "b", "c"))
    assert m["confusion"] == [[1, 1, 0], [1, 2, 0], [1, 0, 0]]
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["per_class"]["b"] == {"precision": 2 / 3, "recall": 2 / 3, "f1": pytest.approx(2 / 3),
                                   "support": 3}  # fmt: skip
    assert m["per_class"]["c"]["precision"] is None and m["per_class"]["c"]["recall"] == 0.0
