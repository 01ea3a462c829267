"""Message contracts: round trips, validation errors that name the field, schema export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from linecheck.cli import app
from schemas import Box, DefectType, FlaggedBoard, ImageRef, Topics, Verdict
from schemas.events import MESSAGE_MODELS


def _event(**kw: object) -> FlaggedBoard:
    base: dict[str, object] = dict(
        line="L1",
        machine="aoi-1",
        product="p1",
        board_serial="S1",
        image=ImageRef(data=b"\x89PNG..."),
    )
    base.update(kw)
    return FlaggedBoard(**base)  # type: ignore[arg-type]


def test_flagged_board_round_trips_through_json_with_bytes_as_base64() -> None:
    event = _event(flagged_regions=[Box(x1=1, y1=2, x2=30, y2=40)], template_id="tpl-1")
    wire = event.model_dump_json()
    assert "\\x89" not in wire and '"data":"' in wire
    back = FlaggedBoard.model_validate_json(wire)
    assert back == event
    assert back.image.data == b"\x89PNG..."
    assert event.key() == b"L1:S1"
    assert event.inspected_at.tzinfo is not None


def test_validation_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match="board_serial"):
        FlaggedBoard.model_validate_json(
            '{"line":"L1","machine":"m","product":"p","image":{"data":"AAAA"}}'
        )
    with pytest.raises(ValidationError, match="exactly one of"):
        ImageRef(data=b"x", uri="file:///x.png")
    with pytest.raises(ValidationError, match="out of order"):
        Box(x1=10, y1=0, x2=5, y2=5)
    with pytest.raises(ValidationError, match="Extra inputs"):
        _event(colour="red")


def test_box_iou_and_defect_type_ids() -> None:
    a, b = Box(x1=0, y1=0, x2=10, y2=10), Box(x1=5, y1=0, x2=15, y2=10)
    assert a.iou(b) == pytest.approx(50 / 150)
    assert a.iou(Box(x1=20, y1=20, x2=30, y2=30)) == 0.0
    assert [t.deeppcb_id for t in DefectType] == [1, 2, 3, 4, 5, 6]
    assert DefectType.from_deeppcb_id(5) is DefectType.COPPER
    with pytest.raises(ValueError, match=r"1\.\.6"):
        DefectType.from_deeppcb_id(7)


def test_topic_prefix_applies_to_every_topic() -> None:
    topics = Topics().with_prefix("x.")
    assert topics.all() == [f"x.{t}" for t in Topics().all()]


def test_schemas_export_writes_a_json_schema_per_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["schemas", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"{n}.schema.json" for n in MESSAGE_MODELS] + ["asyncapi.json"])
    assert {"FlaggedBoard", "Verdict", "ReviewOutcome", "DeadLetter"} <= set(MESSAGE_MODELS)
    verdict = json.loads((tmp_path / "Verdict.schema.json").read_text())
    assert set(verdict["required"]) >= {"event_id", "verdict", "board_score", "regions"}
    assert verdict["properties"]["verdict"]["$ref"].endswith("VerdictLabel")
    assert Verdict.model_json_schema(mode="serialization") == verdict


def test_asyncapi_document_describes_the_topics_with_their_message_schemas(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["schemas", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "asyncapi.json").read_text())
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {"boards.flagged", "boards.verdicts", "boards.deadletter"} <= addresses
    payloads = {
        m["payload"]["$ref"].rsplit("/", 1)[-1] for m in doc["components"]["messages"].values()
    }
    assert {"FlaggedBoard", "Verdict", "DeadLetter"} <= payloads
    flagged = doc["components"]["schemas"]["FlaggedBoard"]
    assert "board_serial" in flagged["required"]
    assert flagged["properties"]["image"]["$ref"] == "#/components/schemas/ImageRef"
    assert "ImageRef" in doc["components"]["schemas"]
