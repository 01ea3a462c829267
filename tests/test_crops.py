"""Classifier crops and candidate labels."""

from __future__ import annotations

import numpy as np
import pytest

from board_data.synthetic import BoardGenerator
from inspection.crops import CLASSES, crop_square, label_candidates, make_crops
from inspection.roi import align_template, find_regions_reference
from schemas.events import Box, DefectType, GroundTruth


def test_classes_follow_deeppcb_ids() -> None:
    assert CLASSES[0] == "none" and len(CLASSES) == 7
    for t in DefectType:
        assert CLASSES[t.deeppcb_id] == t.value


def test_crop_shape_and_channels() -> None:
    gen = BoardGenerator(seed=4, n_designs=1, defect_rate=1.0)
    board = gen.board(0)
    boxes = [d.box for d in board.defects]
    crops = make_crops(board.image, board.template, boxes, size=48)
    assert crops.shape == (len(boxes), 3, 48, 48) and crops.dtype == np.uint8
    # channel 2 is |board - reference|: every defect shows there, a clean area does not
    assert all(c[2].max() >= 200 for c in crops)
    clean = make_crops(board.template, board.template, [Box(x1=0, y1=0, x2=40, y2=40)])
    assert clean[0, 2].max() == 0 and np.array_equal(clean[0, 0], clean[0, 1])
    # the reference channel is the template aligned like the ROI stage aligns it
    aligned = align_template(board.image, board.template)
    same = make_crops(aligned, aligned, boxes, size=48)
    assert np.abs(same[:, 0].astype(int) - crops[:, 1]).max() <= 1
    raw = make_crops(board.template, board.template, boxes, size=48)
    assert np.abs(raw[:, 0].astype(int) - crops[:, 1]).mean() > 1  # it did move


def test_crops_pad_at_borders_and_handle_no_template() -> None:
    image = np.full((100, 100), 255, np.uint8)
    image[50:53, 50:53] = 0  # a small blob
    image[:, 0:20] = 0  # copper along the left border
    crops = make_crops(image, None, [Box(x1=40, y1=40, x2=64, y2=64)], size=32)
    assert crops.shape == (1, 3, 32, 32)
    # median filtering erases the small blob from the reference, so the diff shows it
    assert crops[0, 2].max() > 100 and crops[0, 1].min() > 100
    # a box at the border: the outside continues the border's copper (replicated)
    corner = make_crops(image, image, [Box(x1=0, y1=0, x2=10, y2=10)], size=30, context=0.5)
    assert (corner[0, 0][:, :12] < 50).all() and corner[0, 2].max() == 0
    assert make_crops(image, None, [], size=32).shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="2-D uint8"):
        make_crops(np.zeros((0, 0), np.uint8), None, [])


def test_a_small_box_is_cut_at_the_boards_scale_with_min_side() -> None:
    # a 4-px dot in a 20-px box; a 64-px window around it holds the whole 40-px pad
    image = np.full((200, 200), 255, np.uint8)
    image[80:120, 80:120] = 0  # the pad
    image[98:102, 98:102] = 255  # a hole in it
    box = Box(x1=90, y1=90, x2=110, y2=110)
    assert crop_square(box) == (100, 100, 15)  # 20 px + 25 % a side
    assert crop_square(box, min_side=64) == (100, 100, 32)
    big = Box(x1=60, y1=60, x2=140, y2=140)
    assert crop_square(big, min_side=64) == crop_square(big)  # larger boxes: unchanged
    magnified = make_crops(image, image, [box], size=64)[0, 0]
    native = make_crops(image, image, [box], size=64, min_side=64)[0, 0]
    # at min_side 64 the crop is the board's own pixels: the hole is 4 px, the pad's edges show
    assert np.array_equal(native, image[68:132, 68:132])
    assert (native[30:34, 30:34] == 255).all() and native[:, 0].min() == 255
    # magnified 64/30×, the same crop is all pad and a hole 2× as wide: no pad edge in view
    assert (magnified[:, 0] == 0).all() and (magnified > 127).sum() > 3 * 16


def test_labels_take_best_overlap_above_threshold() -> None:
    truths = [
        GroundTruth(Box(x1=10, y1=10, x2=40, y2=40), DefectType.SHORT),
        GroundTruth(Box(x1=30, y1=10, x2=60, y2=40), DefectType.SPUR),
    ]
    candidates = [
        Box(x1=10, y1=10, x2=40, y2=40),  # exactly the short
        Box(x1=28, y1=10, x2=58, y2=40),  # overlaps both, the spur more
        Box(x1=100, y1=100, x2=130, y2=130),  # nothing
        Box(x1=10, y1=10, x2=19, y2=40),  # IoU 0.3 with the short: not above 0.33
    ]
    assert label_candidates(candidates, truths) == [2, 4, 0, 0]
    pairs = [(t.box, t.defect_type) for t in truths]
    assert label_candidates(candidates, pairs) == [2, 4, 0, 0]
    assert label_candidates(candidates, pairs, iou_threshold=0.29) == [2, 4, 0, 2]
    assert label_candidates([], truths) == [] and label_candidates(candidates, []) == [0] * 4


def test_roi_candidates_on_synthetic_boards_get_their_truths_types() -> None:
    gen = BoardGenerator(seed=4, n_designs=1, defect_rate=1.0)
    board = gen.board(1)
    candidates = find_regions_reference(board.image, board.template)
    labels = label_candidates(candidates, board.defects)
    found = sorted(CLASSES[k] for k in labels if k)
    assert found == sorted(d.defect_type.value for d in board.defects)
