"""Hostile input through the worker's per-event code: every kind becomes a dead letter that
names the stage and what was wrong, and the image policy does what it says."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from board_data.synthetic import BoardGenerator
from infra.images import (
    ImageDecodeError,
    ImagePolicy,
    ImagePolicyError,
    decode_gray,
    encode_png,
)
from infra.object_store import ObjectStore
from inspection.backends import load_classifier
from inspection.model.registry import load_card
from producers.hostile import (
    bmp_with_header,
    hostile_events,
    png_with_header,
    sixteen_bit_and_colour,
)
from schemas.events import DeadLetter, FlaggedBoard, ImageRef, Verdict
from workers.inspector import Inspector, SourceInfo

SOURCE = SourceInfo(topic="boards.flagged", partition=0, offset=7, key=b"L1:S")


@pytest.fixture()
def setup(model_dir: Path, tmp_path: Path) -> tuple[Inspector, np.ndarray, str]:
    store = ObjectStore(tmp_path / "objects")
    board = BoardGenerator(seed=11, defect_rate=1.0).board(0)
    store.put_template(board.template_id, encode_png(board.template))
    inspector = Inspector(
        load_classifier(model_dir), load_card(model_dir).require_thresholds(), store, worker="w"
    )
    return inspector, board.image, board.template_id


def test_every_hostile_kind_is_a_dead_letter_that_says_why(
    setup: tuple[Inspector, np.ndarray, str],
) -> None:
    inspector, image, template_id = setup
    cases = hostile_events(inspector.store, encode_png(image), template_id)
    assert len({c.kind for c in cases}) >= 30
    for case in cases:
        result = inspector.process(case.raw, SOURCE)
        assert isinstance(result, DeadLetter), f"{case.kind}: {result}"
        assert result.stage == case.stage, f"{case.kind}: {result.stage} {result.reason}"
        assert case.reason in result.reason, f"{case.kind}: {result.reason}"
        assert base64.b64decode(result.original_b64) == case.raw


def _verdict(
    inspector: Inspector, data: bytes, template_id: str, media: str
) -> Verdict | DeadLetter:
    event = FlaggedBoard(
        line="L1",
        machine="m",
        product="P",
        board_serial="S",
        template_id=template_id,
        image=ImageRef(data=data, media_type=media),  # type: ignore[arg-type]
    )
    return inspector.process(event.model_dump_json().encode(), SOURCE)


def test_sixteen_bit_and_colour_boards_are_read_as_the_policy_says(
    setup: tuple[Inspector, np.ndarray, str],
) -> None:
    inspector, image, template_id = setup
    sixteen, colour = sixteen_bit_and_colour(image)
    reference = _verdict(inspector, encode_png(image), template_id, "image/png")
    scaled = _verdict(inspector, sixteen, template_id, "image/png")
    luma = _verdict(inspector, colour, template_id, "image/jpeg")
    assert isinstance(reference, Verdict) and isinstance(scaled, Verdict)
    assert isinstance(luma, Verdict)
    # 16-bit scaled by its real range is the same board: the same regions
    assert [r.box for r in scaled.regions] == [r.box for r in reference.regions]
    assert luma.regions  # the defective board still shows its defects in colour
    inspector.policy = ImagePolicy(sixteen_bit="reject", colour="reject")
    refused16 = _verdict(inspector, sixteen, template_id, "image/png")
    refused_colour = _verdict(inspector, colour, template_id, "image/jpeg")
    assert isinstance(refused16, DeadLetter) and "16-bit" in refused16.reason
    assert isinstance(refused_colour, DeadLetter) and "3 colour channels" in refused_colour.reason


def test_size_limits_are_checked_before_decoding_with_the_numbers() -> None:
    policy = ImagePolicy(max_bytes=1000, max_pixels=10_000)
    with pytest.raises(ImagePolicyError, match=r"2000 bytes, over the limit of 1000"):
        decode_gray(b"\x89PNG" + b"\x00" * 1996, policy=policy)
    with pytest.raises(ImagePolicyError, match=r"200x100 = 20000 pixels, over the limit of 10000"):
        decode_gray(png_with_header(200, 100), policy=policy)
    with pytest.raises(ImagePolicyError, match=r"50000x50000"):
        decode_gray(bmp_with_header(50000, 50000))
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_gray(b"")
    gray = np.arange(256, dtype=np.uint16).reshape(16, 16) * 4 + 1000
    out = decode_gray(encode_png(gray))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255  # its real range


def test_claim_checks_over_the_byte_limit_are_refused_unread(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    uri = store.put(b"x" * 5000)
    assert store.get(uri) == b"x" * 5000
    with pytest.raises(ValueError, match="5000 bytes, over the limit of 100"):
        store.get(uri, max_bytes=100)


def test_an_oversize_bad_message_is_claim_checked_not_stuck(
    setup: tuple[Inspector, np.ndarray, str],
) -> None:
    """A dead letter must fit through the broker: base64 of a 900 kB message would not."""
    from workers.messages import original_of

    inspector, _, _ = setup
    inspector.dead_letter_inline_max = 100_000
    raw = b'{"line": "' + b"x" * 900_000 + b'"}'
    letter = inspector.process(raw, SOURCE)
    assert isinstance(letter, DeadLetter) and letter.stage == "validate"
    assert letter.original_b64 == "" and letter.original_uri is not None
    assert letter.original_bytes == len(raw) and len(letter.model_dump_json()) < 10_000
    assert original_of(letter, inspector.store) == raw
    small = inspector.process(b"not json", SOURCE)
    assert isinstance(small, DeadLetter) and small.original_uri is None
    assert original_of(small, inspector.store) == b"not json"
