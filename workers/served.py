"""A registered model as a worker serves it, for each inspection mode its card names:

- ``reference``: a region classifier; regions come from the ROI stage (template or recipe);
- ``locator``: a learned locator (``inspection.locator``) finds the regions without a
  template, then the folder's classifier types them;
- ``anomaly``: a PatchCore model of good images (``inspection.anomaly``) scores the whole
  image and maps where it differs; no classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from inspection.backends.base import Classifier
from inspection.crops import crops_for
from inspection.model.registry import ModelCard, Thresholds
from schemas.events import Box

if TYPE_CHECKING:
    from infra.settings import Settings
    from inspection.crops import CropGeometry
    from inspection.explain import Explainer

Mode = Literal["reference", "locator", "anomaly"]


class RegionLocator(Protocol):
    """Regions of interest from the board image alone (no template)."""

    def find_regions(self, image: np.ndarray) -> list[Box]: ...

    def veto_repeats(self, image: np.ndarray, boxes: list[Box], probs: np.ndarray) -> np.ndarray:
        """``probs`` with the regions that repeat the design on the board called "none"."""
        ...

    def crops(self, model: CropGeometry, image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """The classifier's template-free crops of ``boxes``, as ``model`` takes them."""
        ...

    @property
    def crop_reference(self) -> str:
        """What those crops are cut against ("median", "copy")."""
        ...


class AnomalyScore(Protocol):
    @property
    def score(self) -> float: ...  # in [0, 1], compared with the card's thresholds
    @property
    def amap(self) -> np.ndarray: ...  # float32 (H, W) in [0, 1], the image's size
    @property
    def regions(self) -> list[Box]: ...
    @property
    def region_scores(self) -> list[float]: ...


class ImageScorer(Protocol):
    """A model of good images: how far an image is from them, and where."""

    card: ModelCard

    def score(self, image: np.ndarray) -> AnomalyScore: ...


@dataclass(frozen=True)
class ServedModel:
    """A model as a worker serves it: its classifier (None for an anomaly model), its card's
    thresholds, its heatmaps, and the locator or anomaly scorer of its mode."""

    classifier: Classifier | None
    thresholds: Thresholds
    explainer: Explainer | None = None
    locator: RegionLocator | None = None
    anomaly: ImageScorer | None = None
    anomaly_maps: bool = False  # anomaly: save the map of failed or doubtful boards

    def __post_init__(self) -> None:
        if (self.classifier is None) == (self.anomaly is None):
            raise ValueError("a served model is a classifier or an anomaly model, not both")

    @property
    def version(self) -> str:
        if self.classifier is not None:
            return self.classifier.version
        assert self.anomaly is not None  # __post_init__
        return self.anomaly.card.version

    @property
    def mode(self) -> Mode:
        if self.anomaly is not None:
            return "anomaly"
        return "locator" if self.locator is not None else "reference"

    @property
    def crop_reference(self) -> str:
        """What its classifier's crops are cut against: "template" (``crops_for``: the
        aligned template, or the board median-filtered without one) or its locator's."""
        return "template" if self.locator is None else self.locator.crop_reference

    def crops(
        self, image: np.ndarray, template: np.ndarray | None, boxes: Sequence[Box]
    ) -> np.ndarray:
        """Its classifier's crops of ``boxes``: its locator's template-free ones, or else
        against ``template`` (:func:`inspection.crops.crops_for`)."""
        classifier = self.require_classifier()
        if self.locator is not None:
            return self.locator.crops(classifier, image, boxes)
        return crops_for(classifier, image, template, boxes)

    def require_classifier(self) -> Classifier:
        if self.classifier is None:
            raise ValueError(f"model {self.version} is an anomaly model: it has no classifier")
        return self.classifier


def load_served(settings: Settings, model_dir: Path) -> ServedModel:
    """A registered model as this worker serves it (backend, device and threads of the
    settings; heatmaps from the serving runtime when explanations are on)."""
    from inspection.model.registry import load_card

    card = load_card(model_dir)
    thresholds = card.require_thresholds()
    device = settings.model.device
    if card.mode == "anomaly":
        from inspection.anomaly import AnomalyDetector

        scorer = AnomalyDetector(model_dir, device=device or "CPU", threads=settings.model.threads)
        return ServedModel(None, thresholds, anomaly=scorer, anomaly_maps=settings.worker.explain)
    from inspection.backends import FeatureClassifier, load_classifier

    explain = settings.worker.explain
    classifier = load_classifier(
        model_dir,
        backend=settings.model.backend,
        device=device,
        threads=settings.model.threads,
        variant=settings.model.variant,
        features=explain,
    )
    explainer = None
    if explain:
        from inspection.explain import Explainer

        if isinstance(classifier, FeatureClassifier) and classifier.cam_weight is not None:
            # heatmaps from the deciding inference's own feature maps: no second model, and
            # the heatmap explains the model served (INT8 included)
            explainer = Explainer(model_dir, served=classifier)
        else:  # a boosted-tree head: the CNN's FP32 IR beside it
            explainer = Explainer(model_dir, device=device or "CPU", threads=settings.model.threads)
    locator = None
    if card.mode == "locator":
        from inspection.locator import Locator

        locator = Locator(model_dir, device=device or "CPU", threads=settings.model.threads)
    return ServedModel(classifier, thresholds, explainer, locator=locator)
