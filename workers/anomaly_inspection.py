"""An anomaly product's board: the whole image scored against the model of good images
(``inspection.anomaly``), decided on the card's thresholds like a classifier's board score,
its anomalous areas as the verdict's regions (no defect type: an anomaly model has none),
and the anomaly map over the image as the explanation of a failed or doubtful board."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import cv2
import numpy as np

from inspection.verdict import decide
from schemas.events import FlaggedBoard, RegionVerdict, StageTimings, Verdict, VerdictLabel

if TYPE_CHECKING:
    from workers.inspector import Inspector
    from workers.served import ServedModel


def anomaly_verdict(
    inspector: Inspector,
    event: FlaggedBoard,
    model: ServedModel,
    data: bytes,
    image: np.ndarray,
    decode_ms: float,
) -> Verdict:
    from workers.inspector import InspectionError

    assert model.anomaly is not None
    t0 = time.perf_counter()
    try:
        result = model.anomaly.score(image)
    except ValueError as exc:  # the model rejects images it cannot score (too small)
        raise InspectionError("anomaly", str(exc)) from exc
    except Exception as exc:  # a poison board must not block its partition
        raise InspectionError("anomaly", f"{type(exc).__name__}: {exc}") from exc
    score_ms = (time.perf_counter() - t0) * 1e3
    label = decide(model.thresholds, result.score)
    regions = [
        RegionVerdict(box=box, defect_type=None, score=float(s), type_score=float(s))
        for box, s in zip(result.regions, result.region_scores, strict=True)
    ]
    t1 = time.perf_counter()
    explanation = None
    if model.anomaly_maps and label is not VerdictLabel.PASS:
        explanation = _save_map(inspector, event.event_id, image, result.amap)
    explain_ms = (time.perf_counter() - t1) * 1e3
    return inspector.make_verdict(
        event,
        model,
        verdict=label,
        image_uri=inspector.keep_image(event, label, data),
        board_score=float(result.score),
        regions=regions,
        roi_method="anomaly",
        template_id=None,
        timings=StageTimings(
            decode_ms=decode_ms,
            roi_ms=score_ms,
            explain_ms=explain_ms,
            total_ms=decode_ms + score_ms + explain_ms,
        ),
        explanation_uri=explanation,
    )


def _save_map(inspector: Inspector, event_id: str, image: np.ndarray, amap: np.ndarray) -> str:
    from inspection.anomaly import overlay
    from workers.inspector import InspectionError

    path = inspector.explanation_path(event_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, jpeg = cv2.imencode(".jpg", overlay(image, amap), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise ValueError("JPEG encoding failed")
        path.write_bytes(jpeg.tobytes())
    except Exception as exc:  # the verdict promises an explanation: dead-letter, not loop
        raise InspectionError("explain", f"{type(exc).__name__}: {exc}") from exc
    return path.as_uri()
