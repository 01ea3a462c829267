"""Training: learns a simple synthetic crop task quickly, reproducibly; augmentation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from inspection.model.labels import CLASSES, NUM_CLASSES
from training.trainer import (
    Progress,
    TrainResult,
    _zoom,
    augment,
    class_weights,
    fragment_added,
    train_classifier,
)

SIZE = 32


def _shape_crops(n: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Board/template noise; the class is a shape drawn in the difference channel.

    Every shape keeps its class under flips and 90-degree rotations, as augmentation needs:
    0 nothing, 1 line, 2 filled square, 3 ring, 4 plus, 5 X, 6 dot.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, n)
    x = np.zeros((n, 3, size, size), np.uint8)
    x[:, :2] = rng.integers(0, 60, (n, 2, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for i, k in enumerate(y):
        cy, cx = rng.integers(10, size - 10, 2)
        dy, dx = yy - cy, xx - cx
        r = np.hypot(dy, dx)
        mask = {
            0: np.zeros((size, size), bool),
            1: (np.abs(dy) <= 1) & (np.abs(dx) <= 7),
            2: (np.abs(dy) <= 4) & (np.abs(dx) <= 4),
            3: (r >= 4) & (r <= 6),
            4: ((np.abs(dy) <= 1) & (np.abs(dx) <= 6)) | ((np.abs(dx) <= 1) & (np.abs(dy) <= 6)),
            5: ((np.abs(dy - dx) <= 1) | (np.abs(dy + dx) <= 1)) & (np.abs(dy) <= 5),
            6: r <= 1.5,
        }[int(k)]
        if k == 1 and rng.random() < 0.5:  # lines either way round
            mask = mask.T
        x[i, 2] = rng.integers(0, 40, (size, size), dtype=np.uint8)
        x[i, 2][mask] = 255
    return x, y


def test_learns_synthetic_shapes_quickly_and_reproducibly() -> None:
    train_x, train_y = _shape_crops(1200, seed=0)
    val_x, val_y = _shape_crops(300, seed=1)
    seen: list[tuple[int, int, dict[str, float]]] = []

    def run(n: int, epochs: int, seed: int, progress: Progress | None = None) -> TrainResult:
        return train_classifier(
            train_x[:n],
            train_y[:n],
            val_x,
            val_y,
            arch="small",
            epochs=epochs,
            batch_size=64,
            lr=5e-3,
            seed=seed,
            threads=2,
            progress=progress,
            max_shift=2,
        )

    first = run(1200, 6, seed=3, progress=lambda e, n, m: seen.append((e, n, m)))
    m = first.val_metrics
    assert m.accuracy >= 0.9, first.history
    assert len(first.history) == 6 and [s[0] for s in seen] == list(range(1, 7))
    assert all(s[1] == 6 and "val_loss" in s[2] for s in seen)
    assert first.best_epoch == 1 + int(np.argmin([h["val_loss"] for h in first.history]))
    assert m.loss == pytest.approx(min(h["val_loss"] for h in first.history))
    cm = np.array(m.confusion_matrix)
    assert cm.shape == (NUM_CLASSES, NUM_CLASSES) and cm.sum() == 300
    assert np.trace(cm) / cm.sum() == pytest.approx(m.accuracy)
    assert set(m.per_class_recall) == set(CLASSES)
    assert not first.module.training
    assert first.metrics["val_accuracy"] == m.accuracy
    # the returned module is the best epoch's: re-evaluating it gives the recorded accuracy
    with torch.inference_mode():
        logits = first.module(torch.from_numpy((val_x.astype(np.float32) - 127.5) / 127.5))
    assert float((logits.argmax(1).numpy() == val_y).mean()) == pytest.approx(m.accuracy)

    # same seed, same data -> same run (a short one, to keep the test fast)
    a, b, c = run(300, 1, seed=3), run(300, 1, seed=3), run(300, 1, seed=4)
    assert a.history[0]["val_loss"] == b.history[0]["val_loss"]
    for (ka, va), (kb, vb) in zip(
        a.module.state_dict().items(), b.module.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb), ka
    assert c.history[0]["val_loss"] != a.history[0]["val_loss"]


def test_train_restores_thread_count() -> None:
    before = torch.get_num_threads()
    x, y = _shape_crops(40, seed=0)
    train_classifier(x, y, x, y, epochs=1, batch_size=16, threads=1)
    assert torch.get_num_threads() == before


def test_train_rejects_bad_input() -> None:
    x, y = _shape_crops(20, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        train_classifier(x.astype(np.float32), y, x, y, epochs=1)
    with pytest.raises(ValueError, match="labels must lie"):
        train_classifier(x, y + NUM_CLASSES, x, y, epochs=1)
    with pytest.raises(ValueError, match="one label per crop"):
        train_classifier(x, y[:-1], x, y, epochs=1)
    with pytest.raises(ValueError, match="differ"):
        x64, y64 = _shape_crops(4, seed=0, size=64)
        train_classifier(x, y, x64, y64, epochs=1)
    with pytest.raises(ValueError, match="fragment must lie in"):
        train_classifier(x, y, x, y, epochs=1, fragment=1.5, fragment_classes=(4,))
    with pytest.raises(ValueError, match="name the classes"):
        train_classifier(x, y, x, y, epochs=1, fragment=0.5)


def test_class_weights_inverse_frequency_clipped() -> None:
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    w = class_weights(labels, 4, max_weight=10.0)
    # 100 samples over 3 present classes: 100/(3*90), 100/(3*9), 100/(3*1) -> clipped at 10
    np.testing.assert_allclose(w[:2], [100 / 270, 100 / 27], rtol=1e-6)
    assert w[2] == 10.0 and w[3] == 10.0  # rare and absent classes at the clip
    assert w[0] < w[1] < w[2]


def test_augment_moves_all_channels_together() -> None:
    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.integers(0, 256, (64, 1, 16, 16), dtype=np.uint8))
    batch = torch.cat([base, 255 - base, base // 2], dim=1)
    out = augment(batch, np.random.default_rng(1), max_shift=3)
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert torch.equal(out[:, 1], 255 - out[:, 0]) and torch.equal(out[:, 2], out[:, 0] // 2)
    assert not torch.equal(out, batch)
    # without shifts the transform only permutes pixels (dihedral group)
    flips = augment(batch, np.random.default_rng(2), max_shift=0)
    assert torch.equal(
        flips[:, 0].flatten(1).sort(dim=1).values, batch[:, 0].flatten(1).sort(dim=1).values
    )
    assert augment(batch, np.random.default_rng(1), 3).equal(out)  # seeded


def test_fragment_breaks_only_the_added_copper_into_specks() -> None:
    # Copper is dark: the board has a 12 x 12 spur (dark) on bare ground (light) where the
    # reference is bare, and a trace that both channels share.
    board = np.full((32, 32), 230, np.uint8)
    board[4:8, :] = 20  # trace in both
    board[8:20, 10:22] = 25  # the spur, board only
    reference = np.full((32, 32), 230, np.uint8)
    reference[4:8, :] = 20
    crop = np.stack([board, reference, cv2.absdiff(board, reference)])[None]
    batch = torch.from_numpy(crop).repeat(8, 1, 1, 1)
    out = fragment_added(batch, np.random.default_rng(0))
    assert out.dtype == torch.uint8 and out.shape == batch.shape
    spur = np.zeros((32, 32), bool)
    spur[8:20, 10:22] = True
    kept = (out[:, 0].numpy() < 128) & spur
    # each crop keeps part of its spur, between 30 % and 70 % of it gone (2-px blocks)
    share = 1.0 - kept.sum(axis=(1, 2)) / spur.sum()
    assert ((share > 0.15) & (share < 0.85)).all() and len(set(share.round(3))) > 1
    # nothing outside the spur changes; dropped pixels take the reference's value
    assert torch.equal(
        out[:, 0][:, ~torch.from_numpy(spur)], batch[:, 0][:, ~torch.from_numpy(spur)]
    )
    assert set(np.unique(out[:, 0].numpy()[:, spur])) <= {25, 230}
    assert torch.equal(out[:, 1], batch[:, 1])
    expected = (out[:, 0].int() - out[:, 1].int()).abs()
    assert torch.equal(out[:, 2].int(), expected)
    assert fragment_added(batch, np.random.default_rng(0)).equal(out)  # seeded


def test_zoom_scales_each_crop_about_its_centre() -> None:
    square = np.zeros((1, 1, 32, 32), np.uint8)
    square[..., 12:20, 12:20] = 200  # 8 px wide, centred
    channels = np.concatenate([square, 255 - square, square], axis=1)
    batch = torch.from_numpy(channels).repeat(2, 1, 1, 1)
    out = _zoom(batch, np.array([2.0, 0.5]))
    assert out.dtype == torch.uint8 and out.shape == batch.shape
    bright = out[:, 0] > 100
    assert bright[0].sum() == 16 * 16 and bright[0, 8:24, 8:24].all()  # twice as wide
    assert bright[1, 14:18, 14:18].all() and not bright[1, 12:14, 12:20].any()  # half as wide
    assert torch.equal(out[:, 2], out[:, 0])  # one transform for every channel
    assert ((out[:, 1].int() + out[:, 0].int()) - 255).abs().max() <= 1  # up to rounding
    assert torch.equal(_zoom(batch, np.ones(2)), batch)
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.integers(0, 256, (16, 3, 16, 16), dtype=np.uint8))
    # no zoom draws nothing: the recipe's augmentation is unchanged without it
    assert augment(noise, np.random.default_rng(1), 3, 1.0).equal(
        augment(noise, np.random.default_rng(1), 3)
    )
    zoomed = augment(noise, np.random.default_rng(1), 3, 1.25)
    assert not zoomed.equal(augment(noise, np.random.default_rng(1), 3))
    assert zoomed.equal(augment(noise, np.random.default_rng(1), 3, 1.25))  # seeded
