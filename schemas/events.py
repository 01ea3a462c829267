"""Message models. Every message carries `schema_version`; timestamps are timezone-aware UTC."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

SCHEMA_VERSION: Literal[1] = 1
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
"""Identifiers hold no control characters (a NUL cannot even be stored in PostgreSQL text)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class DefectType(StrEnum):
    """DeepPCB's six defect types; the value is the name DeepPCB's evaluation script uses."""

    OPEN = "open"
    SHORT = "short"
    MOUSEBITE = "mousebite"
    SPUR = "spur"
    COPPER = "copper"  # spurious copper
    PIN_HOLE = "pin-hole"

    @property
    def deeppcb_id(self) -> int:
        """DeepPCB's numeric type id (1 open … 6 pin-hole)."""
        return list(DefectType).index(self) + 1

    @classmethod
    def from_deeppcb_id(cls, type_id: int) -> DefectType:
        if not 1 <= type_id <= len(cls):
            raise ValueError(f"DeepPCB defect type id must be 1..6, got {type_id}")
        return list(cls)[type_id - 1]


@dataclass(frozen=True)
class GroundTruth:
    """A labelled defect: its box and type (from a data set, a generator or a reviewer)."""

    box: Box
    defect_type: DefectType


class VerdictLabel(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    REVIEW = "review"


class _Message(BaseModel):
    # bytes travel as base64 in JSON, both ways
    model_config = ConfigDict(
        extra="forbid", frozen=True, ser_json_bytes="base64", val_json_bytes="base64"
    )


class Box(_Message):
    """An axis-aligned box in image pixels: [x1, x2) × [y1, y2), top-left origin."""

    x1: Annotated[int, Field(ge=0)]
    y1: Annotated[int, Field(ge=0)]
    x2: Annotated[int, Field(gt=0)]
    y2: Annotated[int, Field(gt=0)]

    @model_validator(mode="after")
    def _ordered(self) -> Box:
        if self.x2 <= self.x1 or self.y2 <= self.y1:
            raise ValueError(
                f"box corners out of order: ({self.x1},{self.y1})-({self.x2},{self.y2})"
            )
        return self

    @property
    def area(self) -> int:
        return (self.x2 - self.x1) * (self.y2 - self.y1)

    def intersection(self, other: Box) -> int:
        """The area (px²) the two boxes share; 0 when disjoint."""
        ix = max(0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0, min(self.y2, other.y2) - max(self.y1, other.y1))
        return ix * iy

    def iou(self, other: Box) -> float:
        inter = self.intersection(other)
        union = self.area + other.area - inter
        return inter / union if union else 0.0


class ImageRef(_Message):
    """An image, either inline (base64 in JSON) or by claim-check URI to an object store."""

    media_type: Literal["image/png", "image/jpeg", "image/bmp", "image/tiff"] = "image/png"
    data: bytes | None = Field(default=None, description="inline image bytes (base64 in JSON)")
    uri: str | None = Field(
        default=None, description="claim-check URI, e.g. file:///store/ab/cd.png"
    )
    sha256: str | None = Field(default=None, description="hex digest of the image bytes")

    @model_validator(mode="after")
    def _one_source(self) -> ImageRef:
        if (self.data is None) == (self.uri is None):
            raise ValueError("an image needs exactly one of `data` (inline) or `uri` (claim-check)")
        return self


class FlaggedBoard(_Message):
    """A board a line test machine flagged (AOI, flying probe, ICT), with its image."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(default_factory=new_id, min_length=1, max_length=64, pattern=PRINTABLE)
    line: str = Field(min_length=1, max_length=64, pattern=PRINTABLE)
    machine: str = Field(min_length=1, max_length=64, pattern=PRINTABLE)
    product: str = Field(min_length=1, max_length=64, pattern=PRINTABLE)
    board_serial: str = Field(min_length=1, max_length=128, pattern=PRINTABLE)
    inspected_at: AwareDatetime = Field(default_factory=utc_now)
    published_at: AwareDatetime = Field(default_factory=utc_now)
    image: ImageRef
    template_id: str | None = Field(
        default=None,
        max_length=128,
        description="id of the aligned defect-free reference template in the template store",
    )
    flagged_regions: list[Box] = Field(default_factory=list, description="what the machine flagged")

    def key(self) -> bytes:
        """Kafka key: line and serial, so that one board's events stay in order."""
        return f"{self.line}:{self.board_serial}".encode()


class RegionVerdict(_Message):
    box: Box
    defect_type: DefectType | None = Field(
        description="None when the region looks defect-free, or an anomaly model's region (it "
        "has no defect types)"
    )
    score: Annotated[float, Field(ge=0.0, le=1.0)] = Field(description="P(defective)")
    type_score: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        description="probability of `defect_type` (of 'no defect' when defect_type is None)"
    )


