"""One flagged-board event in, one verdict (or dead-letter record) out.

Plain, synchronous, CPU-bound code: the FastStream handler runs it in a thread and tests
call it directly. The stages never import torch or openvino; the classifier is a plugin.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from infra.images import DEFAULT_POLICY, ImageDecodeError, ImagePolicy, decode_gray
from infra.object_store import ObjectStore, StorageError
from infra.stats import audit_sampled
from inspection.backends.base import Classifier
from inspection.model.registry import Thresholds
from inspection.products import ProductEntry, ProductError, ProductView
from inspection.roi import find_regions_aligned, find_regions_recipe
from inspection.verdict import board_score, decide, merge_pieces, region_verdicts
from schemas.events import (
    Box,
    DeadLetter,
    FlaggedBoard,
    RegionVerdict,
    StageTimings,
    Verdict,
    VerdictLabel,
)
from workers.messages import dead_letter, decode_failure, default_worker_name
from workers.served import ImageScorer, ServedModel
from workers.templates import TemplateCache, TemplateError

if TYPE_CHECKING:
    from inspection.explain import Explainer
    from workers.shadow import ShadowDecision


log = logging.getLogger("linecheck.worker")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def event_digest(event: FlaggedBoard) -> str:
    """SHA-256 of the event's canonical JSON: the identity of its payload (the same for a
    redelivery or a byte-different re-serialisation of the same event)."""
    return hashlib.sha256(event.model_dump_json().encode()).hexdigest()


class InspectionError(Exception):
    """Bad input found while inspecting; `stage` says where, the message says what."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


@dataclass(frozen=True)
class Prepared:
    """A board after decode, ROI and crops: what the classify stage takes."""

    event: FlaggedBoard
    model: ServedModel
    data: bytes
    image: np.ndarray
    template: np.ndarray | None  # aligned to the board
    roi_method: str  # reference | recipe | locator
    template_id: str | None  # the event's, or the product's default
    boxes: list[Box]
    crops: np.ndarray
    decode_ms: float
    roi_ms: float
    crop_ms: float


@dataclass(frozen=True)
class SourceInfo:
    topic: str
    partition: int | None = None
    offset: int | None = None
    key: bytes | None = None


