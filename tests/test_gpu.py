"""GPU workers: the torch CUDA path and OpenVINO's GPU device give the CPU's scores and
heatmap features. Skipped, with the reason, on machines without the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _crops(n: int = 48) -> np.ndarray:
    return np.random.default_rng(4).integers(0, 256, size=(n, 3, 64, 64), dtype=np.uint8)


def test_torch_cuda_scores_and_features_match_the_cpu(model_dir: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine (torch.cuda.is_available() is False)")
    from inspection.backends import load_classifier

    cpu = load_classifier(model_dir, backend="torch", device="cpu")
    gpu = load_classifier(model_dir, backend="torch", device="cuda")
    crops = _crops()
    np.testing.assert_allclose(gpu.predict_proba(crops), cpu.predict_proba(crops), atol=1e-4)
    p_cpu, f_cpu = cpu.predict_with_features(crops)  # type: ignore[attr-defined]
    p_gpu, f_gpu = gpu.predict_with_features(crops)  # type: ignore[attr-defined]
    np.testing.assert_allclose(p_gpu, p_cpu, atol=1e-4)
    np.testing.assert_allclose(f_gpu, f_cpu, atol=1e-3 * float(np.abs(f_cpu).max()))


def test_a_worker_configured_for_cuda_serves_on_the_gpu(model_dir: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine (torch.cuda.is_available() is False)")
    from infra.settings import load_settings
    from workers.model_swap import load_served

    settings = load_settings(model={"backend": "torch", "device": "cuda"})
    served = load_served(settings, model_dir)
    assert served.classifier.device.type == "cuda"  # type: ignore[attr-defined]
    assert served.explainer is not None and served.explainer.uses_served_features


def test_openvino_gpu_device_matches_the_cpu(model_dir: Path) -> None:
    import openvino as ov

    if not any(d.startswith("GPU") for d in ov.Core().available_devices):
        pytest.skip(f"no OpenVINO GPU device (available: {ov.Core().available_devices})")
    from inspection.backends.openvino_backend import OpenVINOClassifier

    cpu = OpenVINOClassifier(model_dir, device="CPU")
    gpu = OpenVINOClassifier(model_dir, device="GPU", precision="f32")
    crops = _crops()
    np.testing.assert_allclose(gpu.predict_proba(crops), cpu.predict_proba(crops), atol=1e-3)
