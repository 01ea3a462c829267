"""The synthetic board generator: deterministic, DeepPCB-like, with real, boxed defects."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from board_data.synthetic import BACKGROUND, COPPER, BoardGenerator, ScanConditions
from schemas.events import DefectType


@pytest.fixture(scope="module")
def gen() -> BoardGenerator:
    return BoardGenerator(seed=3, n_designs=3)


def test_same_seed_and_index_give_the_same_board(gen: BoardGenerator) -> None:
    again = BoardGenerator(seed=3, n_designs=3)
    for i in (0, 5, 11):
        a, b = gen.board(i), again.board(i)
        assert np.array_equal(a.image, b.image)
        assert a.defects == b.defects and a.template_id == b.template_id
    assert not np.array_equal(gen.board(0).image, gen.board(1).image)
    other = BoardGenerator(seed=4, n_designs=3)
    assert not np.array_equal(
        gen.template(gen.template_ids[0]), other.template(other.template_ids[0])
    )


def test_images_are_binary_640_uint8_in_deeppcb_polarity(gen: BoardGenerator) -> None:
    board = gen.board(2)
    for image in (board.image, board.template):
        assert image.shape == (640, 640) and image.dtype == np.uint8
        assert set(np.unique(image)) == {COPPER, BACKGROUND}
        # DeepPCB boards are mostly substrate with a fair share of copper
        assert 0.05 < (image == COPPER).mean() < 0.6
    assert np.array_equal(board.template, gen.template(board.template_id))
    assert len({gen.board(i).template_id for i in range(12)}) == 3


def test_defect_counts_types_and_rate(gen: BoardGenerator) -> None:
    boards = [gen.board(i) for i in range(60)]
    defective = [b for b in boards if b.defective]
    assert 18 <= len(defective) <= 42  # defect_rate 0.5
    assert all(3 <= len(b.defects) <= 12 for b in defective)
    kinds = Counter(d.defect_type for b in defective for d in b.defects)
    assert set(kinds) == set(DefectType)
    assert min(kinds.values()) >= 0.4 * max(kinds.values())  # roughly the uniform mix


def test_defect_mix_and_rate_are_honoured() -> None:
    only = BoardGenerator(
        seed=1, n_designs=1, defect_rate=1.0, defect_mix={DefectType.PIN_HOLE: 1.0}
    )
    boards = [only.board(i) for i in range(4)]
    assert all(b.defective for b in boards)
    assert {d.defect_type for b in boards for d in b.defects} == {DefectType.PIN_HOLE}
    assert not any(
        BoardGenerator(seed=1, n_designs=1, defect_rate=0.0).board(i).defective for i in range(4)
    )


def test_every_defect_is_visible_and_tightly_boxed(gen: BoardGenerator) -> None:
    """Inside each box the board differs from the template by a real blob of pixels (more
    than scanner noise could make), and the box is DeepPCB-sized."""
    checked = 0
    for i in range(40):
        board = gen.board(i)
        diff = board.image != board.template
        for d in board.defects:
            b = d.box
            w, h = b.x2 - b.x1, b.y2 - b.y1
            assert 14 <= w <= 82 and 14 <= h <= 82, d
            inner = diff[b.y1 + 8 : b.y2 - 8, b.x1 + 8 : b.x2 - 8]
            assert inner.sum() >= 10, d
            checked += 1
    assert checked > 50


def test_good_boards_differ_only_by_misregistration_and_noise() -> None:
    still = BoardGenerator(
        seed=2,
        n_designs=1,
        defect_rate=0.0,
        scan=ScanConditions(max_shift_px=0, max_rotation_deg=0, noise=0),
    )
    board = still.board(0)
    # without misregistration only the edge roughness of the scan remains
    assert (board.image != board.template).mean() < 0.01
    noisy = BoardGenerator(
        seed=2,
        n_designs=1,
        defect_rate=0.0,
        scan=ScanConditions(max_shift_px=0, max_rotation_deg=0, noise=0.01),
    )
    assert 0.008 < (noisy.board(0).image != board.template).mean() < 0.03


def test_designs_are_built_once_per_generator(gen: BoardGenerator) -> None:
    # the speed of generation is the bench's business (linecheck bench); what keeps it fast
    # is that a board reuses its design instead of drawing it again
    first = gen.board(0)
    templates = {tid: gen.template(tid) for tid in gen.template_ids}
    for i in range(20):
        board = gen.board(100 + i)
        assert gen.template(board.template_id) is templates[board.template_id]
    assert gen.template(first.template_id) is templates[first.template_id]


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="defect_rate"):
        BoardGenerator(defect_rate=1.5)
    with pytest.raises(ValueError, match="n_designs"):
        BoardGenerator(n_designs=0)
    with pytest.raises(KeyError, match="unknown template_id"):
        BoardGenerator(n_designs=1).template("nope")
    with pytest.raises(ValueError, match="index"):
        BoardGenerator(n_designs=1).board(-1)