class Inspector:
    def __init__(
        self,
        classifier: Classifier | None,
        thresholds: Thresholds,
        store: ObjectStore,
        worker: str | None = None,
        template_cache_size: int = 64,
        explainer: Explainer | None = None,
        policy: ImagePolicy = DEFAULT_POLICY,
        review_products: frozenset[str] = frozenset(),
        dead_letter_inline_max: int = 256 * 1024,
        audit_rate: float = 0.0,
        anomaly: ImageScorer | None = None,
    ) -> None:
        self.default = ServedModel(classifier, thresholds, explainer, anomaly=anomaly)
        self.store = store
        self.worker = worker or default_worker_name()
        self.templates = TemplateCache(store, template_cache_size)
        self.policy = policy
        self.dead_letter_inline_max = dead_letter_inline_max  # larger: claim-checked
        # products whose boards go to review, uninspected, when their template is missing
        self.review_products = review_products
        self.audit_rate = audit_rate  # boards drawn for audit keep their image, as review's do
        # products with an active model of their own (model stages); the rest get the default
        self.overrides: dict[str, ServedModel] = {}
        # shadow models per product ('*': every product); their decisions wait here for the
        # handler to store them after the batch (workers.shadow)
        self.shadows: dict[str, list[ServedModel]] = {}
        self.shadow_decisions: list[ShadowDecision] = []
        # the product registry (inspection.products); None: every product in reference mode
        # (a library or `linecheck inspect` use without the audit store)
        self.products: ProductView | None = None

    def serve(
        self,
        default: ServedModel,
        overrides: dict[str, ServedModel],
        shadows: dict[str, list[ServedModel]] | None = None,
    ) -> None:
        """Switch models (between batches: the handler calls it before inspecting one)."""
        self.default = default
        self.overrides = dict(overrides)
        self.shadows = dict(shadows or {})

    def take_shadow_decisions(self) -> list[ShadowDecision]:
        taken, self.shadow_decisions = self.shadow_decisions, []
        return taken

    def model_for(self, product: str) -> ServedModel:
        return self.overrides.get(product) or self.default

    def entry_for(self, event: FlaggedBoard) -> ProductEntry | None:
        """The event's product entry (None without a registry); an unregistered product, or
        one whose model does not serve its mode, is bad input."""
        if self.products is None:
            return None
        model = self.model_for(event.product)
        try:
            return self.products.entry(event.product, model.mode, model.version, event.published_at)
        except ProductError as exc:
            raise InspectionError("product", str(exc)) from exc

    def keep_image(self, event: FlaggedBoard, verdict: VerdictLabel, data: bytes) -> str | None:
        """Where the review station finds this board's image, for boards a person will see:
        sent to review or drawn for the audit sample (the sink draws with the same rule)."""
        if verdict is not VerdictLabel.REVIEW and not audit_sampled(
            event.event_id, self.audit_rate
        ):
            return None
        if event.image.uri is not None:
            return event.image.uri
        try:
            return self.store.put(data, event.image.media_type)
        except OSError as exc:  # a full disk costs the station its picture, not the verdict
            log.warning("board %s: image not kept for review: %s", event.event_id, exc)
            return None

    def template(self, template_id: str) -> np.ndarray:
        """The reference template by id, decoded under the image policy (cached by content:
        a replaced template takes effect at once)."""
        try:
            return self.templates.get(template_id, self.policy)
        except TemplateError as exc:
            raise InspectionError("template", str(exc)) from exc

    def explanation_path(self, event_id: str) -> Path:
        """Where a board's explanation JPEG goes (hashed: an id unsafe as a file name)."""
        safe = _SAFE_NAME.match(event_id)
        name = event_id if safe else hashlib.sha256(event_id.encode()).hexdigest()
        return self.store.root / "explanations" / f"{name}.jpg"

    def explain(
        self,
        event_id: str,
        image: np.ndarray,
        crops: np.ndarray,
        regions: list[RegionVerdict],
        model: ServedModel | None = None,
        served: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> str | None:
        """Heatmaps of the failed or doubtful regions as a JPEG in the object store; its URI.
        ``served``: (probs, feature maps) of the inference that decided, when the classifier
        returns its features."""
        model = model or self.model_for("")
        if model.explainer is None:
            return None
        path = self.explanation_path(event_id)
        try:
            probs, features = served if served is not None else (None, None)
            saved = model.explainer.save(
                path, image, crops, regions, model.thresholds, features=features, probs=probs
            )
        except Exception as exc:  # the verdict promises an explanation: dead-letter, not loop
            raise InspectionError("explain", f"{type(exc).__name__}: {exc}") from exc
        return saved.as_uri() if saved is not None else None

    def _not_inspected(self, event: FlaggedBoard, reason: str, data: bytes) -> Verdict:
        """A review verdict for a board that could not be inspected (see review_products)."""
        log.warning("board %s sent to review uninspected: %s", event.event_id, reason)
        return self.make_verdict(
            event,
            verdict=VerdictLabel.REVIEW,
            image_uri=self.keep_image(event, VerdictLabel.REVIEW, data),
            board_score=1.0,
            regions=[],
            roi_method="none",
            timings=StageTimings(),
        )

    def make_verdict(
        self, event: FlaggedBoard, model: ServedModel | None = None, **decided: Any
    ) -> Verdict:
        """A verdict on ``event``: its identity, the model and thresholds that decided, and
        ``decided``."""
        model = model or self.model_for(event.product)
        return Verdict(
            event_id=event.event_id,
            line=event.line,
            machine=event.machine,
            product=event.product,
            board_serial=event.board_serial,
            model_version=model.version,
            threshold_version=model.thresholds.threshold_version,
            pass_below=model.thresholds.pass_below,
            fail_at_or_above=model.thresholds.fail_at_or_above,
            worker=self.worker,
            inspected_at=event.inspected_at,
            event_sha256=event_digest(event),
            **{"template_id": event.template_id, **decided},
        )

    def prepare(self, event: FlaggedBoard) -> Prepared | Verdict:
        """Decode, ROI and crops: the board ready for the classify stage; or its verdict
        already (an anomaly product's, or a review product's whose template is missing)."""
        entry = self.entry_for(event)
        model = self.model_for(event.product)
        t0 = time.perf_counter()
        try:
            data = self.store.image_bytes(event.image, self.policy.max_bytes)
            image = decode_gray(data, what="board image", policy=self.policy)
        except (ImageDecodeError, StorageError) as exc:
            raise InspectionError("image", str(exc)) from exc
        except Exception as exc:  # anything else about these bytes: dead-letter, do not loop
            raise InspectionError("image", f"{type(exc).__name__}: {exc}") from exc
        decode_ms = (time.perf_counter() - t0) * 1e3
        if model.anomaly is not None:
            from workers.anomaly_inspection import anomaly_verdict

            return anomaly_verdict(self, event, model, data, image, decode_ms)
        template_id = event.template_id or (entry.template_id if entry else None)
        template = None
        if template_id and model.locator is None:
            try:
                template = self.template(template_id)
            except InspectionError as exc:
                if exc.stage == "template" and event.product in self.review_products:
                    return self._not_inspected(event, exc.reason, data)
                raise
        if template is not None and template.shape != image.shape:
            raise InspectionError(
                "image",
                f"board image is {image.shape[1]}x{image.shape[0]} but template "
                f"{template_id!r} is {template.shape[1]}x{template.shape[0]}",
            )
        t1 = time.perf_counter()
        try:
            if model.locator is not None:
                boxes, roi_method = model.locator.find_regions(image), "locator"
            elif template is not None:
                (boxes, template), roi_method = find_regions_aligned(image, template), "reference"
            else:
                boxes, roi_method = find_regions_recipe(image), "recipe"
        except ValueError as exc:  # the ROI stage rejects images it cannot work on
            raise InspectionError("roi", str(exc)) from exc
        except Exception as exc:  # anything else about this board: dead-letter, do not loop
            raise InspectionError("roi", f"{type(exc).__name__}: {exc}") from exc
        t2 = time.perf_counter()
        try:
            crops = model.crops(image, template, boxes)
        except Exception as exc:  # a poison board must not block its partition
            raise InspectionError("classify", f"{type(exc).__name__}: {exc}") from exc
        t3 = time.perf_counter()
        return Prepared(
            event, model, data, image, template, roi_method, template_id, boxes, crops,
            decode_ms=decode_ms, roi_ms=(t2 - t1) * 1e3, crop_ms=(t3 - t2) * 1e3,
        )  # fmt: skip

    @staticmethod
    def classify(model: ServedModel, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities of ``crops`` (any number of boards' crops at once), and the feature
        maps of the same inference when the explainer uses them."""
        try:
            if model.explainer is not None and model.explainer.uses_served_features:
                return model.classifier.predict_with_features(crops)  # type: ignore[union-attr]
            return model.require_classifier().predict_proba(crops), None
        except Exception as exc:  # a poison board must not block its partition
            raise InspectionError("classify", f"{type(exc).__name__}: {exc}") from exc

    def finish(
        self, p: Prepared, probs: np.ndarray, features: np.ndarray | None, classify_ms: float
    ) -> Verdict:
        """Regions, score, explanation and verdict of a prepared board from its crops'
        probabilities (and feature maps)."""
        t3 = time.perf_counter()
        try:
            if p.model.locator is not None:  # no template: the board's repeats stand in
                probs = p.model.locator.veto_repeats(p.image, p.boxes, probs)
                classify_ms += (time.perf_counter() - t3) * 1e3
                t3 = time.perf_counter()
            regions = region_verdicts(p.boxes, probs)
        except Exception as exc:
            raise InspectionError("classify", f"{type(exc).__name__}: {exc}") from exc
        score = board_score(regions)
        served = (probs, features) if features is not None else None
        explanation = self.explain(p.event.event_id, p.image, p.crops, regions, p.model, served)
        regions = merge_pieces(regions)  # after the heatmaps: they index the crops
        label = decide(p.model.thresholds, score)
        image_uri = self.keep_image(p.event, label, p.data)
        explain_ms = (time.perf_counter() - t3) * 1e3
        # after the clock: a shadow's cost is not the active model's
        shadows = [*self.shadows.get("*", []), *self.shadows.get(p.event.product, [])]
        if shadows:
            from workers.shadow import score_shadows

            self.shadow_decisions += score_shadows(
                p.event.event_id, self.worker, shadows, p.image, p.template, p.boxes, p.crops,
                p.model.require_classifier().crop_sides, p.model.crop_reference,
            )  # fmt: skip
        classify_ms += p.crop_ms
        return self.make_verdict(
            p.event,
            p.model,
            verdict=label,
            image_uri=image_uri,
            board_score=score,
            regions=regions,
            roi_method=p.roi_method,
            template_id=p.template_id if p.template is not None else None,
            timings=StageTimings(
                decode_ms=p.decode_ms,
                roi_ms=p.roi_ms,
                classify_ms=classify_ms,
                explain_ms=explain_ms,
                total_ms=p.decode_ms + p.roi_ms + classify_ms + explain_ms,
            ),
            explanation_uri=explanation,
        )

    def inspect(self, event: FlaggedBoard) -> Verdict:
        prepared = self.prepare(event)
        if isinstance(prepared, Verdict):
            return prepared
        t = time.perf_counter()
        probs, features = self.classify(prepared.model, prepared.crops)
        return self.finish(prepared, probs, features, (time.perf_counter() - t) * 1e3)

    def process(self, raw: bytes, source: SourceInfo) -> Verdict | DeadLetter:
        """Decode, validate and inspect; bad input becomes a DeadLetter naming what was wrong."""
        event_id: str | None = None
        try:
            event = FlaggedBoard.model_validate_json(raw)
            event_id = event.event_id
            return self.inspect(event)
        except ValidationError as exc:
            stage, reason = decode_failure(exc)
        except InspectionError as exc:
            stage, reason = exc.stage, exc.reason
        return self.dead_letter(raw, source, stage, reason, event_id)

    def dead_letter(
        self, raw: bytes, source: SourceInfo, stage: str, reason: str, event_id: str | None
    ) -> DeadLetter:
        """The dead letter of ``raw`` as this worker writes it (large originals claim-checked
        into its store)."""
        return dead_letter(
            raw,
            topic=source.topic,
            partition=source.partition,
            offset=source.offset,
            key=source.key,
            stage=stage,
            reason=reason,
            event_id=event_id,
            worker=self.worker,
            store=self.store,
            inline_max_bytes=self.dead_letter_inline_max,
        )
