"""Inference backends as plugins behind one small protocol, :class:`Classifier`.

Importing this package imports neither torch nor OpenVINO; :func:`load_classifier` imports
only the backend it is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from inspection.backends.base import Classifier, FeatureClassifier

Backend = Literal["openvino", "torch"]
BACKENDS: tuple[Backend, ...] = ("openvino", "torch")
Variant = Literal["fp32", "int8"]
VARIANTS: tuple[Variant, ...] = ("fp32", "int8")

__all__ = [
    "BACKENDS",
    "VARIANTS",
    "Backend",
    "Classifier",
    "FeatureClassifier",
    "Variant",
    "load_classifier",
]


def load_classifier(
    model_dir: Path,
    backend: Backend = "openvino",
    device: str | None = None,
    threads: int | None = None,
    hint: Literal["latency", "throughput"] = "latency",
    variant: Variant = "fp32",
    features: bool = False,
) -> Classifier:
    """Load the model in ``model_dir`` (a registry folder) on the chosen backend.

    ``device``: OpenVINO device name ("CPU" by default; "GPU", "NPU", ...) or torch device
    ("cpu" by default, "cuda", "cuda:1"). ``threads``: inference threads on the CPU (OpenVINO:
    per compiled model; torch: process-wide ``torch.set_num_threads``). ``hint``: OpenVINO's
    performance hint (ignored by torch). ``variant``: "fp32" (default) or "int8", the NNCF
    post-training-quantized IR saved beside it (OpenVINO only). ``features``: OpenVINO also
    returns the last feature maps (for heatmaps; the torch backend always can). A model of
    several views (``ModelCard.views``) loads each view's network the same way.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    from inspection.model.registry import load_card

    card = load_card(model_dir)
    if card.views:  # one classifier per view, averaged
        from inspection.backends.views_backend import ViewsClassifier
        from inspection.model.views import view_dirs

        members = [
            load_classifier(d, backend, device, threads, hint, variant, features)
            for d in view_dirs(model_dir, card)
        ]
        return ViewsClassifier(card, members)
    if card.head == "gbdt":
        if backend != "openvino" or variant != "fp32":
            raise ValueError("a boosted-tree head is served on OpenVINO FP32 features only")
        from inspection.backends.gbdt_backend import GbdtClassifier

        return GbdtClassifier(model_dir, device=device or "CPU", threads=threads)
    if backend == "openvino":
        from inspection.backends.openvino_backend import OpenVINOClassifier

        return OpenVINOClassifier(
            model_dir,
            device=device or "CPU",
            threads=threads,
            hint=hint,
            variant=variant,
            features=features,
        )
    if backend == "torch":
        from inspection.backends.torch_backend import TorchClassifier

        if variant != "fp32":
            raise ValueError(f"the torch backend serves FP32 weights only, not {variant!r}")

        return TorchClassifier(model_dir, device=device or "cpu", threads=threads)
    raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
