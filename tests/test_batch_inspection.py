"""A polled batch through the inspector with one classifier call: the same verdicts as
board by board, and bad input isolated to its own event."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from inspection.explain import Explainer
from schemas.events import DeadLetter, Verdict
from tests.test_inspector import SOURCE, _event
from tests.test_inspector import inspector as inspector  # the fixture
from workers.batch_inspection import inspect_batch
from workers.inspector import Inspector


class Counting:
    """The served classifier, counting its calls; with ``refuse_batches`` it fails any call
    with more crops than that (a device out of memory)."""

    def __init__(self, inner: object, refuse_batches: int | None = None) -> None:
        self.inner = inner
        self.version = inner.version  # type: ignore[attr-defined]
        self.input_size = inner.input_size  # type: ignore[attr-defined]
        self.crop_min_side = inner.crop_min_side  # type: ignore[attr-defined]
        self.crop_sides = inner.crop_sides  # type: ignore[attr-defined]
        self.seen: list[np.ndarray] = []  # every call's crops
        self.cam_weight = getattr(inner, "cam_weight", None)
        self.calls: list[int] = []
        self.refuse_batches = refuse_batches

    def _check(self, crops: np.ndarray) -> None:
        self.calls.append(len(crops))
        self.seen.append(crops)
        if self.refuse_batches is not None and len(crops) > self.refuse_batches:
            raise RuntimeError("batch too large for the device")

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        self._check(crops)
        return self.inner.predict_proba(crops)  # type: ignore[attr-defined]

    def predict_with_features(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._check(crops)
        return self.inner.predict_with_features(crops)  # type: ignore[attr-defined]


def test_a_batch_gives_the_verdicts_of_board_by_board_with_one_classifier_call(
    inspector: Inspector, model_dir: Path
) -> None:
    from inspection.backends import load_classifier

    served = load_classifier(model_dir, features=True)
    counting = Counting(served)
    inspector.default = replace(inspector.default, classifier=counting)
    inspector.default = replace(inspector.default, explainer=Explainer(model_dir, served=served))  # type: ignore[arg-type]
    events = [_event(inspector, index=i, event_id=f"b-{i}") for i in range(6)]
    bodies = [e.model_dump_json().encode() for e in events]
    one_by_one = [inspector.process(b, SOURCE) for b in bodies]
    calls_before = len(counting.calls)
    batched = inspect_batch(inspector, bodies, [SOURCE] * len(bodies))
    assert len(counting.calls) - calls_before == 1
    for a, b in zip(one_by_one, batched, strict=True):
        assert isinstance(a, Verdict) and isinstance(b, Verdict)
        assert (a.event_id, a.verdict, len(a.regions)) == (b.event_id, b.verdict, len(b.regions))
        assert b.board_score == pytest.approx(a.board_score, abs=1e-5)
        assert (a.explanation_uri is None) == (b.explanation_uri is None)
    # a CPU worker's default: a call per board (or per boards_per_call boards)
    before = len(counting.calls)
    paired = inspect_batch(inspector, bodies, [SOURCE] * len(bodies), boards_per_call=2)
    assert len(counting.calls) - before == 3
    assert [v.verdict for v in paired] == [v.verdict for v in batched]  # type: ignore[union-attr]


def test_the_served_models_crop_geometry_cuts_its_crops(
    inspector: Inspector, model_dir: Path
) -> None:
    from board_data.synthetic import BoardGenerator
    from inspection.backends import load_classifier
    from inspection.crops import make_crops
    from inspection.roi import find_regions_aligned

    served = Counting(load_classifier(model_dir))
    served.crop_min_side, served.crop_sides = 64, (64,)  # as a card with crop_min_side = 64 loads
    inspector.default = replace(inspector.default, classifier=served)
    event = _event(inspector, index=3)
    verdict = inspector.process(event.model_dump_json().encode(), SOURCE)
    assert isinstance(verdict, Verdict) and len(served.seen) == 1
    board = BoardGenerator(seed=5).board(3)  # the event's board: 6 defects
    boxes, aligned = find_regions_aligned(board.image, board.template)
    wide = make_crops(board.image, aligned, boxes, aligned=True, min_side=64)
    assert len(boxes) > 0 and np.array_equal(served.seen[0], wide)
    assert not np.array_equal(wide, make_crops(board.image, aligned, boxes, aligned=True))


def test_bad_input_in_a_batch_is_its_own_dead_letter(inspector: Inspector) -> None:
    good = [_event(inspector, index=i, event_id=f"g-{i}") for i in range(3)]
    missing = _event(inspector, index=3, event_id="m", template_id="never-registered")
    bodies = [
        good[0].model_dump_json().encode(),
        b'{"not": "an event"',
        missing.model_dump_json().encode(),
        good[1].model_dump_json().encode(),
        good[2].model_dump_json().encode(),
    ]
    out = inspect_batch(inspector, bodies, [SOURCE] * len(bodies))
    assert [type(r).__name__ for r in out] == [
        "Verdict", "DeadLetter", "DeadLetter", "Verdict", "Verdict",
    ]  # fmt: skip
    assert isinstance(out[2], DeadLetter) and out[2].stage == "template"
    assert [r.event_id for r in out if isinstance(r, Verdict)] == ["g-0", "g-1", "g-2"]


def test_a_failed_batch_call_falls_back_to_one_call_per_board(inspector: Inspector) -> None:
    counting = Counting(inspector.default.require_classifier(), refuse_batches=64)
    inspector.default = replace(inspector.default, classifier=counting)
    events = [_event(inspector, index=i, event_id=f"f-{i}") for i in range(8)]
    bodies = [e.model_dump_json().encode() for e in events]
    sizes = []
    for e in events:  # every board alone fits
        prepared = inspector.prepare(e)
        assert not isinstance(prepared, Verdict)
        sizes.append(len(prepared.crops))
    counting.refuse_batches = max(sizes)
    if sum(sizes) <= max(sizes):
        pytest.skip("the generated boards have too few candidates to make a batch larger")
    before = len(counting.calls)
    out = inspect_batch(inspector, bodies, [SOURCE] * len(bodies))
    assert all(isinstance(r, Verdict) for r in out)
    # the batch call failed, then each board went alone
    assert counting.calls[before:] == [sum(sizes), *sizes]


def test_a_pool_inspects_boards_at_once_with_the_same_results_in_order(
    inspector: Inspector,
) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    events = [_event(inspector, index=i, event_id=f"p-{i}") for i in range(6)]
    bodies = [e.model_dump_json().encode() for e in events]
    bodies.insert(2, b'{"not": "an event"')
    alone = inspect_batch(inspector, bodies, [SOURCE] * len(bodies), boards_per_call=1)
    seen: set[str] = set()
    calls: list[int] = []
    both = threading.Barrier(2, timeout=10)  # the first two boards must be in flight together

    def before_each() -> None:
        seen.add(threading.current_thread().name)
        calls.append(1)
        if len(calls) <= 2:
            both.wait()

    with ThreadPoolExecutor(2, "inspect") as pool:
        pooled = inspect_batch(
            inspector, bodies, [SOURCE] * len(bodies), before_each, boards_per_call=1, pool=pool
        )
    assert len(seen) == 2  # the barrier let two threads through together
    assert [type(r).__name__ for r in pooled] == [type(r).__name__ for r in alone]
    assert [r.event_id for r in pooled] == [r.event_id for r in alone]
    for a, b in zip(alone, pooled, strict=True):
        if isinstance(a, Verdict):
            assert isinstance(b, Verdict)
            assert (a.verdict, len(a.regions)) == (b.verdict, len(b.regions))
            assert b.board_score == pytest.approx(a.board_score, abs=1e-6)