class StageTimings(_Message):
    decode_ms: float = 0.0
    roi_ms: float = 0.0
    classify_ms: float = 0.0
    explain_ms: float = 0.0
    total_ms: float = 0.0


class Verdict(_Message):
    """The board's verdict, for the MES and the audit store."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str
    line: str
    machine: str
    product: str
    board_serial: str
    verdict: VerdictLabel
    board_score: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        description="P(board defective): the highest region score, 0 without candidates"
    )
    regions: list[RegionVerdict]
    roi_method: Literal["reference", "recipe", "locator", "anomaly", "none"] = Field(
        description="reference: against the product's template; recipe: design rules, no template "
        "named; locator: a learned region network, no template; anomaly: the whole image against "
        "a model of good images (regions without a defect type); none: not inspected (a missing "
        "template on a product set to send such boards to review)"
    )
    model_version: str
    threshold_version: str
    pass_below: float
    fail_at_or_above: float
    timings: StageTimings
    worker: str
    inspected_at: AwareDatetime
    decided_at: AwareDatetime = Field(default_factory=utc_now)
    explanation_uri: str | None = Field(
        default=None,
        description="PNG of the class-activation heatmaps of the failed or doubtful regions",
    )
    event_sha256: str | None = Field(
        default=None,
        description="SHA-256 of the decided event (its canonical JSON): a redelivered event gets "
        "this same verdict; the same event_id with another payload is a conflict (dead letter)",
    )
    template_id: str | None = Field(
        default=None, description="the reference template the board was compared with"
    )
    image_uri: str | None = Field(
        default=None,
        description="where a person finds the board image: kept for boards sent to review or "
        "drawn for the audit sample (the event's claim check, or a copy of an inline image)",
    )


class ReviewOutcome(_Message):
    """What a person at the verification station (or the MES) found the board to be."""

    schema_version: Literal[1] = SCHEMA_VERSION
    outcome_id: str = Field(default_factory=new_id)
    event_id: str
    line: str
    board_serial: str
    defective: bool
    defect_types: list[DefectType] = Field(default_factory=list)
    regions: list[Box] = Field(default_factory=list)
    reviewer: str
    reviewed_at: AwareDatetime = Field(default_factory=utc_now)


class DeadLetter(_Message):
    """A message that could not be processed, kept whole with the stage and reason."""

    schema_version: Literal[1] = SCHEMA_VERSION
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    stage: Literal[
        "decode",
        "validate",
        "product",
        "image",
        "template",
        "roi",
        "classify",
        "anomaly",
        "explain",
        "conflict",
        "sink",
    ] = Field(description="where it failed; see the README's dead-letter stages")
    reason: str
    event_id: str | None = None
    original_b64: str = Field(
        default="", description="the original message value, base64 (empty when claim-checked)"
    )
    original_uri: str | None = Field(
        default=None,
        description="claim check of the original when it was too large to travel inline "
        "(over images.inline_max_bytes): a dead letter must fit through the broker",
    )
    original_bytes: int | None = Field(default=None, description="size of the original message")
    worker: str
    failed_at: AwareDatetime = Field(default_factory=utc_now)


class Alert(_Message):
    """A drift alert: what drifted (metric and scope), by how much against what, since when."""

    schema_version: Literal[1] = SCHEMA_VERSION
    alert_id: str = Field(default_factory=new_id)
    metric: Literal["fnr", "fpr", "score_psi", "candidates_psi", "review_rate"] = Field(
        description="label-based (fnr, fpr) or label-free (score_psi, candidates_psi, review_rate)"
    )
    line: str
    model_version: str | None = None
    value: float = Field(description="the metric over the current window")
    baseline: float = Field(description="the reference value (model card, config or reference)")
    limit: float = Field(description="the alert fires when `lower` (or `value` for PSI) clears it")
    lower: float | None = Field(default=None, description="Wilson interval lower bound")
    upper: float | None = Field(default=None, description="Wilson interval upper bound")
    window: int = Field(ge=1, description="boards (or labelled boards) in the current window")
    since: AwareDatetime = Field(description="decision time of the oldest board in the window")
    trigger_event_id: str | None = Field(
        default=None, description="the board whose arrival made the window clear the limit"
    )
    message: str
    raised_at: AwareDatetime = Field(default_factory=utc_now)


MESSAGE_MODELS: dict[str, type[BaseModel]] = {
    "FlaggedBoard": FlaggedBoard,
    "Verdict": Verdict,
    "ReviewOutcome": ReviewOutcome,
    "DeadLetter": DeadLetter,
    "Alert": Alert,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema (serialization mode: what travels on the wire) of every message."""
    return {
        name: model.model_json_schema(mode="serialization")
        for name, model in MESSAGE_MODELS.items()
    }
