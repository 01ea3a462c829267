"""The learned locator (template-free ROI): trained through the CLI on a tiny DeepPCB-layout
folder of synthetic boards, served on OpenVINO, evaluated without templates."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from board_data.deeppcb import read_gray
from inspection.crops import label_candidates
from inspection.locator import HEAD_OUTPUTS, Locator, LocatorParams, regions_from_map
from inspection.model.locator_net import LocatorNet
from inspection.model.registry import load_card
from schemas.events import Box
from training.locator_losses import area_loss
from training.locator_model import (
    LOCATOR_WEIGHTS,
    TRAIN_THRESHOLD_FACTOR,
    fold_groups,
    fold_locators,
    locator_rows,
)
from training.locator_train import (
    target_mask,
    torch_locator_maps,
    torch_region_map,
    train_locator_net,
)
from training.splits import samples_of

from .test_training_pipelines import _deeppcb_folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data folder, models folder, model folder): a locator-mode model trained through
    `linecheck train --roi locator` on 12 boards, validated on 4 of another group."""
    from linecheck.cli import app

    root = tmp_path_factory.mktemp("locator")
    data = _deeppcb_folder(root / "data", {"11000": 12, "22000": 4})
    split = root / "val.txt"
    split.write_text(
        "".join(
            f"group22000/22000/22000{k:03d}.jpg group22000/22000_not/22000{k:03d}.txt\n"
            for k in range(4)
        )
    )
    models = root / "models"
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(data), "--split", str(split), "--roi", "locator", "--epochs",
         "2", "--locator-epochs", "40", "--threads", "2", "--version", "tiny-locator",
         "--arch", "small", "--crop-reference", "copy", "--crop-views", "48"],
        env={"LINECHECK_MODEL__MODELS_DIR": str(models)},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return data, models, models / "tiny-locator"


def test_the_model_folder_holds_locator_and_classifier(trained: tuple[Path, Path, Path]) -> None:
    _, models, model_dir = trained
    card = load_card(model_dir)
    assert card.mode == "locator" and card.thresholds is not None
    for name in ("locator.xml", "locator.bin", "locator.json", "model.xml", LOCATOR_WEIGHTS):
        assert (model_dir / name).is_file(), name
    assert card.metrics["val_groups"] == ["group22000"]
    assert card.metrics["locator"]["repeat_px"] == LocatorParams.load(model_dir).repeat_px > 0
    assert card.metrics["locator"]["crop_reference"] == "copy"  # as asked
    assert LocatorParams.load(model_dir).crop_reference == "copy"
    assert card.crop_min_side == 48  # --crop-views 48: the classifier's crops, served alike
    assert [p.name for p in models.iterdir()] == ["tiny-locator"]  # no staging left behind


def test_served_locator_finds_the_drawn_defects(trained: tuple[Path, Path, Path]) -> None:
    data, _, model_dir = trained
    locator = Locator(model_dir, threads=2)
    hits = boxes = 0
    chance = []
    for sample in samples_of(data):
        if sample.group != "group22000":  # boards of a group it never saw
            continue
        image = sample.load()[0]
        found = locator.find_regions(image)
        truth = target_mask(image.shape, [t.box for t in sample.truths], 0.0)
        for b in found:
            assert 0 <= b.x1 < b.x2 <= image.shape[1] and 0 <= b.y1 < b.y2 <= image.shape[0]
            boxes += 1
            hits += bool(truth[b.y1 : b.y2, b.x1 : b.x2].any())
            # a box of that size dropped at random meets a defect about this often
            dilated = _dilate(truth, b.x2 - b.x1, b.y2 - b.y1)
            chance.append(float(dilated.mean()))
    assert boxes > 0
    precision, by_chance = hits / boxes, float(np.mean(chance))
    assert precision > by_chance + 0.1, (precision, by_chance)


