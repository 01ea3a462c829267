"""The protocol every inference backend implements (no heavy imports here)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Classifier(Protocol):
    """A loaded region classifier.

    ``predict_proba`` takes uint8 crops shaped (N, 3, S, S) with S == ``input_size``
    (channels: board crop, aligned template crop, absolute difference) and returns float32
    softmax probabilities shaped (N, NUM_CLASSES), in the order of
    :data:`inspection.model.labels.CLASSES`. N may be 0 (returns shape (0, NUM_CLASSES)).
    """

    version: str
    input_size: int

    def predict_proba(self, crops: np.ndarray) -> np.ndarray: ...
