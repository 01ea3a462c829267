"""The station's JSON API, its image routes, and the health and metrics endpoints."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import PurePosixPath
from typing import Annotated, Any
from urllib.parse import urlparse

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from infra.object_store import StorageError
from linecheck.station import queries
from linecheck.station.auth import ApiUser, CurrentStation
from linecheck.station.health import readiness
from producers.publisher import PublishError
from schemas.events import PRINTABLE, Box, DefectType, ReviewOutcome

router = APIRouter()

_MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".bmp": "image/bmp", ".tif": "image/tiff"}


class ReviewIn(BaseModel):
    """`POST /api/reviews`: the fields of a ReviewOutcome. `line` and `board_serial` default
    to the audited board's; `reviewer` is the signed-in account (another name is refused)."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=64, pattern=PRINTABLE)
    defective: bool
    defect_types: list[DefectType] = Field(default_factory=list)
    regions: list[Box] = Field(default_factory=list)
    outcome_id: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=PRINTABLE,
        description="idempotency key: the same id twice is one outcome",
    )  # fmt: skip
    line: str | None = None
    board_serial: str | None = None
    reviewer: str | None = None
    reviewed_at: AwareDatetime | None = None


@router.get("/healthz")
def healthz(st: CurrentStation) -> dict[str, Any]:
    """Liveness: the web process answers."""
    return {"status": "ok", "pid": os.getpid(), "since": st.started_at.isoformat()}


@router.get("/readyz")
def readyz(st: CurrentStation) -> JSONResponse:
    ok, body = readiness(st.settings, st.engine)
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics: the whole supervised group's when run under `linecheck up`."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/review-queue")
def api_review_queue(
    st: CurrentStation,
    _user: ApiUser,
    line: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[dict[str, Any]]:
    """Boards awaiting a person, oldest first (sent to review, or drawn for audit)."""
    return queries.review_queue(st.engine, limit=limit, line=line, exclude=st.pending())


@router.get("/api/boards/{event_id}")
def api_board(event_id: str, st: CurrentStation, _user: ApiUser) -> dict[str, Any]:
    found = queries.board(st.engine, event_id)
    if found is None:
        raise HTTPException(404, f"no audited board with event id {event_id!r}")
    found["pending_outcome"] = event_id in st.pending()
    return found


@router.post("/api/reviews", status_code=202)
def api_reviews(body: ReviewIn, st: CurrentStation, user: ApiUser) -> dict[str, Any]:
    """Publish a review outcome on boards.reviews; 202 once the broker has it. The review
    sink stores it (idempotent on outcome_id: a double click is one outcome)."""
    if body.reviewer is not None and body.reviewer != user:
        raise HTTPException(
            400, f"reviewer is the signed-in account ({user!r}), not {body.reviewer!r}"
        )
    found = queries.lookup_board(st.engine, body.event_id)
    if found is None:
        raise HTTPException(404, f"no audited board with event id {body.event_id!r}")
    fields = body.model_dump(exclude_none=True, exclude={"line", "board_serial", "reviewer"})
    try:
        outcome = ReviewOutcome(
            line=body.line or found[0],
            board_serial=body.board_serial or found[1],
            reviewer=user,
            **fields,
        )
    except ValidationError as exc:
        raise HTTPException(422, exc.errors(include_url=False)) from exc
    if not outcome.defective and outcome.defect_types:
        raise HTTPException(422, "a good board has no defect types")
    try:
        st.publisher.publish([outcome], timeout=10.0)
    except PublishError as exc:
        raise HTTPException(503, f"the broker did not take the outcome: {exc}") from exc
    st.mark_pending(outcome.event_id)
    rest = queries.review_queue(st.engine, limit=1, line=outcome.line, exclude=st.pending())
    return {
        "outcome_id": outcome.outcome_id,
        "event_id": outcome.event_id,
        "reviewer": user,
        "next": rest[0]["event_id"] if rest else None,
    }


@router.get("/api/summary")
def api_summary(st: CurrentStation, _user: ApiUser) -> dict[str, Any]:
    """Since the web server started: verdicts by label, dead letters, outcomes, alerts."""
    return queries.summary(st.engine, st.started_at)


@router.get("/api/lines")
def api_lines(st: CurrentStation, _user: ApiUser) -> list[str]:
    return queries.lines(st.engine)


def _object(st: CurrentStation, uri: str | None, what: str) -> Response:
    if not uri:
        raise HTTPException(404, f"no {what} kept for this board")
    try:
        data = st.store.get(uri, st.settings.images.max_bytes)
    except StorageError as exc:
        raise HTTPException(404, f"{what}: {exc}") from exc
    suffix = PurePosixPath(urlparse(uri).path).suffix.lower()
    return Response(data, media_type=_MEDIA.get(suffix, "application/octet-stream"))


def _board_or_404(st: CurrentStation, event_id: str) -> dict[str, Any]:
    found = queries.board(st.engine, event_id)
    if found is None:
        raise HTTPException(404, f"no audited board with event id {event_id!r}")
    return found


@router.get("/boards/{event_id}/image")
def board_image(event_id: str, st: CurrentStation, _user: ApiUser) -> Response:
    return _object(st, _board_or_404(st, event_id)["image_uri"], "board image")


@router.get("/boards/{event_id}/heatmap")
def board_heatmap(event_id: str, st: CurrentStation, _user: ApiUser) -> Response:
    return _object(st, _board_or_404(st, event_id)["explanation_uri"], "heatmap")


@router.get("/boards/{event_id}/template")
def board_template(event_id: str, st: CurrentStation, _user: ApiUser) -> Response:
    template_id = _board_or_404(st, event_id)["template_id"]
    if not template_id:
        raise HTTPException(404, "this board was inspected without a template")
    try:
        png = st.store.get_template(template_id, st.settings.images.max_bytes)
    except StorageError as exc:
        raise HTTPException(404, f"template: {exc}") from exc
    if png is None:
        raise HTTPException(404, f"template {template_id!r} is no longer in the store")
    return Response(png, media_type="image/png")


def iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""
