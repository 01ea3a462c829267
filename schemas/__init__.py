"""Versioned message contracts of linecheck (Pydantic v2).

Importing this package is cheap (no Kafka, torch or OpenCV): producers, workers and any
integrating team share these models, exported as JSON Schema by `linecheck schemas export`.
"""

from schemas.events import (
    SCHEMA_VERSION,
    Alert,
    Box,
    DeadLetter,
    DefectType,
    FlaggedBoard,
    ImageRef,
    RegionVerdict,
    ReviewOutcome,
    StageTimings,
    Verdict,
    VerdictLabel,
)
from schemas.topics import Topics

__all__ = [
    "SCHEMA_VERSION",
    "Alert",
    "Box",
    "DeadLetter",
    "DefectType",
    "FlaggedBoard",
    "ImageRef",
    "RegionVerdict",
    "ReviewOutcome",
    "StageTimings",
    "Topics",
    "Verdict",
    "VerdictLabel",
]
