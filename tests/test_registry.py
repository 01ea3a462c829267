"""Model registry: versioned folders, cards, latest, errors, IR export."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from pydantic import ValidationError

from inspection.model.labels import CLASSES, NUM_CLASSES
from inspection.model.nets import build_model
from inspection.model.registry import (
    ModelCard,
    Thresholds,
    data_hash,
    list_versions,
    load_card,
    resolve_model,
    save_model,
    update_card,
)


@pytest.fixture(scope="module")
def small() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("small", NUM_CLASSES, pretrained=False)


def _card(version: str, created: datetime | None = None) -> ModelCard:
    extra = {"created_at": created} if created is not None else {}
    return ModelCard(
        version=version,
        arch="small",
        input_size=64,
        thresholds=Thresholds(
            pass_below=0.2, fail_at_or_above=0.8, threshold_version="t1", target_fnr=0.001
        ),
        metrics={"val_accuracy": 0.97, "val_confusion_matrix": [[1, 0], [0, 1]]},
        training_data_hash=data_hash(["a.jpg", "b.jpg"]),
        **extra,  # type: ignore[arg-type]
    )


def test_save_writes_a_complete_folder(small: torch.nn.Module, tmp_path: Path) -> None:
    small.train()
    folder = save_model(small, _card("v1"), tmp_path)
    assert folder == tmp_path / "v1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.bin",
        "model.json",
        "model.xml",
        "weights.pt",
    ]
    assert small.training  # the export did not leave the module in eval mode
    card = load_card(folder)
    assert card.version == "v1" and card.arch == "small" and card.classes == CLASSES
    assert card.torch_version == torch.__version__
    assert card.openvino_version == ov.get_version()
    assert card.created_at.tzinfo is not None and card.created_at.utcoffset() == timedelta(0)
    assert card.thresholds is not None and card.thresholds.pass_below == 0.2
    assert card.metrics["val_confusion_matrix"] == [[1, 0], [0, 1]]
    assert "127.5" in card.preprocessing
    # weights.pt is the state dict
    state = torch.load(folder / "weights.pt", weights_only=True)
    assert state.keys() == small.state_dict().keys()
    # IR: FP32 weights, dynamic batch, fixed crop size
    model = ov.Core().read_model(folder / "model.xml")
    shape = model.inputs[0].get_partial_shape()
    assert shape[0].is_dynamic and [shape[i].get_length() for i in (1, 2, 3)] == [3, 64, 64]
    assert model.outputs[0].get_partial_shape()[1].get_length() == NUM_CLASSES
    assert 'element_type="f16"' not in (folder / "model.xml").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_existing_version_is_not_overwritten(small: torch.nn.Module, tmp_path: Path) -> None:
    save_model(small, _card("v1"), tmp_path)
    with pytest.raises(FileExistsError, match="v1"):
        save_model(small, _card("v1"), tmp_path)


def test_resolve_latest_by_created_at(small: torch.nn.Module, tmp_path: Path) -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    # names sort the other way round than creation times
    save_model(small, _card("b-old", t0), tmp_path)
    save_model(small, _card("a-new", t0 + timedelta(hours=1)), tmp_path)
    (tmp_path / "not-a-model").mkdir()
    assert list_versions(tmp_path) == ["a-new", "b-old"]
    assert resolve_model(tmp_path) == tmp_path / "a-new"
    assert resolve_model(tmp_path, "latest") == tmp_path / "a-new"
    assert resolve_model(tmp_path, "b-old") == tmp_path / "b-old"
    # a newer anomaly-mode model serves only its products: 'latest' stays the reference one
    newest = _card("c-anomaly", t0 + timedelta(hours=2)).model_copy(update={"mode": "anomaly"})
    save_model(small, newest, tmp_path)
    assert resolve_model(tmp_path, "latest") == tmp_path / "a-new"
    assert resolve_model(tmp_path, "c-anomaly") == tmp_path / "c-anomaly"
    with pytest.raises(FileNotFoundError) as err:
        resolve_model(tmp_path, "v9")
    msg = str(err.value)
    assert "'v9'" in msg and str(tmp_path) in msg and "a-new, b-old, c-anomaly" in msg


def test_resolve_in_empty_or_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no reference-mode models in"):
        resolve_model(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="available: none"):
        resolve_model(tmp_path, "v1")


def test_update_card(small: torch.nn.Module, tmp_path: Path) -> None:
    folder = save_model(small, _card("v1"), tmp_path)
    card = load_card(folder)
    new = Thresholds(pass_below=0.1, fail_at_or_above=0.9, threshold_version="t2", target_fnr=0.001)
    update_card(folder, card.model_copy(update={"thresholds": new}))
    assert load_card(folder).require_thresholds().threshold_version == "t2"
    with pytest.raises(ValueError, match="does not match"):
        update_card(folder, card.model_copy(update={"version": "v2"}))


def test_card_validation() -> None:
    with pytest.raises(ValidationError):
        _card("../escape")
    with pytest.raises(ValidationError):
        _card("latest")
    with pytest.raises(ValidationError, match="pass_below"):
        Thresholds(pass_below=0.9, fail_at_or_above=0.1, threshold_version="t", target_fnr=0.01)
    with pytest.raises(ValidationError):
        ModelCard(version="v1", arch="resnet")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        _card("v1", datetime(2025, 1, 1))  # naive timestamps are refused
    local = _card("v1", datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))))
    assert local.created_at == datetime(2025, 1, 1, 10, tzinfo=UTC)
    assert local.created_at.utcoffset() == timedelta(0)
    uncalibrated = ModelCard(version="v1", arch="small")
    with pytest.raises(ValueError, match="no decision thresholds"):
        uncalibrated.require_thresholds()


def test_load_card_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.json"):
        load_card(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_card(tmp_path)


def test_data_hash() -> None:
    h = data_hash(["x/1.jpg", "x/2.jpg"])
    assert h.startswith("sha256:") and len(h) == 7 + 64
    assert data_hash(iter(["x/2.jpg", "x/1.jpg"])) == h  # order-insensitive
    assert data_hash(["x/1.jpg", "x/3.jpg"]) != h
    assert data_hash(["x/1.jpgx/2.jpg"]) != h  # item boundaries count
    assert data_hash([]) != h
    assert isinstance(np.array([h])[0], str)
