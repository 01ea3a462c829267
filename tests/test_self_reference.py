"""The board as its own reference: a region that repeats the design elsewhere on the board is
explained away, a defect is not, and the veto turns only the explained ones to "none"."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspection.crops import make_crops
from inspection.locator import LOCATOR_PARAMS, LocatorParams
from inspection.self_reference import copy_crops, unexplained_area, veto_repeats
from schemas.events import Box


def _board() -> np.ndarray:
    """A 320×320 board: white copper pads (a ring with a drilled hole, a pad with a notch
    on the right side) repeated four times in a row; the last notched pad mirrored; a trace
    with a spur; a pin-hole in the third ring."""
    board = np.zeros((320, 320), np.uint8)
    for k in range(4):
        x = 40 + 70 * k
        cv2.circle(board, (x, 60), 22, 255, -1)
        cv2.circle(board, (x, 60), 7, 0, -1)  # the drilled hole: design
        cv2.rectangle(board, (x - 20, 140), (x + 20, 180), 255, -1)
        notch_x = x + 8 if k < 3 else x - 20  # the fourth pad is mirrored
        cv2.rectangle(board, (notch_x, 152), (notch_x + 12, 168), 0, -1)
    cv2.rectangle(board, (20, 250), (300, 262), 255, -1)  # a trace ...
    cv2.rectangle(board, (150, 262), (156, 275), 255, -1)  # ... with a spur
    cv2.circle(board, (180 - 12, 60 - 12), 3, 0, -1)  # a pin-hole in the third ring
    return board


def test_a_repeated_design_feature_is_explained_and_a_defect_is_not() -> None:
    board = _board()
    hole = Box(x1=100, y1=50, x2=120, y2=70)  # the second ring's drilled hole
    mirrored = Box(x1=236, y1=148, x2=256, y2=172)  # the mirrored pad's notch
    spur = Box(x1=144, y1=256, x2=162, y2=280)
    pin_hole = Box(x1=160, y1=40, x2=176, y2=56)
    assert unexplained_area(board, hole) < 3
    assert unexplained_area(board, mirrored) < 3  # found by its mirror image
    assert unexplained_area(board, spur) >= 40  # the spur's ~78 px, less its tolerated edge
    assert unexplained_area(board, pin_hole) >= 9


def test_a_flat_or_degenerate_region_is_not_explained() -> None:
    board = np.full((100, 100), 255, np.uint8)
    assert unexplained_area(board, Box(x1=40, y1=40, x2=50, y2=50)) == 100  # nothing to match
    assert unexplained_area(board, Box(x1=140, y1=40, x2=150, y2=50)) == 0  # off the board


def test_the_veto_calls_repeats_none_and_leaves_the_rest() -> None:
    board = _board()
    boxes = [
        Box(x1=100, y1=50, x2=120, y2=70),  # repeat, called pin-hole
        Box(x1=144, y1=256, x2=162, y2=280),  # spur, called spur
        Box(x1=30, y1=50, x2=50, y2=70),  # repeat, already called none
    ]
    probs = np.array(
        [[0.1, 0, 0, 0, 0, 0, 0.9], [0.2, 0, 0, 0, 0.8, 0, 0], [0.7, 0.3, 0, 0, 0, 0, 0]]
    )
    vetoed = veto_repeats(board, boxes, probs, 3)
    assert vetoed[0].tolist() == [1.0, 0, 0, 0, 0, 0, 0]
    assert np.array_equal(vetoed[1:], probs[1:])
    assert probs[0, 6] == 0.9  # the input is not changed
    assert veto_repeats(board, boxes, probs, 0) is probs  # off


def test_a_locator_json_without_repeat_px_loads_with_the_veto_off(tmp_path: Path) -> None:
    LocatorParams(repeat_px=5).save(tmp_path)
    assert LocatorParams.load(tmp_path).repeat_px == 5
    raw = json.loads((tmp_path / LOCATOR_PARAMS).read_text())
    del raw["repeat_px"]
    (tmp_path / LOCATOR_PARAMS).write_text(json.dumps(raw))
    assert LocatorParams.load(tmp_path).repeat_px == 0


def test_copy_crops_show_the_designs_repeat_beside_the_region() -> None:
    """The crop's reference channel is the square's copy elsewhere on the board: a repeated
    drilled pad differs from it nowhere, a spur is the whole difference."""
    board = _board()
    hole = Box(x1=100, y1=50, x2=120, y2=70)
    spur = Box(x1=144, y1=256, x2=162, y2=280)
    crops = copy_crops(board, [hole, spur], 64)
    assert crops.shape == (2, 3, 64, 64) and crops.dtype == np.uint8
    assert np.array_equal(crops[:, 0], make_crops(board, None, [hole, spur], 64)[:, 0])
    assert crops[0, 2].mean() < 2.0  # the ring's copy: nothing differs
    assert (crops[1, 2] > 127).sum() >= 200  # the spur's 78 px, magnified 64 / 36 per side
    assert (crops[1, 2, :20] > 127).sum() == 0  # the trace above it is the copy's too


def test_copy_crops_fall_back_to_the_median_where_nothing_resembles_the_square() -> None:
    board = np.full((120, 120), 255, np.uint8)  # flat: no copy can be told apart
    box = Box(x1=40, y1=40, x2=60, y2=60)
    assert np.array_equal(copy_crops(board, [box], 32), make_crops(board, None, [box], 32))
    assert copy_crops(board, [], 32).shape == (0, 3, 32, 32)


def test_a_locator_json_without_crop_reference_loads_the_median(tmp_path: Path) -> None:
    LocatorParams(crop_reference="copy").save(tmp_path)
    assert LocatorParams.load(tmp_path).crop_reference == "copy"
    raw = json.loads((tmp_path / LOCATOR_PARAMS).read_text())
    del raw["crop_reference"]
    (tmp_path / LOCATOR_PARAMS).write_text(json.dumps(raw))
    assert LocatorParams.load(tmp_path).crop_reference == "median"
    raw["crop_reference"] = "template"
    (tmp_path / LOCATOR_PARAMS).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="crop_reference must be median or copy"):
        LocatorParams.load(tmp_path)
