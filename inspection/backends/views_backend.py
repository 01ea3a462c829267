"""A model of several views (:mod:`inspection.model.views`) served as one classifier: each
member network on its own view's channels of the crops, the probabilities averaged."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inspection.backends.base import Classifier, FeatureClassifier
from inspection.crops import split_views
from inspection.model.registry import ModelCard


class ViewsClassifier:
    """:class:`inspection.backends.base.FeatureClassifier` over ``members`` (one per view of
    ``card``, in its order). Each member's topology prior is applied by the member, as in
    training; the heatmaps are the first view's (its features, its CAM weight)."""

    def __init__(self, card: ModelCard, members: Sequence[Classifier]) -> None:
        sides = tuple(m.crop_min_side for m in members)
        if sides != card.views:
            raise ValueError(f"model {card.version}: members cut {sides} px, views {card.views}")
        if any(m.input_size != card.input_size for m in members):
            raise ValueError(f"model {card.version}: every view must take {card.input_size}² crops")
        self.card = card
        self.members = list(members)
        self.version: str = card.version
        self.input_size: int = card.input_size
        self.crop_min_side: int = card.crop_min_side
        self.crop_sides: tuple[int, ...] = card.crop_sides
        self.classes: tuple[str, ...] = card.classes
        first = self.members[0]
        self.cam_weight: np.ndarray | None = (
            first.cam_weight if isinstance(first, FeatureClassifier) else None
        )

    def _views(self, crops: np.ndarray) -> list[np.ndarray]:
        try:
            return split_views(crops, len(self.members))
        except ValueError as exc:
            raise ValueError(f"model {self.version}: {exc}") from exc

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        probs = [m.predict_proba(v) for m, v in zip(self.members, self._views(crops), strict=True)]
        return np.asarray(np.mean(probs, axis=0), np.float32)

    def predict_with_features(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The mean probabilities and the first view's feature maps."""
        views = self._views(crops)
        first = self.members[0]
        if not isinstance(first, FeatureClassifier):
            raise TypeError(f"model {self.version}: its first view has no feature output")
        probs, features = first.predict_with_features(views[0])
        rest = [m.predict_proba(v) for m, v in zip(self.members[1:], views[1:], strict=True)]
        return np.asarray(np.mean([probs, *rest], axis=0), np.float32), features
