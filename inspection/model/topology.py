"""The topology prior: how a region changes the connectivity of the board, as a bias on the
classifier's logits.

PCB defect types are defined by connectivity: an *open* cuts a trace (one more copper piece,
the bare board on both sides joined), a *short* joins two traces (one copper piece less),
*spurious copper* is a new island, a *pin-hole* a new hole, while a *mousebite* or a *spur*
only changes a trace's outline. A CNN sees this only as texture, and on a board design it
has never seen it confuses exactly those pairs (mousebite ↔ open, short ↔ spur; BENCHMARKS.md
"Cross-validated accuracy"). So each crop gets a *signature*: the sign of the change in the
number of dark pieces (8-connected) and of light pieces (4-connected, the dual
connectivity) from the reference channel to the board channel, counting pieces of at least
``MIN_AREA`` pixels (a sliver cut off by the crop's edge or a scanner speck is not a
piece). The model card holds ``log p(signature | class)`` counted on the training crops
(:func:`likelihood_bias`), and every backend adds its row to the CNN's logits
(:func:`add_bias`), outside the exported graph: Bayes' rule with the signature as a second
piece of evidence. Where the CNN learned connectivity too this counts it twice; on a design
it has never seen, where its texture cues mislead, that is what overrules it. (Learning the
bias jointly with the network was tried and gained less: the network fits the training
designs by itself and leaves the bias little to learn.)

On a third of DeepPCB's truth boxes (crops as served, min area 8) the signature alone
separates the confused pairs: 85 % of opens are (+1 dark, −1 light) against 0 % of
mousebites (88 % of which are (0, 0)); 96 % of shorts lose a dark piece against 1 % of
spurs. It costs about 0.14 ms per crop (four connected-component passes on 64 × 64).
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_AREA = 8
"""Pixels a connected piece of a crop needs to count (at the crop's resolution)."""
BINARY_THRESHOLD = 128
"""Grey level splitting dark from light (DeepPCB's scans are binary; 128 is their middle)."""
SIGNATURES = 9
"""(sign of Δ dark pieces + 1) × 3 + (sign of Δ light pieces + 1)."""


def _pieces(mask: np.ndarray, connectivity: int) -> int:
    # 16-bit labels: about 3x faster than the default call on a 64x64 crop (<=4096 pieces)
    n, _labels, stats, _centroids = cv2.connectedComponentsWithStatsWithAlgorithm(
        mask, connectivity, cv2.CV_16U, cv2.CCL_DEFAULT
    )
    return int(np.count_nonzero(stats[1:n, cv2.CC_STAT_AREA] >= MIN_AREA))


def signatures(crops: np.ndarray) -> np.ndarray:
    """(N,) int64 signature in [0, 9) of uint8 crops (N, 3, S, S): board, reference, |diff|."""
    if crops.ndim != 4 or crops.shape[1] < 2 or crops.dtype != np.uint8:
        raise ValueError(f"crops must be uint8 (N, 3, S, S), got {crops.shape} {crops.dtype}")
    out = np.empty(len(crops), np.int64)
    for i, crop in enumerate(crops):
        board = (crop[0] < BINARY_THRESHOLD).astype(np.uint8)
        reference = (crop[1] < BINARY_THRESHOLD).astype(np.uint8)
        dark = _pieces(board, 8) - _pieces(reference, 8)
        light = _pieces(1 - board, 4) - _pieces(1 - reference, 4)
        out[i] = (int(np.sign(dark)) + 1) * 3 + int(np.sign(light)) + 1
    return out


def one_hot(crops: np.ndarray) -> np.ndarray:
    """(N, 9) float32 one-hot of :func:`signatures` (the boosted-tree head's extra columns)."""
    return np.eye(SIGNATURES, dtype=np.float32)[signatures(crops)]


def offsets(crops: np.ndarray, bias: np.ndarray | None, num_classes: int) -> np.ndarray:
    """(N, C) float32: each crop's row of ``bias`` (9, C), zeros when the model has no
    topology prior (``bias`` None)."""
    if bias is None:
        return np.zeros((len(crops), num_classes), np.float32)
    if bias.shape != (SIGNATURES, num_classes):
        raise ValueError(f"topology bias must be ({SIGNATURES}, {num_classes}), got {bias.shape}")
    return bias[signatures(crops)]


def add_bias(logits: np.ndarray, crops: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``logits`` (N, C) plus each crop's :func:`offsets`; the same array when the model has
    no topology prior."""
    if bias is None or len(logits) == 0:
        return logits
    return logits + offsets(crops, bias, logits.shape[1])


def likelihood_bias(
    signature: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 1.0
) -> np.ndarray:
    """(9, classes) float32 ``log p(signature | class)`` from training crops' signatures and
    labels, Laplace-smoothed by ``alpha`` (a class never seen gets the uniform row)."""
    if signature.shape != labels.shape or signature.ndim != 1:
        raise ValueError(f"signatures {signature.shape} and labels {labels.shape} must match")
    counts = np.zeros((SIGNATURES, num_classes))
    np.add.at(counts, (signature, labels), 1.0)
    p = (counts + alpha) / (counts.sum(axis=0, keepdims=True) + SIGNATURES * alpha)
    return np.log(p).astype(np.float32)


def as_rows(bias: np.ndarray | None) -> tuple[tuple[float, ...], ...] | None:
    """A bias as the model card stores it (``ModelCard.topology_bias``)."""
    return None if bias is None else tuple(tuple(float(v) for v in row) for row in bias)
