"""INT8 OpenVINO IR by NNCF post-training quantization, saved beside the FP32 IR.

``model_int8.xml``/``.bin`` hold the same network with INT8 weights and activations, the
ranges calibrated on a sample of real crops. The input stays float32 preprocessed crops
(quantize/dequantize nodes sit inside the graph), so backends feed both variants the same.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from inspection.model.preprocess import preprocess
from inspection.model.registry import (
    IR_INPUT_NAME,
    IR_INT8_XML,
    IR_OUTPUT_NAME,
    IR_XML,
    load_card,
)


def quantize_int8(
    model_dir: Path, calibration_crops: np.ndarray, subset_size: int = 300, seed: int = 0
) -> Path:
    """Quantize ``<model_dir>/model.xml`` to INT8 with NNCF; returns the INT8 xml's path.

    ``calibration_crops``: uint8 (N, 3, S, S) crops like those served (a mix of defects and
    clean regions); up to ``subset_size`` of them, picked at random with ``seed``, set the
    activation ranges.
    """
    import nncf
    import openvino as ov

    model_dir = Path(model_dir)
    card = load_card(model_dir)
    x = preprocess(calibration_crops, card.input_size)
    if x.shape[0] == 0:
        raise ValueError("quantization needs at least one calibration crop")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(x.shape[0])[: min(subset_size, x.shape[0])]
    items = [x[i : i + 1] for i in pick]
    core = ov.Core()
    model = core.read_model(model_dir / IR_XML)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = nncf.quantize(
            model,
            nncf.Dataset(items),
            subset_size=len(items),
            preset=nncf.QuantizationPreset.MIXED,
        )
    quantized.inputs[0].get_tensor().set_names({IR_INPUT_NAME})
    quantized.outputs[0].get_tensor().set_names({IR_OUTPUT_NAME})
    out = model_dir / IR_INT8_XML
    ov.save_model(quantized, out, compress_to_fp16=False)
    return out
