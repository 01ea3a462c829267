"""The raw per-board pipeline: the worker's own code (:func:`workers.batch_inspection.
inspect_batch` on serialized events in the worker's batches: JSON validation, decode, ROI,
crops, classifier, heatmaps) in N processes at once, without Kafka, PostgreSQL or Redis.
What a worker could do if its I/O were free."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from infra.images import encode_png
from infra.object_store import ObjectStore
from infra.settings import Settings, load_settings, settings_env
from producers.simulator import synthetic_samples
from schemas.events import FlaggedBoard, ImageRef

STAGES = ("decode_ms", "roi_ms", "classify_ms", "explain_ms", "total_ms")


@dataclass(frozen=True)
class RawRun:
    """``processes`` processes each inspecting the same boards, started together."""

    processes: int
    boards: int  # per process
    boards_per_s: float  # summed over the processes
    stage_ms: dict[str, float]  # mean per board, from the verdicts' timings
    wall_ms_per_board: float  # one process's wall time per board (includes JSON, overhead)
    explained: int  # boards per process with an explanation written
    regions_per_board: float


def bench_events(settings: Settings, boards: int, seed: int) -> list[bytes]:
    """``boards`` synthetic boards as serialized ``boards.flagged`` events (images inline,
    templates in the settings' object store), made before any clock starts."""
    store = ObjectStore(settings.images.object_store)
    events = []
    registered: set[str] = set()
    for s in itertools.islice(synthetic_samples(seed=seed), boards):
        if s.template_id and s.template is not None and s.template_id not in registered:
            store.put_template(s.template_id, encode_png(s.template))
            registered.add(s.template_id)
        event = FlaggedBoard(
            line="L1",
            machine="bench",
            product=s.product,
            board_serial=s.serial,
            template_id=s.template_id,
            image=ImageRef(data=s.image, media_type=s.media_type),  # type: ignore[arg-type]
        )
        events.append(event.model_dump_json().encode())
    return events


def _child(
    env: dict[str, str], events: list[bytes], barrier: Any, out: Any, index: int
) -> None:  # pragma: no cover - runs in a child process
    os.environ.update(env)
    from workers.batch_inspection import inspect_batch, inspection_pool
    from workers.inspection_processes import build_inspector
    from workers.inspector import SourceInfo

    settings = load_settings()
    inspector = build_inspector(settings)
    source = SourceInfo(topic="bench")
    inspector.process(events[0], source)  # warm-up: first inference compiles kernels
    barrier.wait()
    start = time.perf_counter()
    results = []
    size = settings.kafka.batch_size  # in the worker's batches, as a worker runs them
    pool = inspection_pool(settings.worker.inspect_threads)
    for at in range(0, len(events), size):
        chunk = events[at : at + size]
        results += inspect_batch(
            inspector, chunk, [source] * len(chunk),
            boards_per_call=settings.model.boards_per_call, pool=pool,
        )  # fmt: skip
    elapsed = time.perf_counter() - start
    rows = []
    for r in results:
        timings = getattr(r, "timings", None)
        if timings is None:
            raise RuntimeError(f"bench board dead-lettered: {getattr(r, 'reason', r)}")
        rows.append(
            [
                *(getattr(timings, k) for k in STAGES),
                float(r.explanation_uri is not None),  # type: ignore[union-attr]
                float(len(r.regions)),  # type: ignore[union-attr]
            ]
        )
    out.put((index, elapsed, rows))


def raw_run(settings: Settings, events: list[bytes], processes: int, **env: str) -> RawRun:
    """Run the boards through ``processes`` fresh processes (spawned: nothing inherited from
    this one) with the settings plus ``env`` (e.g. ``LINECHECK_WORKER__EXPLAIN``)."""
    ctx = mp.get_context("spawn")
    child_env = {**settings_env(settings), "LINECHECK_MODEL__THREADS": "1", **env}
    barrier = ctx.Barrier(processes)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_child, args=(child_env, events, barrier, out, i), daemon=True)
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    try:
        got = [out.get(timeout=600) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    failed = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if failed:
        raise RuntimeError(f"a bench process exited with code {failed[0]}")
    rows = np.asarray([row for _, _, rs in got for row in rs], np.float64)
    n = len(events)
    return RawRun(
        processes=processes,
        boards=n,
        boards_per_s=sum(n / elapsed for _, elapsed, _ in got),
        stage_ms={k: float(rows[:, i].mean()) for i, k in enumerate(STAGES)},
        wall_ms_per_board=float(np.mean([elapsed / n * 1e3 for _, elapsed, _ in got])),
        explained=int(rows[:, len(STAGES)].sum() / processes),
        regions_per_board=float(rows[:, len(STAGES) + 1].mean()),
    )
