"""OpenVINO backend: compiles a registry folder's ``model.xml`` on CPU, GPU or NPU."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
import openvino as ov

from inspection.model.preprocess import preprocess, softmax
from inspection.model.registry import IR_INT8_XML, IR_XML, load_card
from inspection.model.topology import add_bias

_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


class OpenVINOClassifier:
    """:class:`inspection.backends.base.Classifier` on OpenVINO.

    ``device``: an OpenVINO device name ("CPU", "GPU", "GPU.1", "NPU", "AUTO:GPU,CPU", ...).
    ``threads``: CPU inference threads (CPU only). ``hint``: "latency" runs each call as one
    request; "throughput" splits a large batch over the device's optimal number of parallel
    requests. ``precision``: the inference precision hint; by default f32 on the CPU (so
    that results match the torch model; a CPU with bf16 support would otherwise run bf16) and
    the device's default elsewhere. ``variant``: "fp32" reads ``model.xml``, "int8" the NNCF
    post-training-quantized ``model_int8.xml`` beside it. ``features``: also return the
    last feature maps (the input of the global pooling, an extra output of the IR), so that
    class-activation heatmaps come from the same inference that decided
    (:meth:`predict_with_features`, :attr:`cam_weight`). A card's topology prior is added
    to the logits before the softmax (:func:`inspection.model.topology.add_bias`).
    """

    def __init__(
        self,
        model_dir: Path,
        device: str = "CPU",
        threads: int | None = None,
        hint: Literal["latency", "throughput"] = "latency",
        precision: Literal["f32", "bf16", "f16"] | None = None,
        variant: Literal["fp32", "int8"] = "fp32",
        features: bool = False,
    ) -> None:
        model_dir = Path(model_dir)
        card = load_card(model_dir)
        self.card = card
        self.version: str = card.version
        self.input_size: int = card.input_size
        self.crop_min_side: int = card.crop_min_side
        self.crop_sides: tuple[int, ...] = card.crop_sides
        self.classes: tuple[str, ...] = card.classes
        self.topology_bias = card.topology()
        self.device = device
        if hint not in _HINTS:
            raise ValueError(f"hint must be one of {list(_HINTS)}, got {hint!r}")
        on_cpu = device.upper().startswith("CPU")
        config: dict[str, Any] = {"PERFORMANCE_HINT": _HINTS[hint]}
        if threads is not None:
            if not on_cpu:
                raise ValueError(f"threads applies to the CPU device only, not {device!r}")
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            config["INFERENCE_NUM_THREADS"] = threads
        if precision is None and on_cpu:
            precision = "f32"
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        if variant not in ("fp32", "int8"):
            raise ValueError(f"variant must be 'fp32' or 'int8', got {variant!r}")
        self.variant = variant
        xml = model_dir / (IR_XML if variant == "fp32" else IR_INT8_XML)
        if not xml.is_file():
            hint_q = " (run `linecheck quantize` first)" if variant == "int8" else ""
            raise FileNotFoundError(f"no OpenVINO model {xml.name} in {model_dir}{hint_q}")
        core = ov.Core()
        model = core.read_model(xml)
        shape = model.inputs[0].get_partial_shape()
        expected = ov.PartialShape([-1, 3, self.input_size, self.input_size])
        if not shape.compatible(expected) or len(model.outputs) != 1:
            raise ValueError(
                f"{xml}: input shape {shape} does not fit the card's input_size "
                f"{self.input_size} (expected {expected}, one output)"
            )
        self.cam_weight: np.ndarray | None = None
        if features:
            from inspection.cam import pool_and_weight

            pool, self.cam_weight = pool_and_weight(model, xml)
            model.add_outputs([pool.input_value(0)])
        self._compiled = core.compile_model(model, device, config)
        self._request = self._compiled.create_infer_request()
        self._nreq = (
            max(1, int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            if hint == "throughput"
            else 1
        )
        self._queue: ov.AsyncInferQueue | None = (
            ov.AsyncInferQueue(self._compiled, self._nreq) if self._nreq > 1 else None
        )
        self._lock = threading.Lock()

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        return self._run(crops)[0]

    def predict_with_features(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, classes) and the last feature maps (N, C, h, w) of one inference
        (the classifier must be built with ``features=True``)."""
        if self.cam_weight is None:
            raise RuntimeError(f"model {self.version} was loaded without its feature output")
        probs, feats = self._run(crops)
        assert feats is not None
        return probs, feats

    def _run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = preprocess(crops, self.input_size)
        n = x.shape[0]
        with_features = self.cam_weight is not None
        if n == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32), (
                np.zeros((0, 0, 0, 0), np.float32) if with_features else None
            )
        with self._lock:
            if self._queue is not None and n >= 2 * self._nreq:
                outs = self._infer_parallel(x)
            else:
                self._request.infer({0: x})
                outs = [t.data.copy() for t in self._request.output_tensors]
        logits = outs[0]
        if logits.shape != (n, len(self.classes)):
            raise RuntimeError(
                f"model {self.version} returned logits {logits.shape}, expected "
                f"({n}, {len(self.classes)})"
            )
        probs = softmax(add_bias(logits, crops, self.topology_bias))
        return probs, (outs[1] if with_features else None)

    def _infer_parallel(self, x: np.ndarray) -> list[np.ndarray]:
        assert self._queue is not None
        chunks = np.array_split(x, self._nreq)
        results: list[list[np.ndarray] | None] = [None] * len(chunks)

        def done(request: ov.InferRequest, index: int) -> None:
            results[index] = [t.data.copy() for t in request.output_tensors]

        self._queue.set_callback(done)
        for i, chunk in enumerate(chunks):
            self._queue.start_async({0: np.ascontiguousarray(chunk)}, userdata=i)
        self._queue.wait_all()
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"OpenVINO returned no result for chunks {missing}")
        done_parts = [r for r in results if r is not None]
        return [np.concatenate([r[k] for r in done_parts]) for k in range(len(done_parts[0]))]
