"""The protocol every inference backend implements (no heavy imports here)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Classifier(Protocol):
    """A loaded region classifier.

    ``predict_proba`` takes uint8 crops shaped (N, 3·V, S, S) with S == ``input_size``
    and V == ``len(crop_sides)`` (channels of each view: board crop, aligned template crop,
    absolute difference), cut by :func:`inspection.crops.crops_for`, and returns float32
    softmax probabilities shaped (N, NUM_CLASSES), in the order of
    :data:`inspection.model.labels.CLASSES`. N may be 0 (returns shape (0, NUM_CLASSES)).
    ``crop_min_side`` is the first view's (where a heatmap of its crops lies on the board).
    """

    version: str
    input_size: int
    crop_min_side: int
    crop_sides: tuple[int, ...]

    def predict_proba(self, crops: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class FeatureClassifier(Classifier, Protocol):
    """A classifier that also returns the last feature maps of the inference that decided,
    for class-activation heatmaps without a second model (:mod:`inspection.cam`).

    ``cam_weight``: the (classes, channels) weight of the final linear layer, or None when
    the classifier was loaded without its feature output."""

    cam_weight: np.ndarray | None

    def predict_with_features(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
