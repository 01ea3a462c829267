"""Backends: shared preprocessing, torch == OpenVINO, lazy imports, protocol."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inspection.backends import Classifier, load_classifier
from inspection.model.labels import NUM_CLASSES
from inspection.model.nets import build_model
from inspection.model.preprocess import preprocess, softmax
from inspection.model.registry import ModelCard, save_model

ROOT = Path(__file__).resolve().parents[1]


def _randomise_bn(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics, so that eval-mode BN is exercised by the comparison."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.fixture(scope="module", params=["small", "efficientnet_lite0"])
def saved_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    arch = request.param
    torch.manual_seed(0)
    module = build_model(arch, NUM_CLASSES, pretrained=arch == "efficientnet_lite0")
    if arch == "small":
        _randomise_bn(module, 0)
    card = ModelCard(version=f"test-{arch}", arch=arch, input_size=64)
    return save_model(module, card, tmp_path_factory.mktemp("models"))


def _crops(n: int, size: int = 64, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    board = (rng.random((n, size, size)) < 0.4).astype(np.uint8) * 255
    template = board.copy()
    template[:, 20:30, 20:30] = 255 - template[:, 20:30, 20:30]
    diff = np.abs(board.astype(np.int16) - template).astype(np.uint8)
    return np.stack([board, template, diff], axis=1)


def test_torch_and_openvino_agree(saved_model: Path) -> None:
    crops = _crops(16)
    pt = load_classifier(saved_model, backend="torch", threads=2)
    ov = load_classifier(saved_model, backend="openvino", threads=2)
    p_pt, p_ov = pt.predict_proba(crops), ov.predict_proba(crops)
    assert p_pt.dtype == p_ov.dtype == np.float32
    assert p_pt.shape == p_ov.shape == (16, NUM_CLASSES)
    np.testing.assert_allclose(p_pt.sum(1), 1.0, atol=1e-5)
    assert p_pt.max() < 0.999  # not saturated: the comparison means something
    np.testing.assert_allclose(p_ov, p_pt, atol=1e-4, rtol=0)
    # batch 1 and the full batch give the same answer (dynamic batch dimension)
    np.testing.assert_allclose(ov.predict_proba(crops[3:4]), p_ov[3:4], atol=1e-5, rtol=0)
    assert pt.version == ov.version == saved_model.name
    assert pt.input_size == ov.input_size == 64


def test_openvino_throughput_hint_splits_batches(saved_model: Path) -> None:
    crops = _crops(40)
    lat = load_classifier(saved_model, backend="openvino", hint="latency")
    thr = load_classifier(saved_model, backend="openvino", hint="throughput")
    np.testing.assert_allclose(thr.predict_proba(crops), lat.predict_proba(crops), atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_empty_batch_and_bad_input(saved_model: Path, backend: str) -> None:
    clf = load_classifier(saved_model, backend=backend)  # type: ignore[arg-type]
    assert isinstance(clf, Classifier)
    empty = clf.predict_proba(np.zeros((0, 3, 64, 64), np.uint8))
    assert empty.shape == (0, NUM_CLASSES) and empty.dtype == np.float32
    with pytest.raises(ValueError, match="64x64"):
        clf.predict_proba(np.zeros((2, 3, 32, 32), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        clf.predict_proba(np.zeros((2, 3, 64, 64), np.float32))


def test_load_classifier_rejects_bad_arguments(saved_model: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        load_classifier(saved_model, backend="tensorrt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CPU device only"):
        load_classifier(saved_model, backend="openvino", device="GPU", threads=2)
    with pytest.raises(ValueError, match="threads"):
        load_classifier(saved_model, backend="torch", threads=0)
    with pytest.raises(FileNotFoundError, match=r"model\.json"):
        load_classifier(saved_model / "nope", backend="openvino")


def test_preprocess_scaling() -> None:
    x = np.array([0, 127, 128, 255], np.uint8).repeat(4).reshape(1, 1, 4, 4).repeat(3, 1)
    y = preprocess(x)
    assert y.dtype == np.float32 and y.shape == x.shape and y.flags.c_contiguous
    assert y.min() == -1.0 and y.max() == 1.0
    np.testing.assert_allclose(y, (x.astype(np.float64) - 127.5) / 127.5, atol=1e-7)


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (np.zeros((2, 3, 64, 64), np.float32), TypeError, "uint8"),
        (np.zeros((2, 3, 64, 64), np.int64), TypeError, "uint8"),
        ([[0]], TypeError, "numpy array"),
        (np.zeros((3, 64, 64), np.uint8), ValueError, r"\(N, 3, S, S\)"),
        (np.zeros((2, 1, 64, 64), np.uint8), ValueError, r"\(N, 3, S, S\)"),
        (np.zeros((2, 64, 64, 3), np.uint8), ValueError, r"\(N, 3, S, S\)"),
        (np.zeros((2, 3, 64, 48), np.uint8), ValueError, r"\(N, 3, S, S\)"),
    ],
)
def test_preprocess_rejects_bad_input(bad: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        preprocess(bad)  # type: ignore[arg-type]


def test_preprocess_checks_input_size() -> None:
    with pytest.raises(ValueError, match="expects 64x64"):
        preprocess(np.zeros((1, 3, 32, 32), np.uint8), input_size=64)


def test_softmax_is_stable() -> None:
    p = softmax(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], np.float32))
    expected = np.array([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], np.float32)
    np.testing.assert_allclose(p, expected, atol=1e-6)
    assert softmax(np.zeros((0, 7), np.float32)).shape == (0, 7)


def test_importing_backends_imports_neither_torch_nor_openvino() -> None:
    code = (
        "import sys\n"
        "import inspection.backends, inspection.backends.base\n"
        "import inspection.model.registry, inspection.model.preprocess, inspection.model.labels\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'openvino'))\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
