"""Class-activation maps (CAM, Zhou et al. 2016) for the region classifier.

Both architectures end in global average pooling and one linear layer, so the evidence for
class ``c`` at feature position (i, j) is ``sum_k weight[c, k] * features[k, i, j]`` (the
logit of ``c`` is exactly that map's mean plus the bias). Upsampled to the crop, it shows
which pixels made the classifier call a region what it called it.

Two implementations of one small protocol, :class:`CamModel`:

- :class:`OpenVINOCam`: the registered FP32 IR with its pre-pooling feature map added as a
  second output, the linear layer's weights read from the IR; numpy for the rest. A worker
  serving with OpenVINO explains with it and never loads torch.
- :class:`TorchCam`: a torch module (training, evaluation pictures, the torch backend).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from inspection.model.preprocess import preprocess

if TYPE_CHECKING:
    from inspection.model.nets import ClassifierNet


class CamModel(Protocol):
    def maps(
        self, crops: np.ndarray, classes: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """Raw class evidence (N, S, S) float32 of each uint8 crop (N, 3, S, S) for its
        class (default: the predicted class)."""
        ...


def cam_from_features(
    features: np.ndarray, weight: np.ndarray, classes: np.ndarray, size: int
) -> np.ndarray:
    """(N, size, size) maps: ``weight[classes[n]] · features[n]`` upsampled bilinearly
    (pixel centres aligned, as torch's ``align_corners=False``)."""
    import cv2

    cams = np.einsum("nchw,nc->nhw", features.astype(np.float32), weight[classes])
    out = np.empty((len(cams), size, size), np.float32)
    for i, cam in enumerate(cams):
        out[i] = cv2.resize(cam, (size, size), interpolation=cv2.INTER_LINEAR)
    return out


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """Each map scaled to [0, 1]: negative evidence clipped to 0, then divided by the map's
    maximum (an all-negative map is all 0)."""
    out = np.clip(maps, 0.0, None)
    if len(out) == 0:
        return out.astype(np.float32)
    peak = out.reshape(len(out), -1).max(axis=1)
    return (out / np.where(peak > 0, peak, 1.0)[:, None, None]).astype(np.float32)


def _chosen(classes: Sequence[int] | np.ndarray | None, logits: np.ndarray) -> np.ndarray:
    if classes is None:
        return np.asarray(logits.argmax(1), np.int64)
    idx = np.asarray(classes, np.int64)
    if idx.shape != (len(logits),):
        raise ValueError(f"classes must hold one index per crop, got {idx.shape}")
    return idx


class TorchCam:
    """CAM of a torch :class:`ClassifierNet` (evaluated in eval mode, restored after)."""

    def __init__(self, module: ClassifierNet) -> None:
        self.module = module

    def maps(
        self, crops: np.ndarray, classes: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        import torch

        size = crops.shape[-1]
        if crops.shape[0] == 0:
            return np.zeros((0, size, size), np.float32)
        weight_t = self.module.classifier.weight
        x = torch.from_numpy(preprocess(crops)).to(weight_t.device)
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.inference_mode():
                feats = self.module.features(x)
                logits = self.module.classifier(feats.mean(dim=(2, 3)))
                weight = weight_t.detach().float().cpu().numpy()
                features, logits_np = feats.float().cpu().numpy(), logits.float().cpu().numpy()
        finally:
            self.module.train(was_training)
        return cam_from_features(features, weight, _chosen(classes, logits_np), size)


class OpenVINOCam:
    """CAM from a model folder's FP32 OpenVINO IR, no torch.

    The IR ends ``ReduceMean(features) → MatMul(weight) [→ Add(bias)] → logits`` (how
    ``save_model`` exports both architectures); the feature map becomes a second output and
    ``weight`` is read from the MatMul's constant. A graph of another shape raises
    ``ValueError`` naming what was found.
    """

    def __init__(self, model_dir: Path, device: str = "CPU", threads: int | None = None) -> None:
        import openvino as ov

        from inspection.model.registry import IR_XML

        xml = Path(model_dir) / IR_XML
        core = ov.Core()
        model = core.read_model(xml)
        pool, weight = pool_and_weight(model, xml)
        self.weight = weight
        model.add_outputs([pool.input_value(0)])
        self._request = compile_f32(core, model, device, threads).create_infer_request()

    def maps(
        self, crops: np.ndarray, classes: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        x = preprocess(crops)
        size = crops.shape[-1]
        if x.shape[0] == 0:
            return np.zeros((0, size, size), np.float32)
        self._request.infer({0: x})
        logits = self._request.get_output_tensor(0).data.copy()
        features = self._request.get_output_tensor(1).data.copy()
        return cam_from_features(features, self.weight, _chosen(classes, logits), size)


def compile_f32(core: Any, model: Any, device: str, threads: int | None) -> Any:
    """``model`` compiled for one request at a time, f32 on the CPU (matching torch)."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if device.upper().startswith("CPU"):
        config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
    return core.compile_model(model, device, config)


def pool_and_weight(model: Any, xml: Path) -> tuple[Any, np.ndarray]:
    """The global-pooling node and the (classes, channels) weight of the final linear layer.

    Works on the FP32 IR and on NNCF's INT8 IR, where FakeQuantize nodes sit between the
    pooling and the MatMul and the weight is a dequantizing subgraph (int8 constant, convert,
    scale): its value is computed, so the heatmap uses the weight the served model uses."""
    node = model.outputs[0].get_node().input_value(0).get_node()  # behind the Result
    if node.get_type_name() == "Add":  # the bias
        node = node.input_value(0).get_node()
    if node.get_type_name() != "MatMul":
        raise ValueError(f"{xml}: expected the logits from a MatMul, found {node.get_type_name()}")
    pool = node.input_value(0).get_node()
    while pool.get_type_name() == "FakeQuantize":  # INT8: the pooled features re-quantized
        pool = pool.input_value(0).get_node()
    if pool.get_type_name() != "ReduceMean":
        raise ValueError(
            f"{xml}: expected MatMul(ReduceMean(features), weight), found "
            f"MatMul({pool.get_type_name()}, …)"
        )
    weight = _constant_value(node.input_value(1))
    if weight is None:
        raise ValueError(f"{xml}: the final MatMul's weight is not a constant expression")
    if not node.get_transpose_b():
        weight = weight.T  # stored (channels, classes)
    return pool, np.asarray(weight, np.float32)


def _constant_value(output: Any) -> np.ndarray | None:
    """The value of a graph output that depends on no parameter (a Constant, or e.g. an
    INT8 weight's Convert → Subtract → Multiply chain), or None when it needs an input."""
    import openvino as ov

    node = output.get_node()
    if node.get_type_name() == "Constant":
        return np.asarray(node.get_data(), np.float32)
    sub = ov.Model([output], [], "weight")
    if len(sub.get_parameters()) != 0:
        return None
    compiled = ov.Core().compile_model(sub, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled({})[0], np.float32)