def _dilate(mask: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    return cv2.dilate(mask, np.ones((h, w), np.uint8), anchor=(0, 0))


def test_openvino_maps_match_torch(trained: tuple[Path, Path, Path]) -> None:
    data, _, model_dir = trained
    locator = Locator(model_dir)
    assert locator.params.head == "centre"  # the default head
    net = LocatorNet(outputs=HEAD_OUTPUTS["centre"])
    net.load_state_dict(torch.load(model_dir / LOCATOR_WEIGHTS, weights_only=True))
    image = samples_of(data)[0].load()[0][:200, :232]  # any size: padded inside
    served = locator.maps(image)
    expected = torch_locator_maps(net, image)
    assert served.shape == expected.shape == (5, 50, 58)
    assert np.abs(served - expected).max() < 1e-4
    assert np.array_equal(locator.region_map(image), served[0])


def test_evaluate_roi_locator_reads_no_template(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from linecheck.cli import app

    data, models, _ = trained
    bare = tmp_path / "bare"
    shutil.copytree(data, bare)
    for template in bare.glob("group*/*/*_temp.jpg"):
        template.unlink()
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--data",
            str(bare),
            "--out",
            str(out),
            "--roi",
            "locator",
            "--model",
            "tiny-locator",
        ],
        env={"LINECHECK_MODEL__MODELS_DIR": str(models)},
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["roi"] == "locator" and metrics["boards"] == 4
    assert metrics["groups"] == ["group22000"]
    for key in ("f_score", "map", "roi_recall", "candidates_per_board"):
        assert metrics[key] is not None, key
    assert "board_fpr" not in metrics  # no good boards without templates: not measured
    assert len(list((out / "detections").iterdir())) == 4


def test_a_trained_locator_is_reused_for_a_new_classifier(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """`--roi locator --base-model V` trains only a classifier on V's locator, and refuses
    a split that holds out a group V's locator trained on."""
    from linecheck.cli import app

    data, models, model_dir = trained
    split = tmp_path / "val.txt"
    split.write_text(
        "".join(
            f"group22000/22000/22000{k:03d}.jpg group22000/22000_not/22000{k:03d}.txt\n"
            for k in range(4)
        )
    )
    env = {"LINECHECK_MODEL__MODELS_DIR": str(models)}
    args = ["train", "--data", str(data), "--roi", "locator", "--epochs", "1", "--threads",
            "2", "--base-model", "tiny-locator"]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--split", str(split), "--version", "again"], env=env)
    assert result.exit_code == 0, result.output
    again = models / "again"
    for name in ("locator.xml", "locator.bin", LOCATOR_WEIGHTS):
        assert (again / name).read_bytes() == (model_dir / name).read_bytes(), name
    # the same parameters, but the new classifier's crops are the default's (median)
    source = LocatorParams.load(model_dir)
    assert LocatorParams.load(again) == replace(source, crop_reference="median")
    card = load_card(again)
    assert card.arch == "efficientnet_lite0"  # --roi locator's default classifier
    assert card.metrics["locator"]["from"] == "tiny-locator"
    assert card.metrics["locator"]["epochs"] == 40  # the source's, not retrained
    split.write_text("group11000/11000/11000000.jpg group11000/11000_not/11000000.txt\n")
    refused = CliRunner().invoke(app, [*args, "--split", str(split), "--version", "x"], env=env)
    assert refused.exit_code == 2
    assert "trained on group11000" in refused.output
    assert not (models / "x").exists()
    shutil.rmtree(again)  # the module's other tests list the models folder


def test_regions_get_5_percent_margins_and_are_clipped() -> None:
    params = LocatorParams(threshold=0.5, target_shrink=0.0, margin=0.05, min_side_px=1)
    prob = np.zeros((40, 40), np.float32)
    prob[10:15, 20:30] = 0.9  # cells: 20 × 40 px at stride 4 → box (80, 40)-(120, 60)
    prob[0:2, 0:3] = 0.7  # at the corner: clipped
    first, second = regions_from_map(prob, (160, 160), params)
    assert first == Box(x1=78, y1=39, x2=122, y2=61)  # 40 × 20 px plus 5 % on each side
    assert second.x1 == 0 and second.y1 == 0 and second.x2 == 13 and second.y2 == 9
    shrunk = regions_from_map(prob, (160, 160), LocatorParams(target_shrink=0.2, margin=0.0))
    assert shrunk[0] == Box(x1=66, y1=33, x2=134, y2=67)  # grown back by 0.2 / 0.6 a side


def test_area_loss_weighs_missed_area_twice_excess() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :2] = 1.0  # 4 target cells
    missed = torch.full((1, 1, 4, 4), -30.0)  # predicts nothing: 4 missed cells
    flooded = torch.full((1, 1, 4, 4), 30.0)  # predicts everything: 12 excess cells
    assert area_loss(missed, target).item() == pytest.approx(2.0)
    assert area_loss(flooded, target).item() == pytest.approx(3.0)


def test_locator_training_takes_the_network_widths() -> None:
    rng = np.random.default_rng(0)
    boards = [(rng.random((64, 64)) > 0.5).astype(np.uint8) * 255 for _ in range(2)]
    boxes = [[Box(x1=8, y1=8, x2=24, y2=20)], []]
    net, history = train_locator_net(
        boards, boxes, epochs=1, crop=64, batch_size=2, widths=(8, 8, 16, 16)
    )
    assert net.widths == (8, 8, 16, 16)
    assert net.stem[0].out_channels == 8 and net.head.in_channels == 8
    assert len(history) == 1 and np.isfinite(history[0]["area_loss"])
    assert torch_region_map(net, boards[0]).shape == (16, 16)


def test_fold_groups_deal_each_group_to_exactly_one_fold() -> None:
    folds = fold_groups(["g5", "g1", "g3", "g2", "g4", "g1"], 2)
    assert folds == [["g1", "g3", "g5"], ["g2", "g4"]]
    assert fold_groups(["g1", "g2"], 3) == []  # a fold would be empty
    assert fold_groups(["g1", "g2"], 1) == []  # nothing held out


def test_fold_locators_share_a_locator_within_a_fold_only(tmp_path: Path) -> None:
    data = _deeppcb_folder(tmp_path / "data", {"11000": 2, "22000": 2, "33000": 2})
    unseen = fold_locators(
        samples_of(data), LocatorParams(), 2, tmp_path / "folds", Console(quiet=True),
        epochs=1, crops_per_board=1, box_radius=1, seed=0, threads=1,
    )  # fmt: skip
    assert sorted(unseen) == ["group11000", "group22000", "group33000"]
    assert unseen["group11000"] is unseen["group33000"]  # fold 1: trained on 22000 only
    assert unseen["group22000"] is not unseen["group11000"]
    assert (tmp_path / "folds" / "fold1" / "locator.xml").exists()


def test_an_unseen_locators_candidates_join_the_training_rows(
    trained: tuple[Path, Path, Path],
) -> None:
    """A fold locator's candidates join a pair's rows after the served locator's own
    (found at a lower threshold), labelled by IoU with the truths; the rest follows."""
    data, _, model_dir = trained
    locator = Locator(model_dir, threads=1)
    sample = next(s for s in samples_of(data) if s.group == "group11000")
    alone, labels = locator_rows(sample, locator, np.random.default_rng(3))
    both, more = locator_rows(sample, locator, np.random.default_rng(3), unseen=locator)
    image = read_gray(sample.test_path)
    low = replace(locator.params, threshold=locator.params.threshold * TRAIN_THRESHOLD_FACTOR)
    own, found = locator.find_regions(image, low), locator.find_regions(image)
    assert any(label > 0 for label in label_candidates(found, sample.truths))
    assert more[: len(own)] == labels[: len(own)]
    assert more[len(own) : len(own) + len(found)] == label_candidates(found, sample.truths)
    assert more[len(own) + len(found) :][: len(labels) - len(own)] == labels[len(own) :]
    assert len(both) == len(more) and len(both) - len(alone) >= len(found)  # + the good board's


def test_evaluate_repeat_px_overrides_the_models_veto(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """`evaluate --repeat-px N` replaces the locator's own veto: with N larger than any
    region, every region called a defect is explained away and nothing is detected."""
    from linecheck.cli import app

    data, models, model_dir = trained
    env = {"LINECHECK_MODEL__MODELS_DIR": str(models)}
    counts = {}
    for px in (None, 10**6):
        out = tmp_path / f"eval-{px}"
        args = ["evaluate", "--data", str(data), "--out", str(out), "--model", "tiny-locator"]
        result = CliRunner().invoke(app, args + (["--repeat-px", str(px)] if px else []), env=env)
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["repeat_px"] == (px or LocatorParams.load(model_dir).repeat_px)
        counts[px] = metrics["detections"]
    assert counts[None] > 0 and counts[10**6] == 0


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--crop-reference", "template"], "--crop-reference must be median or copy"),
        (["--crop-views", "0,64"], "trains one classifier: give --crop-views one side"),
    ],
)
def test_train_refuses_what_locator_mode_cannot_do(
    tmp_path: Path, option: list[str], message: str
) -> None:
    from linecheck.cli import app

    data = _deeppcb_folder(tmp_path / "data", {"11000": 1})
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(data), "--roi", "locator", *option],
        env={"LINECHECK_MODEL__MODELS_DIR": str(tmp_path / "models")},
    )
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())  # rich may wrap the line
    assert not (tmp_path / "models").exists()


