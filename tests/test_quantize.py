"""INT8 OpenVINO IR (NNCF post-training quantization) agrees with the FP32 model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from board_data.synthetic import BoardGenerator
from inspection.backends import load_classifier
from inspection.crops import make_crops
from inspection.model.labels import NUM_CLASSES
from inspection.model.nets import build_model
from inspection.model.registry import IR_INT8_XML, ModelCard, clone_model, save_model
from schemas.events import Box
from training.quantize import quantize_int8
from training.trainer import train_classifier


def _board_crops(n_boards: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Crops of the true defects and of random clean squares on small synthetic boards."""
    gen = BoardGenerator(seed=seed, n_designs=2, size=256, defect_rate=1.0)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(n_boards):
        b = gen.board(i)
        boxes = [d.box for d in b.defects]
        labels = [d.defect_type.deeppcb_id for d in b.defects]
        for _ in range(3):
            x, y = (int(v) for v in rng.integers(0, 200, 2))
            boxes.append(Box(x1=x, y1=y, x2=x + 40, y2=y + 40))
            labels.append(0)
        xs.append(make_crops(b.image, b.template, boxes))
        ys += labels
    return np.concatenate(xs), np.asarray(ys, np.int64)


@pytest.fixture(scope="module")
def trained_small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    x, y = _board_crops(24, seed=3)
    vx, vy = _board_crops(8, seed=4)
    result = train_classifier(x, y, vx, vy, arch="small", epochs=2, seed=0, threads=2)
    card = ModelCard(version="int8-test", arch="small", input_size=64)
    model_dir = save_model(result.module, card, tmp_path_factory.mktemp("models"))
    quantize_int8(model_dir, x, subset_size=100)
    return model_dir, vx


def test_int8_variant_agrees_with_fp32(trained_small: tuple[Path, np.ndarray]) -> None:
    model_dir, crops = trained_small
    assert (model_dir / IR_INT8_XML).is_file()
    fp32 = load_classifier(model_dir, backend="openvino", threads=2)
    int8 = load_classifier(model_dir, backend="openvino", threads=2, variant="int8")
    p32, p8 = fp32.predict_proba(crops), int8.predict_proba(crops)
    assert p8.shape == p32.shape == (len(crops), NUM_CLASSES) and p8.dtype == np.float32
    np.testing.assert_allclose(p8.sum(1), 1.0, atol=1e-4)
    agree = (p8.argmax(1) == p32.argmax(1)).mean()
    assert agree >= 0.9, f"INT8 and FP32 agree on only {agree:.0%} of crops"
    assert np.abs(p8 - p32).mean() < 0.05


def test_accuracy_control_keeps_int8_within_the_allowed_drop(
    trained_small: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    model_dir, _ = trained_small
    x, _ = _board_crops(24, seed=3)
    vx, vy = _board_crops(12, seed=5)
    copy = clone_model(model_dir, "int8-controlled", tmp_path)
    quantize_int8(copy, x, subset_size=100, validation=(vx, vy), max_drop=0.005)
    fp32 = load_classifier(copy, backend="openvino", threads=2)
    int8 = load_classifier(copy, backend="openvino", threads=2, variant="int8")
    acc32 = (fp32.predict_proba(vx).argmax(1) == vy).mean()
    acc8 = (int8.predict_proba(vx).argmax(1) == vy).mean()
    assert acc8 >= acc32 - 0.005 - 1e-9, (acc32, acc8)
    with pytest.raises(ValueError, match="as many labels as crops"):
        quantize_int8(copy, x, validation=(vx, vy[:3]))


def test_int8_variant_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = build_model("small", NUM_CLASSES, pretrained=False)
    model_dir = save_model(module, ModelCard(version="plain", arch="small"), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"model_int8\.xml"):
        load_classifier(model_dir, backend="openvino", variant="int8")
    with pytest.raises(ValueError, match="FP32"):
        load_classifier(model_dir, backend="torch", variant="int8")
    with pytest.raises(ValueError, match="variant"):
        load_classifier(model_dir, backend="openvino", variant="fp16")  # type: ignore[arg-type]


def test_workers_serve_the_int8_ir_when_the_settings_say_so(
    trained_small: tuple[Path, np.ndarray],
) -> None:
    from infra.settings import load_settings
    from inspection.model.registry import Thresholds, load_card, update_card
    from workers.model_swap import load_served

    model_dir, crops = trained_small
    th = Thresholds(pass_below=0.3, fail_at_or_above=0.7, threshold_version="t", target_fnr=0.0)
    update_card(model_dir, load_card(model_dir).model_copy(update={"thresholds": th}))
    settings = load_settings(model={"variant": "int8", "threads": 2}, worker={"explain": False})
    served = load_served(settings, model_dir)
    expected = load_classifier(model_dir, backend="openvino", threads=2, variant="int8")
    assert getattr(served.classifier, "variant", None) == "int8"
    assert np.array_equal(served.classifier.predict_proba(crops), expected.predict_proba(crops))


def test_an_int8_worker_explains_with_the_int8_models_own_feature_maps(
    trained_small: tuple[Path, np.ndarray],
) -> None:
    """No second (FP32) model for heatmaps: the INT8 IR's feature output and its dequantized
    last-layer weight give the maps, close to the FP32 model's (same network, quantized)."""
    from infra.settings import load_settings
    from inspection.cam import cam_from_features, normalise_maps
    from workers.model_swap import load_served

    model_dir, crops = trained_small
    settings = load_settings(model={"variant": "int8", "threads": 2}, worker={"explain": True})
    served = load_served(settings, model_dir)
    assert served.explainer is not None and served.explainer.uses_served_features
    _, feats8 = served.classifier.predict_with_features(crops[:32])  # type: ignore[attr-defined]
    fp32 = load_classifier(model_dir, backend="openvino", threads=2, features=True)
    probs32, feats32 = fp32.predict_with_features(crops[:32])  # type: ignore[attr-defined]
    assert not np.array_equal(feats8, feats32)  # really the quantized network's features
    cls = probs32.argmax(1)
    m8 = normalise_maps(cam_from_features(feats8, served.explainer.weight, cls, 64))  # type: ignore[arg-type]
    m32 = normalise_maps(cam_from_features(feats32, fp32.cam_weight, cls, 64))  # type: ignore[attr-defined]
    # quantization moves the maps a little, not their shape
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(m8, m32, strict=True)]
    assert np.nanmedian(corr) > 0.9
