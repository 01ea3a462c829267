"""The locator's centre head, piece by piece: its targets, its losses, the crop geometry of
its boxes and the decoding of its maps into boxes (the trained head runs through the CLI in
tests/test_locator.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inspection.locator import LocatorParams, boxes_from_centres
from inspection.model.locator_net import LocatorNet
from inspection.self_reference import dihedral
from schemas.events import Box
from training.locator_losses import box_area_loss, centre_targets, focal_heat_loss
from training.locator_train import crop_rects, target_mask, train_locator_net


def test_centre_targets_peak_at_each_boxs_centre_cell() -> None:
    heat, where, truth = centre_targets([(2.0, 3.0, 6.0, 5.0), (10.5, 10.5, 11.5, 11.5)], 16)
    assert heat.shape == (16, 16) and heat.max() == 1.0
    assert [tuple(w) for w in where] == [(4, 4), (11, 11)]
    assert np.argwhere(heat == 1.0).tolist() == [[4, 4], [11, 11]]
    assert 0.0 < heat[4, 6] < heat[4, 5] < 1.0  # falls off around the peak
    assert truth.tolist() == [[2.0, 3.0, 6.0, 5.0], [10.5, 10.5, 11.5, 11.5]]
    _, around, rows = centre_targets([(2.0, 3.0, 6.0, 5.0)], 16, radius=1)
    assert len(around) == len(rows) == 9 and (4, 4) in [tuple(w) for w in around]
    _, corner, _ = centre_targets([(0.0, 0.0, 1.0, 1.0)], 16, radius=1)
    assert len(corner) == 4  # cells off the map are left out


def _box_maps(index: list[tuple[int, int, int]], boxes: list[list[float]]) -> torch.Tensor:
    """(1, 4, 8, 8) box maps holding exactly each box (x1, y1, x2, y2) at its cell."""
    maps = torch.zeros(1, 4, 8, 8)
    for (n, i, j), (x1, y1, x2, y2) in zip(index, boxes, strict=True):
        maps[n, :, i, j] = torch.tensor(
            [(x1 + x2) / 2 - j - 0.5, (y1 + y2) / 2 - i - 0.5, np.log(x2 - x1), np.log(y2 - y1)]
        )
    return maps


def test_box_area_loss_weighs_missed_area_twice_excess() -> None:
    index = torch.tensor([[0, 4, 4]])
    truth = torch.tensor([[2.5, 2.5, 6.5, 6.5]])  # 4 × 4 cells centred in cell (4, 4)
    exact = box_area_loss(_box_maps([(0, 4, 4)], truth.tolist()), index, truth)
    assert exact.item() == pytest.approx(0.0, abs=1e-5)
    narrow = _box_maps([(0, 4, 4)], [[3.5, 2.5, 5.5, 6.5]])  # misses 8 of 16 cells
    wide = _box_maps([(0, 4, 4)], [[1.5, 2.5, 7.5, 6.5]])  # 8 cells too many
    missed = box_area_loss(narrow, index, truth, l1_weight=0.0).item()
    excess = box_area_loss(wide, index, truth, l1_weight=0.0).item()
    assert missed == pytest.approx(2 * 8 / 16) and excess == pytest.approx(8 / 16)
    far = torch.zeros(1, 4, 8, 8, requires_grad=True)
    far.data[0, 0, 4, 4] = 30.0  # a box nowhere near its truth still gets a gradient
    box_area_loss(far, index, truth).backward()
    assert far.grad is not None and far.grad[0, 0, 4, 4] > 0


def test_focal_loss_rewards_a_peak_where_the_centre_is() -> None:
    heat = torch.from_numpy(centre_targets([(2.0, 2.0, 6.0, 6.0)], 8)[0])[None, None]
    right = torch.full((1, 1, 8, 8), -6.0)
    right[0, 0, 4, 4] = 6.0
    wrong = torch.full((1, 1, 8, 8), -6.0)
    wrong[0, 0, 1, 7] = 6.0
    assert focal_heat_loss(right, heat) < 0.05 < focal_heat_loss(wrong, heat)


@pytest.mark.parametrize("op", range(8))
def test_crop_rects_move_as_the_crop_pixels_do(op: int) -> None:
    boxes = [Box(x1=30, y1=12, x2=45, y2=20), Box(x1=5, y1=50, x2=70, y2=60)]  # 2nd clipped
    shape, x0, y0, crop = (80, 96), 20, 8, 48
    window = target_mask(shape, boxes, 0.0)[y0 : y0 + crop, x0 : x0 + crop]
    moved = dihedral(window, op)
    drawn = np.zeros_like(moved)
    for x1, y1, x2, y2 in crop_rects(boxes, x0, y0, crop, op)[0]:
        drawn[int(y1) : int(y2), int(x1) : int(x2)] = 1
    assert np.array_equal(drawn, moved)


def test_centres_decode_into_apart_boxes_with_margins() -> None:
    maps = np.zeros((5, 20, 20), np.float32)
    maps[0] = 0.01
    for i, j, p in ((5, 5, 0.9), (5, 7, 0.8)):  # two touching defects: two peaks
        maps[0, i, j] = p
        maps[3:, i, j] = np.log(2.0)  # 2 × 2 cells: 8 × 8 px
    maps[0, 6, 5] = 0.85  # beside the first peak, not a maximum: no box of its own
    maps[0, 15, 15] = 0.05  # below the threshold
    params = LocatorParams(head="centre", threshold=0.2, margin=0.25, min_side_px=1)
    first, second = boxes_from_centres(maps, (80, 80), params)
    assert first == Box(x1=16, y1=16, x2=28, y2=28)  # 8 px at (22, 22), + 2 px a side
    assert second == Box(x1=24, y1=16, x2=36, y2=28)
    maps[3:, 5, 7] = np.log(2.2)  # now the weaker box covers the stronger one: NMS drops it
    maps[1, 5, 7] = -2.0  # (centred on the first)
    assert boxes_from_centres(maps, (80, 80), params) == [first]
    capped = boxes_from_centres(maps, (80, 80), LocatorParams(head="centre", max_candidates=0))
    assert capped == []


def test_centre_head_trains_and_outputs_five_maps() -> None:
    rng = np.random.default_rng(0)
    boards = [(rng.random((64, 64)) > 0.5).astype(np.uint8) * 255 for _ in range(2)]
    net, history = train_locator_net(
        boards, [[Box(x1=8, y1=8, x2=24, y2=20)], []], epochs=1, crop=64, batch_size=2,
        head="centre", box_radius=1,
    )  # fmt: skip
    assert isinstance(net, LocatorNet) and net.head.out_channels == 5
    assert np.isfinite(history[0]["area_loss"]) and np.isfinite(history[0]["map_loss"])
