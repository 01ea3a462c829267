"""The topology prior: crop signatures, the counted bias, and every backend applying it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from inspection.backends import Backend, load_classifier
from inspection.model.labels import CLASSES, NUM_CLASSES
from inspection.model.nets import build_model
from inspection.model.preprocess import softmax
from inspection.model.registry import ModelCard, clone_model, load_card, save_model, update_card
from inspection.model.topology import (
    SIGNATURES,
    add_bias,
    as_rows,
    likelihood_bias,
    one_hot,
    signatures,
)

S = 64
DARK, LIGHT = 0, 255


def _signature(dark: int, light: int) -> int:
    return (dark + 1) * 3 + light + 1


def _trace_board() -> np.ndarray:
    """A light board with two horizontal dark traces, 8 px thick, 16 px apart."""
    board = np.full((S, S), LIGHT, np.uint8)
    board[16:24] = DARK
    board[40:48] = DARK
    return board


def _crop(board: np.ndarray, reference: np.ndarray) -> np.ndarray:
    diff = np.abs(board.astype(np.int16) - reference).astype(np.uint8)
    return np.stack([board, reference, diff])


def _defects() -> dict[str, np.ndarray]:
    """One crop per defect type, each drawn on the same two-trace template."""
    ref = _trace_board()
    made = {}
    for name in CLASSES[1:]:
        board = ref.copy()
        if name == "open":  # the upper trace cut through
            board[16:24, 30:34] = LIGHT
        elif name == "short":  # the traces bridged
            board[24:40, 30:34] = DARK
        elif name == "mousebite":  # a notch in the upper trace, not through it
            board[20:24, 28:36] = LIGHT
        elif name == "spur":  # a stub off the upper trace, not reaching the lower one
            board[24:32, 30:34] = DARK
        elif name == "copper":  # an island between the traces
            board[29:35, 10:16] = DARK
        elif name == "pin-hole":  # a hole in a thick pad
            board[4:30, 50:62] = DARK
            ref = ref.copy()
            ref[4:30, 50:62] = DARK
            board[10:14, 54:58] = LIGHT
        made[name] = _crop(board, ref)
        ref = _trace_board()
    return made


def test_signatures_say_what_a_defect_does_to_connectivity() -> None:
    crops = _defects()
    got = dict(zip(crops, signatures(np.stack(list(crops.values()))), strict=True))
    assert got == {
        "open": _signature(+1, -1),  # one more copper piece; the board on both sides joined
        "short": _signature(-1, +1),  # one copper piece less; the board between split
        "mousebite": _signature(0, 0),
        "spur": _signature(0, 0),
        "copper": _signature(+1, 0),
        "pin-hole": _signature(0, +1),
    }
    # a speck smaller than MIN_AREA changes nothing; flips and rotations change nothing
    ref = _trace_board()
    speck = ref.copy()
    speck[30:32, 30:32] = DARK
    assert signatures(_crop(speck, ref)[None])[0] == _signature(0, 0)
    opened = crops["open"]
    turned = np.stack([opened, np.rot90(opened, 1, (1, 2)), opened[:, ::-1]]).copy()
    assert set(signatures(turned)) == {_signature(+1, -1)}
    assert one_hot(turned).shape == (3, SIGNATURES)
    assert (one_hot(turned).argmax(1) == _signature(+1, -1)).all()
    with pytest.raises(ValueError, match="uint8"):
        signatures(opened.astype(np.float32)[None])


def test_the_bias_is_added_by_signature_and_checked() -> None:
    crops = np.stack(list(_defects().values()))
    logits = np.zeros((len(crops), NUM_CLASSES), np.float32)
    assert add_bias(logits, crops, None) is logits
    bias = np.arange(SIGNATURES * NUM_CLASSES, dtype=np.float32).reshape(SIGNATURES, -1)
    np.testing.assert_array_equal(add_bias(logits, crops, bias), bias[signatures(crops)])
    with pytest.raises(ValueError, match=r"\(9, 7\)"):
        add_bias(logits, crops, bias[:, :3])
    with pytest.raises(ValidationError, match="topology_bias must be 9 rows of 7"):
        ModelCard(version="bad", arch="small", topology_bias=as_rows(bias[:4]))


def test_the_prior_counts_which_signature_goes_with_which_class() -> None:
    made = _defects()
    crops = np.stack([made["open"]] * 30 + [made["mousebite"]] * 20 + [made["open"]] * 2)
    labels = np.asarray([CLASSES.index("open")] * 30 + [CLASSES.index("mousebite")] * 22)
    bias = likelihood_bias(signatures(crops), labels, NUM_CLASSES)
    assert bias.shape == (SIGNATURES, NUM_CLASSES) and bias.dtype == np.float32
    op, mb, cut, kept = CLASSES.index("open"), CLASSES.index("mousebite"), 6, 4
    assert bias[cut, op] == pytest.approx(np.log(31 / 39))  # (30 + 1) / (30 + 9)
    assert bias[cut, mb] == pytest.approx(np.log(3 / 31))  # 2 of 22 mousebites looked cut
    assert bias[kept, mb] == pytest.approx(np.log(21 / 31))
    np.testing.assert_allclose(np.exp(bias).sum(0), 1.0, rtol=1e-5)  # p(signature | class)
    assert np.allclose(bias[:, 0], np.log(1 / 9))  # a class never seen: uniform
    # a mousebite the CNN calls an open at 0.9 comes out a mousebite with the prior
    logits = np.log(np.asarray([[0.02, 0.9, 0.02, 0.06], [0.25] * 4]))
    probs = softmax(add_bias(np.pad(logits, ((0, 0), (0, 3)), constant_values=-9), crops[30:32],
                             bias))  # fmt: skip
    assert probs[0].argmax() == mb
    with pytest.raises(ValueError, match="must match"):
        likelihood_bias(signatures(crops), labels[:3], NUM_CLASSES)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """One untrained network registered twice: without a prior, and with a bias that puts
    the open signature firmly on "open"."""
    torch.manual_seed(0)
    module = build_model("small", NUM_CLASSES, pretrained=False)
    bias = np.zeros((SIGNATURES, NUM_CLASSES), np.float32)
    bias[_signature(+1, -1), CLASSES.index("open")] = 30.0  # overrides any untrained logits
    plain = save_model(
        module, ModelCard(version="plain", arch="small"), tmp_path_factory.mktemp("m")
    )
    prior = clone_model(plain, "prior")
    update_card(prior, load_card(prior).model_copy(update={"topology_bias": as_rows(bias)}))
    return plain, prior, bias


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_backends_add_the_cards_bias(
    backend: Backend, two_models: tuple[Path, Path, np.ndarray]
) -> None:
    without, with_prior, bias = two_models
    crops = np.stack(list(_defects().values()))
    plain = load_classifier(without, backend=backend, threads=2).predict_proba(crops)
    prior = load_classifier(with_prior, backend=backend, threads=2).predict_proba(crops)
    expected = softmax(np.log(plain) + bias[signatures(crops)])
    np.testing.assert_allclose(prior, expected, atol=1e-4)
    assert prior[list(_defects()).index("open")].argmax() == CLASSES.index("open")
    assert (prior.argmax(1) == plain.argmax(1)).sum() >= len(crops) - 1  # only the open moved
