"""`linecheck dataset export --from-reviews OUT`: the boards operators reviewed, in DeepPCB's
layout, so that a candidate can be trained on what the line saw and then shadowed.

One board group per product (``group<N>/<N>/<id>_test.jpg``, ``_temp.jpg``, and
``<N>_not/<id>.txt``) plus ``trainval.txt`` listing every pair and ``boards.csv`` mapping ids
to event ids, lines and reviewers. Boxes: the reviewer's own regions when the outcome has
them; otherwise, for a defective board, the model's candidate regions whose type the
reviewer confirmed (``box_source`` says which). A good board gets an empty annotation file.
Boards whose image was not kept, or inspected without a template, cannot be pairs: they
are counted and skipped."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from board_data.deeppcb import write_annotations
from infra.db import review_outcomes, verdicts
from infra.images import decode_gray
from infra.object_store import ObjectStore, StorageError
from schemas.events import Box, DefectType, GroundTruth


@dataclass
class ExportSummary:
    pairs: int = 0
    defective: int = 0
    good: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    box_sources: Counter[str] = field(default_factory=Counter)
    groups: dict[str, str] = field(default_factory=dict)  # product → group folder

    def as_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "defective": self.defective,
            "good": self.good,
            "skipped": dict(self.skipped),
            "box_sources": dict(self.box_sources),
            "groups": self.groups,
        }


def reviewed_boards(engine: sa.Engine, since: datetime | None = None) -> list[dict[str, Any]]:
    """Every reviewed board (its current outcome) with its verdict as published."""
    query = (
        sa.select(
            verdicts.c.event_id,
            verdicts.c.product,
            verdicts.c.line,
            verdicts.c.verdict_json,
            review_outcomes.c.defective,
            review_outcomes.c.defect_types,
            review_outcomes.c.regions,
            review_outcomes.c.reviewer,
        )
        .join(review_outcomes, review_outcomes.c.event_id == verdicts.c.event_id)
        .order_by(verdicts.c.product, verdicts.c.decided_at)
    )
    if since is not None:
        query = query.where(review_outcomes.c.reviewed_at >= since)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def truths_of(board: dict[str, Any]) -> tuple[list[GroundTruth], str]:
    """(annotations, where the boxes came from) of one reviewed board."""
    if not board["defective"]:
        return [], "good"
    types = [DefectType(t) for t in board["defect_types"] or []]
    if board["regions"] and types:  # the reviewer's boxes; types in the order given
        boxes = [Box.model_validate(r) for r in board["regions"]]
        return [GroundTruth(b, types[min(i, len(types) - 1)]) for i, b in enumerate(boxes)], (
            "reviewer"
        )
    regions = (board["verdict_json"] or {}).get("regions", [])
    confirmed = [
        GroundTruth(Box.model_validate(r["box"]), DefectType(r["defect_type"]))
        for r in regions
        if r.get("defect_type") in {t.value for t in types}
    ]
    return confirmed, "model, type confirmed by the reviewer"


def export_reviewed(
    engine: sa.Engine,
    store: ObjectStore,
    out: Path,
    since: datetime | None = None,
    on_board: Callable[[], None] | None = None,
) -> ExportSummary:
    import cv2  # lazily: the rest of the training layer's listing needs no OpenCV

    summary = ExportSummary()
    rows: list[tuple[str, str, str, str, str, str]] = []
    split: list[str] = []
    boards = reviewed_boards(engine, since)
    for board in boards:
        if on_board is not None:
            on_board()
        published = board["verdict_json"] or {}
        image_uri, template_id = published.get("image_uri"), published.get("template_id")
        if not image_uri:
            summary.skipped["image not kept"] += 1
            continue
        if not template_id:
            summary.skipped["inspected without a template"] += 1
            continue
        try:
            image = decode_gray(store.get(image_uri), "board image")
            template_png = store.get_template(template_id)
            if template_png is None:
                raise StorageError(f"template {template_id!r} is no longer in the store")
            template = decode_gray(template_png, f"template {template_id!r}")
        except (StorageError, ValueError) as exc:
            summary.skipped[f"unreadable: {type(exc).__name__}"] += 1
            continue
        truths, source = truths_of(board)
        if board["defective"] and not truths:
            summary.skipped["defective without a box of a confirmed type"] += 1
            continue
        number = summary.groups.setdefault(board["product"], str(10000 + len(summary.groups)))
        folder, notes = out / f"group{number}" / number, out / f"group{number}" / f"{number}_not"
        folder.mkdir(parents=True, exist_ok=True)
        notes.mkdir(parents=True, exist_ok=True)
        stem = f"{number}{summary.pairs:04d}"
        quality = [cv2.IMWRITE_JPEG_QUALITY, 100]
        cv2.imwrite(str(folder / f"{stem}_test.jpg"), image, quality)
        cv2.imwrite(str(folder / f"{stem}_temp.jpg"), template, quality)
        write_annotations(notes / f"{stem}.txt", truths)
        split.append(f"group{number}/{number}/{stem}.jpg group{number}/{number}_not/{stem}.txt")
        rows.append(
            (stem, board["event_id"], board["line"], board["product"], board["reviewer"], source)
        )
        summary.pairs += 1
        summary.defective += bool(board["defective"])
        summary.good += not board["defective"]
        summary.box_sources[source] += 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "trainval.txt").write_text("".join(f"{line}\n" for line in split))
    with (out / "boards.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "event_id", "line", "product", "reviewer", "box_source"])
        writer.writerows(rows)
    return summary
