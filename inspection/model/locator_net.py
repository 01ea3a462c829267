"""The learned locator's network: a small fully convolutional encoder-decoder (plain torch)
mapping a board to a defect-region map at a quarter of its resolution.

Input (N, 3, H, W) float32 from :func:`inspection.locator.normalise` (the board and two
median differences), H and W multiples of 16; output logits (N, 1, H/4, W/4). Trained from
scratch: DeepPCB's boards are binarised line art, far from ImageNet, and a narrow stride-2
stem costs far less than EfficientNet-Lite0's early stages at full resolution. The encoder
reaches stride 16 with two dilated convolutions there, so one output cell sees ~200 px of
board around it: enough to tell a spur from a pad's corner."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from inspection.locator import HEAT_MAPS, LOCATOR_XML, head_of

IN_CHANNELS = 3  # the board and two median differences (inspection.locator.input_planes)
LOCATOR_INPUT_NAME = "board"
LOCATOR_OUTPUT_NAME = "region_logits"
DEFAULT_WIDTHS = (16, 32, 64, 96)  # channels of the stem and the three encoder stages


def _cbr(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class LocatorNet(nn.Module):
    """Stride-2 stem, three encoder stages (/4, /8, /16), FPN-style top-down path back to
    /4 (1×1 lateral projections added, then a 3×3 conv), ``outputs`` maps: one region logit
    map (``head = "region"``), or a centre logit map and four box maps (``"centre"``, see
    :func:`inspection.locator.boxes_from_centres`). About 0.2 M parameters and 1.5 G
    multiply-adds for a 640×640 board."""

    def __init__(
        self, widths: tuple[int, int, int, int] = DEFAULT_WIDTHS, outputs: int = 1
    ) -> None:
        super().__init__()
        self.widths = widths
        a, b, c, d = widths
        self.stem = _cbr(IN_CHANNELS, a, 2)
        self.enc1 = nn.Sequential(_cbr(a, b, 2), _cbr(b, b))
        self.enc2 = nn.Sequential(_cbr(b, c, 2), _cbr(c, c))
        self.enc3 = nn.Sequential(_cbr(c, d, 2), _cbr(d, d, dilation=2), _cbr(d, d, dilation=4))
        self.lat3 = nn.Conv2d(d, c, 1)
        self.dec2 = _cbr(c, c)
        self.lat2 = nn.Conv2d(c, b, 1)
        self.dec1 = _cbr(b, b)
        self.head = nn.Conv2d(b, outputs, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # start at a low defect prior (~1 %) so the first steps do not flood the map
        assert self.head.bias is not None
        heat = HEAT_MAPS[head_of(outputs)]
        nn.init.constant_(self.head.bias[:heat], -4.6)
        if outputs > heat:
            # a centre head's maps start at their biases (a kaiming start spreads the box
            # maps ±3 in log size, past where the box loss has any gradient); its log box
            # sizes at 4 cells (16 px), a defect's
            nn.init.normal_(self.head.weight, std=0.01)
            nn.init.zeros_(self.head.bias[heat:])
            nn.init.constant_(self.head.bias[heat + 2 :], math.log(4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.enc1(self.stem(x))  # /4
        f2 = self.enc2(f1)  # /8
        f3 = self.enc3(f2)  # /16
        up = F.interpolate(self.lat3(f3), scale_factor=2.0, mode="nearest")
        g2 = self.dec2(f2 + up)
        up = F.interpolate(self.lat2(g2), scale_factor=2.0, mode="nearest")
        return self.head(self.dec1(f1 + up))


def export_locator(module: nn.Module, out_dir: Path) -> Path:
    """``module`` as FP32 OpenVINO IR ``out_dir/locator.xml``, input (1, 3, H, W) with H
    and W dynamic (multiples of 16). Returns the xml's path."""
    import openvino as ov

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    try:
        example = torch.zeros((1, IN_CHANNELS, 256, 256), dtype=torch.float32)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            ov_model = ov.convert_model(
                module, example_input=example, input=[ov.PartialShape([1, IN_CHANNELS, -1, -1])]
            )
    finally:
        module.train(was_training)
    ov_model.inputs[0].get_tensor().set_names({LOCATOR_INPUT_NAME})
    ov_model.outputs[0].get_tensor().set_names({LOCATOR_OUTPUT_NAME})
    xml = out_dir / LOCATOR_XML
    ov.save_model(ov_model, xml, compress_to_fp16=False)
    return xml