def test_a_shadow_cuts_the_crops_of_its_own_reference(trained: tuple[Path, Path, Path]) -> None:
    """A locator model whose crops show the design's copy, shadowing a model whose crops
    show the median (same geometry), scores its own copy crops, not the active's."""
    from inspection.backends import load_classifier
    from workers.served import ServedModel
    from workers.shadow import score_shadows

    data, _, model_dir = trained
    locator = Locator(model_dir, threads=2)
    classifier = load_classifier(model_dir)
    served = ServedModel(classifier, load_card(model_dir).require_thresholds(), locator=locator)
    assert served.crop_reference == "copy"
    sample = next(s for s in samples_of(data) if s.group == "group22000" and s.truths)
    image = sample.load()[0]
    boxes = [t.box for t in sample.truths]
    median = replace(locator.params, crop_reference="median")
    active = Locator(model_dir, threads=2)
    active.params = median
    active_crops = active.crops(classifier, image, boxes)
    own = locator.crops(classifier, image, boxes)
    assert not np.array_equal(active_crops[:, 1], own[:, 1])  # the references differ
    (decision,) = score_shadows("e1", "w", [served], image, None, boxes, active_crops,
                                classifier.crop_sides, "median")  # fmt: skip
    expected = classifier.predict_proba(own)
    assert decision.board_score == pytest.approx(float((1 - expected[:, 0]).max()), abs=1e-5)
