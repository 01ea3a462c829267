"""Class-activation maps: shape, peak location on a toy case, and the saved picture."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from inspection.cam import OpenVINOCam, TorchCam, normalise_maps
from inspection.explain import class_activation_maps, render_board, save_explanation
from inspection.model.nets import ClassifierNet, build_model
from schemas.events import Box, DefectType, RegionVerdict


class Toy(ClassifierNet):
    """features = the difference channel itself (1 channel); class 1 weighs it +1."""

    def __init__(self) -> None:
        super().__init__()
        self.dropout = nn.Identity()
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.fc.bias.zero_()

    @property
    def classifier(self) -> nn.Linear:
        return self.fc

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x[:, 2:3] + 1.0, 4)  # 64 -> 16, in [0, 2]


def _crops_with_spot(n: int, where: list[tuple[int, int]]) -> np.ndarray:
    crops = np.zeros((n, 3, 64, 64), np.uint8)
    for i, (y, x) in enumerate(where):
        crops[i, 2, y - 4 : y + 4, x - 4 : x + 4] = 255
    return crops


def test_cam_peaks_where_the_evidence_is() -> None:
    spots = [(12, 50), (40, 20), (56, 56)]
    crops = _crops_with_spot(3, spots)
    cams = class_activation_maps(Toy(), crops)
    assert cams.shape == (3, 64, 64) and cams.dtype == np.float32
    assert cams.min() >= 0.0 and np.allclose(cams.reshape(3, -1).max(1), 1.0)
    for cam, (y, x) in zip(cams, spots, strict=True):
        py, px = np.unravel_index(np.argmax(cam), cam.shape)
        assert abs(py - y) <= 4 and abs(px - x) <= 4
    # the predicted class here is 1; asking for class 0 flips the sign: no positive evidence
    raw0 = class_activation_maps(Toy(), crops, classes=[0, 0, 0], normalise=False)
    raw1 = class_activation_maps(Toy(), crops, classes=[1, 1, 1], normalise=False)
    np.testing.assert_allclose(raw0, -raw1, atol=1e-6)
    # the raw map's mean is the class logit minus the bias (bias is 0 here)
    logits = Toy()(torch.from_numpy((crops.astype(np.float32) - 127.5) / 127.5))
    np.testing.assert_allclose(raw1.mean(axis=(1, 2)), logits[:, 1].detach().numpy(), rtol=1e-4)


@pytest.mark.parametrize("arch", ["small", "efficientnet_lite0"])
def test_cam_works_on_both_architectures(arch: str) -> None:
    torch.manual_seed(0)
    module = build_model(arch, 7, pretrained=False)  # type: ignore[arg-type]
    module.train()
    cams = class_activation_maps(module, _crops_with_spot(2, [(20, 20), (40, 40)]))
    assert cams.shape == (2, 64, 64) and np.isfinite(cams).all()
    assert module.training  # mode restored
    assert class_activation_maps(module, np.zeros((0, 3, 64, 64), np.uint8)).shape == (0, 64, 64)


def test_save_explanation_draws_failed_regions_only(tmp_path: Path) -> None:
    image = np.full((200, 200), 255, np.uint8)
    image[50:60, 20:180] = 0
    regions = [
        RegionVerdict(
            box=Box(x1=30, y1=40, x2=70, y2=70),
            defect_type=DefectType.OPEN,
            score=0.99,
            type_score=0.99,
        ),
        RegionVerdict(
            box=Box(x1=120, y1=120, x2=150, y2=150), defect_type=None, score=0.01, type_score=0.99
        ),
    ]
    crops = _crops_with_spot(2, [(32, 32), (32, 32)])
    path = save_explanation(tmp_path / "b.png", image, crops, regions, TorchCam(Toy()))
    assert path is not None and path.is_file()
    picture = cv2.imread(str(path))
    assert picture.shape[0] == 200 and picture.shape[1] >= 200 + 128  # board + zoom panel
    # a heatmap (coloured) over the failed region, none over the clean one
    hot = picture[40:70, 30:70].astype(int)
    cold = picture[125:145, 125:145].astype(int)
    assert np.abs(hot[..., 0] - hot[..., 2]).max() > 60
    assert np.abs(cold[..., 0] - cold[..., 2]).max() < 10
    assert (
        save_explanation(tmp_path / "c.png", image, crops[1:], regions[1:], TorchCam(Toy())) is None
    )
    with pytest.raises(ValueError):
        render_board(image, regions, np.zeros((1, 64, 64), np.float32))


@pytest.mark.parametrize("arch", ["small", "efficientnet_lite0"])
def test_openvino_cam_matches_the_torch_cam(arch: str, tmp_path: Path) -> None:
    """A worker serving with OpenVINO explains from the IR, without torch: the same maps."""
    from inspection.model.registry import ModelCard, save_model

    torch.manual_seed(1)
    module = build_model(arch, 7, pretrained=False)  # type: ignore[arg-type]
    card = ModelCard(version=f"cam-{arch}", arch=arch, input_size=64)  # type: ignore[arg-type]
    model_dir = save_model(module, card, tmp_path)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(5, 3, 64, 64), dtype=np.uint8)
    expected = TorchCam(module).maps(crops)
    got = OpenVINOCam(model_dir).maps(crops)
    assert got.shape == expected.shape == (5, 64, 64)
    scale = float(np.abs(expected).max())
    assert scale > 0
    assert np.abs(got - expected).max() <= 1e-3 * scale
    # the chosen class is honoured, and normalised maps agree too
    np.testing.assert_allclose(
        normalise_maps(OpenVINOCam(model_dir).maps(crops, classes=[3] * 5)),
        normalise_maps(TorchCam(module).maps(crops, classes=[3] * 5)),
        atol=1e-3,
    )
    assert OpenVINOCam(model_dir).maps(crops[:0]).shape == (0, 64, 64)


@pytest.mark.parametrize("backend", ["openvino", "torch"])
def test_heatmaps_from_the_served_inference_match_a_separate_cam_model(
    backend: str, tmp_path: Path
) -> None:
    """A worker explains from the feature maps of the inference that decided: the same
    probabilities as a plain classifier, and the same maps as a second CAM model, with one
    forward pass."""
    from inspection.backends import FeatureClassifier, load_classifier
    from inspection.explain import Explainer
    from inspection.model.registry import ModelCard, save_model

    torch.manual_seed(2)
    module = build_model("small", 7, pretrained=False)
    model_dir = save_model(module, ModelCard(version="served-cam", arch="small"), tmp_path)
    crops = np.random.default_rng(3).integers(0, 256, size=(6, 3, 64, 64), dtype=np.uint8)
    served = load_classifier(model_dir, backend=backend, features=True)  # type: ignore[arg-type]
    assert isinstance(served, FeatureClassifier)
    probs, features = served.predict_with_features(crops)
    plain = load_classifier(model_dir, backend=backend)  # type: ignore[arg-type]
    np.testing.assert_allclose(probs, plain.predict_proba(crops), atol=1e-5)
    assert features.shape[0] == 6 and features.ndim == 4
    regions = [
        RegionVerdict(box=Box(x1=10 * i, y1=10, x2=10 * i + 30, y2=40), score=0.9, type_score=0.9,
                      defect_type=DefectType.SHORT)
        for i in range(6)
    ]  # fmt: skip
    from inspection.cam import cam_from_features

    maps = cam_from_features(features, served.cam_weight, probs.argmax(1), 64)  # type: ignore[arg-type]
    expected = TorchCam(module).maps(crops)
    scale = float(np.abs(expected).max())
    assert np.abs(maps - expected).max() <= 1e-3 * scale
    image = np.full((200, 200), 255, np.uint8)
    explainer = Explainer(model_dir, served=served)
    assert explainer.uses_served_features and explainer.cam is None
    path = explainer.save(tmp_path / "e.png", image, crops, regions, features=features, probs=probs)
    assert path is not None and cv2.imread(str(path)) is not None
    with pytest.raises(ValueError, match="features"):
        explainer.save(tmp_path / "f.png", image, crops, regions)
