"""Inspector: one event in, one verdict or dead-letter record out (no servers needed)."""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

import pytest

from board_data.synthetic import BoardGenerator
from infra.images import encode_png
from infra.object_store import ObjectStore
from inspection.backends import load_classifier
from inspection.model.registry import load_card
from schemas.events import DeadLetter, FlaggedBoard, ImageRef, Verdict
from workers.inspector import Inspector, SourceInfo

SOURCE = SourceInfo(topic="boards.flagged", partition=1, offset=42, key=b"L1:S1")


@pytest.fixture()
def inspector(model_dir: Path, tmp_path: Path) -> Inspector:
    card = load_card(model_dir)
    assert card.thresholds is not None
    return Inspector(
        load_classifier(model_dir), card.thresholds, ObjectStore(tmp_path), worker="w-test"
    )


def _event(inspector: Inspector, index: int = 0, **kw: object) -> FlaggedBoard:
    board = BoardGenerator(seed=5).board(index)
    inspector.store.put_template(board.template_id, encode_png(board.template))
    fields: dict[str, object] = dict(
        line="L1",
        machine="aoi-1",
        product=board.product,
        board_serial=f"S{index}",
        template_id=board.template_id,
        image=ImageRef(data=encode_png(board.image)),
    )
    fields.update(kw)
    return FlaggedBoard(**fields)  # type: ignore[arg-type]


def test_a_board_with_its_template_gets_a_reference_based_verdict(inspector: Inspector) -> None:
    event = _event(inspector)
    result = inspector.process(event.model_dump_json().encode(), SOURCE)
    assert isinstance(result, Verdict)
    assert result.event_id == event.event_id and result.roi_method == "reference"
    assert result.model_version == "test-small" and result.worker == "w-test"
    assert result.board_score == max((r.score for r in result.regions), default=0.0)
    assert result.timings.total_ms >= result.timings.roi_ms > 0


def test_without_a_template_id_the_recipe_roi_is_used(inspector: Inspector) -> None:
    event = _event(inspector, template_id=None)
    result = inspector.process(event.model_dump_json().encode(), SOURCE)
    assert isinstance(result, Verdict) and result.roi_method == "recipe"


def test_a_missing_template_is_never_a_silent_recipe_pass(inspector: Inspector) -> None:
    event = _event(inspector, template_id="never-registered")
    result = inspector.process(event.model_dump_json().encode(), SOURCE)
    assert isinstance(result, DeadLetter) and result.stage == "template"
    assert "never-registered" in result.reason and "templates add" in result.reason
    # a product configured for it sends such boards to a person instead
    inspector.review_products = frozenset({event.product})
    result = inspector.process(event.model_dump_json().encode(), SOURCE)
    assert isinstance(result, Verdict)
    assert result.verdict.value == "review" and result.roi_method == "none" and not result.regions


def test_a_replaced_template_takes_effect(inspector: Inspector) -> None:
    import numpy as np

    event = _event(inspector)
    assert event.template_id is not None
    first = inspector.process(event.model_dump_json().encode(), SOURCE)
    assert isinstance(first, Verdict)
    # the golden board is re-scanned at another size: the cached one must not be used
    inspector.store.put_template(event.template_id, encode_png(np.zeros((100, 100), np.uint8)))
    again = inspector.process(event.model_dump_json().encode(), SOURCE)
    assert isinstance(again, DeadLetter) and "100x100" in again.reason


@pytest.mark.parametrize(
    ("raw", "stage", "reason"),
    [
        (b"\x00\x01 not json", "decode", "not valid JSON"),
        (b'{"line": "L1"}', "validate", "board_serial: Field required"),
        (
            b'{"line":"L1","machine":"m","product":"p","board_serial":"s","image":{"data":"QUJD"},'
            b'"schema_version":2}',
            "validate",
            "schema_version",
        ),
    ],
)
def test_bad_messages_become_dead_letters_that_say_why(
    inspector: Inspector, raw: bytes, stage: str, reason: str
) -> None:
    result = inspector.process(raw, SOURCE)
    assert isinstance(result, DeadLetter)
    assert result.stage == stage
    assert reason in result.reason
    assert base64.b64decode(result.original_b64) == raw
    assert (result.partition, result.offset, result.key) == (1, 42, "L1:S1")


