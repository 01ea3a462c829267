"""The one preprocessing step shared by training, the torch backend and the OpenVINO backend.

It is deliberately *not* baked into the exported graph: every backend calls
:func:`preprocess` on the uint8 crops and feeds the result to the network, and every backend
turns the network's logits into probabilities with :func:`softmax`. numpy only.
"""

from __future__ import annotations

import numpy as np

PREPROCESSING = "float32 (x - 127.5) / 127.5 on uint8 crops (N, 3, S, S): board, template, |diff|"


def preprocess(crops_uint8: np.ndarray, input_size: int | None = None) -> np.ndarray:
    """uint8 crops (N, 3, S, S) -> C-contiguous float32 in [-1, 1], (x - 127.5) / 127.5.

    Raises ``TypeError`` for a non-array or a dtype other than uint8, ``ValueError`` for a
    shape other than (N, 3, S, S), or for S != ``input_size`` when one is given.
    """
    if not isinstance(crops_uint8, np.ndarray):
        raise TypeError(f"crops must be a numpy array, got {type(crops_uint8).__name__}")
    if crops_uint8.dtype != np.uint8:
        raise TypeError(
            f"crops must be uint8 (raw pixel values 0..255), got dtype {crops_uint8.dtype}"
        )
    shape = crops_uint8.shape
    if crops_uint8.ndim != 4 or shape[1] != 3 or shape[2] != shape[3]:
        raise ValueError(
            f"crops must be shaped (N, 3, S, S) (board, template, difference), got {shape}"
        )
    if shape[2] == 0:
        raise ValueError(f"crops must have a positive size S, got {shape}")
    if input_size is not None and shape[2] != input_size:
        raise ValueError(f"the model expects {input_size}x{input_size} crops, got {shape}")
    out = crops_uint8.astype(np.float32)
    out -= np.float32(127.5)
    out /= np.float32(127.5)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits as float32 (numerically stable)."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be shaped (N, C), got {logits.shape}")
    z = logits.astype(np.float32, copy=True)
    if z.shape[0] == 0:
        return z
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z
