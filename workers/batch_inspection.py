"""A polled batch of events through the inspector with one classifier call per model (or
per ``boards_per_call`` boards): the crops of many boards go to the device together (on a
GPU, batches that fill it), then each board is finished on its own. On a CPU larger calls
gain nothing (`linecheck bench`: `classify_batched_over_per_board`), so workers default to
one board per call.

Bad input is isolated as in :meth:`workers.inspector.Inspector.process`: an event that
fails to decode, align or crop is a dead letter and the rest of the batch goes on; if the
batch's classifier call fails, its boards are classified one by one so that only the
poison board becomes a dead letter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from pydantic import ValidationError

from schemas.events import DeadLetter, FlaggedBoard, Verdict
from workers.inspector import InspectionError, Inspector, Prepared, SourceInfo
from workers.messages import decode_failure

Result = Verdict | DeadLetter
T = TypeVar("T")
R = TypeVar("R")


def inspect_batch(
    inspector: Inspector,
    bodies: Sequence[bytes],
    sources: Sequence[SourceInfo],
    before_each: Callable[[], None] | None = None,
    boards_per_call: int | None = None,
    pool: Executor | None = None,
) -> list[Result]:
    """One result per body, in order. ``before_each`` runs before each board (fault
    injection in chaos runs). ``boards_per_call``: at most this many boards' crops in one
    classifier call (default: the whole batch). ``pool``: boards (and classifier calls) run
    on its threads, several at once (OpenCV and OpenVINO release the GIL), so that a burst
    on one partition uses a core the other workers leave idle."""
    results: list[Result | None] = [None] * len(bodies)
    prepared: dict[int, Prepared] = {}

    def prepare(i: int) -> Result | Prepared:
        if before_each is not None:
            before_each()
        event_id: str | None = None
        try:
            event = FlaggedBoard.model_validate_json(bodies[i])
            event_id = event.event_id
            return inspector.prepare(event)
        except ValidationError as exc:
            return inspector.dead_letter(bodies[i], sources[i], *decode_failure(exc), None)
        except InspectionError as exc:
            return inspector.dead_letter(bodies[i], sources[i], exc.stage, exc.reason, event_id)

    if len(sources) != len(bodies):
        raise ValueError(f"{len(bodies)} bodies but {len(sources)} sources")
    for i, ready in enumerate(_map(pool, prepare, range(len(bodies)))):
        if isinstance(ready, Prepared):
            prepared[i] = ready
        else:
            results[i] = ready
    by_model: dict[int, list[int]] = {}
    for i, p in prepared.items():  # one call per model: products may have their own
        by_model.setdefault(id(p.model.classifier), []).append(i)
    step = boards_per_call or len(bodies) or 1
    groups = [m[at : at + step] for m in by_model.values() for at in range(0, len(m), step)]
    done = _map(pool, lambda m: _classify_group(inspector, [prepared[i] for i in m]), groups)
    for members, finished in zip(groups, done, strict=True):
        for i, result in zip(members, finished, strict=True):
            results[i] = (
                inspector.dead_letter(
                    bodies[i], sources[i], result.stage, result.reason,
                    prepared[i].event.event_id,
                )
                if isinstance(result, InspectionError)
                else result
            )  # fmt: skip
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def inspection_pool(threads: int) -> ThreadPoolExecutor | None:
    """The pool for ``worker.inspect_threads`` boards at once; None for one at a time."""
    return ThreadPoolExecutor(threads, "inspect") if threads > 1 else None


def _map(pool: Executor | None, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``fn`` over ``items`` in order: on the pool's threads, or here without one."""
    items = list(items)
    if pool is None or len(items) < 2:
        return [fn(x) for x in items]
    return list(pool.map(fn, items))


def _classify_group(
    inspector: Inspector, boards: list[Prepared]
) -> list[Verdict | InspectionError]:
    """Finish ``boards`` (same model, in order) from one classifier call over all their
    crops; one call per board if that fails."""
    counts = [len(p.crops) for p in boards]
    t = time.perf_counter()
    try:
        probs, features = Inspector.classify(
            boards[0].model, np.concatenate([p.crops for p in boards])
        )
    except InspectionError:
        return [_one(inspector, p) for p in boards]
    elapsed_ms = (time.perf_counter() - t) * 1e3
    total = max(1, sum(counts))
    out: list[Verdict | InspectionError] = []
    start = 0
    for p, n in zip(boards, counts, strict=True):
        part = slice(start, start + n)
        start += n
        try:
            out.append(
                inspector.finish(
                    p, probs[part], None if features is None else features[part],
                    elapsed_ms * n / total,
                )
            )  # fmt: skip
        except InspectionError as exc:
            out.append(exc)
    return out


def _one(inspector: Inspector, p: Prepared) -> Verdict | InspectionError:
    t = time.perf_counter()
    try:
        probs, features = Inspector.classify(p.model, p.crops)
        return inspector.finish(p, probs, features, (time.perf_counter() - t) * 1e3)
    except InspectionError as exc:
        return exc