def test_non_image_and_mismatched_template_are_dead_lettered_at_the_image_stage(
    inspector: Inspector,
) -> None:
    bad = _event(inspector, image=ImageRef(data=b"%PDF-1.7 not an image"))
    result = inspector.process(bad.model_dump_json().encode(), SOURCE)
    assert isinstance(result, DeadLetter) and result.stage == "image"
    assert "not a decodable image" in result.reason and result.event_id == bad.event_id

    import numpy as np

    small = encode_png(np.zeros((100, 120), np.uint8))
    mismatched = _event(inspector, image=ImageRef(data=small))
    result = inspector.process(mismatched.model_dump_json().encode(), SOURCE)
    assert isinstance(result, DeadLetter) and result.stage == "image"
    assert "120x100" in result.reason

    missing = _event(inspector, image=ImageRef(uri=inspector.store.root.joinpath("x.png").as_uri()))
    result = inspector.process(missing.model_dump_json().encode(), SOURCE)
    assert isinstance(result, DeadLetter) and "not found" in result.reason


def test_a_board_the_classifier_chokes_on_is_dead_lettered_not_retried_forever(
    inspector: Inspector,
) -> None:
    class Broken:
        version = "broken"
        input_size = 64
        crop_min_side = 0
        crop_sides = (0,)

        def predict_proba(self, crops: object) -> object:
            raise RuntimeError("device lost")

    inspector.default = replace(inspector.default, classifier=Broken())  # type: ignore[arg-type]
    event = _event(inspector, index=1)
    result = inspector.process(event.model_dump_json().encode(), SOURCE)
    assert isinstance(result, DeadLetter)
    assert result.stage == "classify" and "RuntimeError: device lost" in result.reason


def test_failed_or_doubtful_regions_get_a_heatmap_png_referenced_from_the_verdict(
    inspector: Inspector, model_dir: Path
) -> None:
    from urllib.parse import urlparse

    import cv2

    from inspection.explain import Explainer

    inspector.default = replace(inspector.default, explainer=Explainer(model_dir))
    explained = 0
    for index in range(4):
        event = _event(inspector, index=index, event_id=f"evt/{index}")  # not a safe file name
        verdict = inspector.process(event.model_dump_json().encode(), SOURCE)
        assert isinstance(verdict, Verdict)
        doubtful = [r for r in verdict.regions if r.score >= verdict.pass_below]
        if not doubtful:
            assert verdict.explanation_uri is None
            continue
        assert verdict.explanation_uri is not None
        path = Path(urlparse(verdict.explanation_uri).path)
        assert path.parent == inspector.store.root / "explanations" and "/" not in path.stem
        picture = cv2.imread(str(path))
        assert picture is not None and picture.shape[0] >= 64
        assert verdict.timings.explain_ms > 0
        explained += 1
    assert explained > 0  # the untrained test model finds every candidate doubtful


def test_an_explanation_that_fails_is_a_dead_letter_not_a_silent_gap(
    inspector: Inspector,
) -> None:
    class Broken:
        uses_served_features = False

        def save(self, *args: object, **kwargs: object) -> object:
            raise OSError("disk full")

    inspector.default = replace(inspector.default, explainer=Broken())  # type: ignore[arg-type]
    event = _event(inspector, index=2)
    result = inspector.process(event.model_dump_json().encode(), SOURCE)
    # the untrained test model finds doubtful regions on every board: one needs explaining
    assert isinstance(result, DeadLetter) and result.stage == "explain"
    assert "disk full" in result.reason and result.event_id == event.event_id


def test_boards_a_person_will_see_keep_their_image_for_the_station(inspector: Inspector) -> None:
    from infra.stats import audit_sampled

    inspector.audit_rate = 0.5
    kept = skipped = 0
    for index in range(8):
        event = _event(inspector, index, event_id=f"keep-{index}")  # deterministic audit draws
        verdict = inspector.inspect(event)
        assert verdict.template_id == event.template_id
        person = verdict.verdict.value == "review" or audit_sampled(event.event_id, 0.5)
        if person:
            assert verdict.image_uri is not None
            assert inspector.store.get(verdict.image_uri) == event.image.data  # the same bytes
            kept += 1
        else:
            assert verdict.image_uri is None  # automatic, unaudited boards keep nothing
            skipped += 1
    assert kept and skipped
    claim = inspector.store.put(encode_png(BoardGenerator(seed=5).board(0).image))
    event = _event(inspector, 0, image=ImageRef(uri=claim))
    inspector.audit_rate = 1.0
    assert inspector.inspect(event).image_uri == claim  # a claim check is not copied
