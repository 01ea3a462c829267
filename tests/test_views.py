"""A model of several crop views (``ModelCard.views``): one network per crop geometry, each
on its own crops of the same candidates, their probabilities averaged; served by every
path that cuts crops (inspector, shadows, heatmaps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from board_data.synthetic import BoardGenerator
from inspection.backends import load_classifier
from inspection.crops import crops_for, make_crops
from inspection.model.registry import ModelCard, Thresholds, load_card
from inspection.roi import find_regions_aligned
from schemas.events import Verdict
from tests.test_inspector import SOURCE, _event
from tests.test_inspector import inspector as inspector  # the fixture
from workers.inspector import Inspector
from workers.served import ServedModel

SIDES = (0, 64)


@pytest.fixture(scope="module")
def views_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seeded, untrained SmallCNNs saved as a model of views (0 and 64 px)."""
    import torch

    from inspection.model.nets import build_model
    from inspection.model.views import save_views

    members = []
    for seed, side in enumerate(SIDES):
        torch.manual_seed(seed)
        card = ModelCard(version="member", arch="small", crop_min_side=side)
        members.append((build_model("small", num_classes=7, pretrained=False), card))
    thresholds = Thresholds(
        pass_below=0.3, fail_at_or_above=0.7, threshold_version="views", target_fnr=0.001
    )
    card = ModelCard(
        version="test-views", arch="small", crop_min_side=0, views=SIDES, thresholds=thresholds
    )
    return save_views(members, card, tmp_path_factory.mktemp("models"))


def _board_crops(index: int = 3) -> tuple[np.ndarray, np.ndarray, list]:  # type: ignore[type-arg]
    board = BoardGenerator(seed=5).board(index)
    boxes, aligned = find_regions_aligned(board.image, board.template)
    assert boxes
    return board.image, aligned, boxes


def test_each_view_classifies_its_own_crops_and_the_model_averages_them(views_dir: Path) -> None:
    model = load_classifier(views_dir)
    assert model.version == "test-views" and model.crop_sides == SIDES
    assert sorted(p.name for p in views_dir.iterdir() if p.is_dir()) == ["view0", "view64"]
    image, aligned, boxes = _board_crops()
    crops = crops_for(model, image, aligned, boxes)
    assert crops.shape == (len(boxes), 6, 64, 64)
    per_view = []
    for k, side in enumerate(SIDES):
        own = make_crops(image, aligned, boxes, aligned=True, min_side=side)
        assert np.array_equal(crops[:, 3 * k : 3 * k + 3], own)
        per_view.append(load_classifier(views_dir / f"view{side}").predict_proba(own))
    probs = model.predict_proba(crops)
    np.testing.assert_allclose(probs, np.mean(per_view, axis=0), rtol=1e-6, atol=1e-7)
    assert not np.allclose(probs, per_view[0], atol=1e-4)  # the second view counts
    # the torch backend serves the same model, and the heatmaps' inference agrees
    torch_probs = load_classifier(views_dir, backend="torch").predict_proba(crops)
    np.testing.assert_allclose(torch_probs, probs, atol=1e-4)
    with_features = load_classifier(views_dir, features=True)
    p2, features = with_features.predict_with_features(crops)  # type: ignore[attr-defined]
    np.testing.assert_allclose(p2, probs, atol=1e-5)
    assert features.shape[0] == len(boxes)
    with pytest.raises(ValueError, match=r"\(N, 6, S, S\)"):
        model.predict_proba(crops[:, :3])  # one view's crops: refused, naming the shape


def test_a_card_of_views_must_be_consistent() -> None:
    with pytest.raises(ValueError, match="first view"):
        ModelCard(version="v", arch="small", crop_min_side=64, views=(0, 64))
    with pytest.raises(ValueError, match="distinct"):
        ModelCard(version="v", arch="small", views=(0, 0))
    with pytest.raises(ValueError, match="CNN-headed"):
        ModelCard(version="v", arch="small", views=(0, 64), head="gbdt")


def test_the_inspector_serves_a_model_of_views_with_its_first_views_heatmaps(
    inspector: Inspector, views_dir: Path
) -> None:
    from inspection.explain import Explainer

    served = load_classifier(views_dir, features=True)
    inspector.default = ServedModel(
        served,
        load_card(views_dir).require_thresholds(),
        Explainer(views_dir, served=served),  # type: ignore[arg-type]
    )
    event = _event(inspector, index=3)
    verdict = inspector.process(event.model_dump_json().encode(), SOURCE)
    assert isinstance(verdict, Verdict), verdict
    assert verdict.model_version == "test-views" and verdict.threshold_version == "views"
    image, aligned, boxes = _board_crops(3)
    probs = served.predict_proba(crops_for(served, image, aligned, boxes))
    # the verdict's board score is the averaged model's (pieces merged keep the highest)
    assert verdict.board_score == pytest.approx(float((1 - probs[:, 0]).max()), abs=1e-5)
    assert verdict.explanation_uri is not None  # heatmaps drawn from the first view's crops
    assert Path(verdict.explanation_uri.removeprefix("file://")).is_file()


def test_a_shadow_of_views_cuts_its_own_crops(model_dir: Path, views_dir: Path) -> None:
    from workers.shadow import score_shadows

    active = load_classifier(model_dir)
    image, aligned, boxes = _board_crops()
    crops = crops_for(active, image, aligned, boxes)
    shadow = load_classifier(views_dir)
    served = ServedModel(shadow, load_card(views_dir).require_thresholds())
    (decision,) = score_shadows("e1", "w", [served], image, aligned, boxes, crops,
                                active.crop_sides)  # fmt: skip
    expected = shadow.predict_proba(crops_for(shadow, image, aligned, boxes))
    assert decision.model_version == "test-views"
    assert decision.board_score == pytest.approx(float((1 - expected[:, 0]).max()), abs=1e-5)


def test_a_model_of_views_travels_as_one_archive(views_dir: Path, tmp_path: Path) -> None:
    from inspection.model.archive import export_model, import_model

    manifest = export_model(views_dir, tmp_path / "views.tar.gz")
    names = set(manifest["files"])  # type: ignore[arg-type]
    assert {"model.json", "view0/model.xml", "view64/weights.pt"} <= names
    imported = import_model(tmp_path / "views.tar.gz", tmp_path / "line-pc")
    image, aligned, boxes = _board_crops()
    here, there = load_classifier(views_dir), load_classifier(imported)
    crops = crops_for(there, image, aligned, boxes)
    assert there.crop_sides == SIDES
    np.testing.assert_array_equal(there.predict_proba(crops), here.predict_proba(crops))
