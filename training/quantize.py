"""INT8 OpenVINO IR by NNCF post-training quantization, saved beside the FP32 IR.

``model_int8.xml``/``.bin`` hold the same network with INT8 weights and activations, the
ranges calibrated on a sample of real crops. The input stays float32 preprocessed crops
(quantize/dequantize nodes sit inside the graph), so backends feed both variants the same.

Given labelled validation crops, NNCF's accuracy control keeps the layers whose quantization
costs the most in floating point until region accuracy (with the model's topology prior, as
served) is within ``max_drop`` of the FP32 model's.

Bias correction is NNCF's full one, not its default fast one: on three synthetic SmallCNNs the
fast correction cost up to 1.7 points of detection F-score on unseen boards (the full one
−0.3 to +0.4; BENCHMARKS.md "INT8 with NNCF's full bias correction"), in the same ~2 s.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from inspection.model.preprocess import preprocess
from inspection.model.registry import (
    IR_INPUT_NAME,
    IR_INT8_XML,
    IR_OUTPUT_NAME,
    IR_XML,
    load_card,
)
from inspection.model.topology import offsets


def quantize_int8(
    model_dir: Path,
    calibration_crops: np.ndarray,
    subset_size: int = 300,
    seed: int = 0,
    *,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    max_drop: float = 0.005,
    fast_bias_correction: bool = False,
) -> Path:
    """Quantize ``<model_dir>/model.xml`` to INT8 with NNCF; returns the INT8 xml's path.

    ``calibration_crops``: uint8 (N, 3, S, S) crops like those served (a mix of defects and
    clean regions); up to ``subset_size`` of them, picked at random with ``seed``, set the
    activation ranges. ``validation``: labelled crops (uint8 crops, class indices) on which
    the INT8 model's region accuracy may fall at most ``max_drop`` below the FP32 model's
    (NNCF accuracy control); without them, plain post-training quantization.
    ``fast_bias_correction``: NNCF's default, faster and rougher correction (for comparison).
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
        if validation is None:
            quantized = nncf.quantize(
                model,
                nncf.Dataset(items),
                subset_size=len(items),
                preset=nncf.QuantizationPreset.MIXED,
                fast_bias_correction=fast_bias_correction,
            )
        else:
            val_items, accuracy = _validation(
                validation, card.input_size, card.topology(), len(card.classes)
            )
            quantized = nncf.quantize_with_accuracy_control(
                model,
                nncf.Dataset(items),
                nncf.Dataset(val_items, lambda item: item[0]),
                accuracy,
                max_drop=max_drop,
                subset_size=len(items),
                preset=nncf.QuantizationPreset.MIXED,
                fast_bias_correction=fast_bias_correction,
            )
    quantized.inputs[0].get_tensor().set_names({IR_INPUT_NAME})
    quantized.outputs[0].get_tensor().set_names({IR_OUTPUT_NAME})
    out = model_dir / IR_INT8_XML
    ov.save_model(quantized, out, compress_to_fp16=False)
    return out


Item = tuple[np.ndarray, int, np.ndarray]


def _validation(
    validation: tuple[np.ndarray, np.ndarray],
    size: int,
    bias: np.ndarray | None,
    num_classes: int,
) -> tuple[list[Item], Callable[[Any, Iterable[Item]], tuple[float, list[float]]]]:
    """NNCF validation items (one preprocessed crop, its label, its prior row) and the
    function scoring a compiled model on them: region accuracy, and per crop 1 or 0."""
    crops, labels = validation
    if len(crops) != len(labels) or len(crops) == 0:
        raise ValueError(f"validation needs as many labels as crops (≥ 1), got {len(crops)} "
                         f"crops and {len(labels)} labels")  # fmt: skip
    x = preprocess(crops, size)
    rows = offsets(crops, bias, num_classes)
    items: list[Item] = [(x[i : i + 1], int(labels[i]), rows[i]) for i in range(len(x))]

    def accuracy(compiled: Any, data: Iterable[Item]) -> tuple[float, list[float]]:
        hits = [
            float((np.asarray(compiled(inputs)[0])[0] + row).argmax() == label)
            for inputs, label, row in data
        ]
        return float(np.mean(hits)), hits

    return items, accuracy


def quantize_deeppcb(
    model_dir: Path, data: Path, split: Path | None, seed: int, cache_dir: Path | None
) -> list[Path]:
    """:func:`quantize_int8` of a DeepPCB model from its training pairs' crops, validated on
    its validation pairs' (``split``, as in training); each network of a model of views on
    the crops of its own geometry. Returns the INT8 xml of each."""
    from inspection.model.views import view_dirs
    from training.crop_table import build_table
    from training.splits import samples_of, split_deeppcb

    samples = samples_of(data)
    train_s, val_s = split_deeppcb(samples, data, split)
    out = []
    for folder in view_dirs(model_dir):
        side = load_card(folder).crop_min_side
        table = build_table(data, samples, seed=seed, cache_dir=cache_dir, min_side=side)
        train_t = table.select(table.in_images([s.image_id for s in train_s]))
        val_t = table.select(table.in_images([s.image_id for s in val_s]))
        out.append(
            quantize_int8(folder, train_t.crops, seed=seed, validation=(val_t.crops, val_t.labels))
        )
    return out
