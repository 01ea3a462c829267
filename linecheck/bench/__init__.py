"""`linecheck bench`: every throughput ratio of the pipeline from one run, on the same
boards and the same machine (see BENCHMARKS.md for what each figure means).

1. raw: the worker's per-board code in as many processes as the workers inspect in (N, or
   N × ``worker.processes``), no Kafka (explanations on, then off);
2. end to end: N `linecheck worker` processes on the embedded (or configured) servers,
   saturation throughput with the default batch and with batches of one, then
   publish-to-verdict latency at a fraction of saturation with open-loop Poisson arrivals
   (split into the wait before each board's own inspection, the inspection, the sinks);
3. the classify stage alone: OpenVINO vs torch eager, INT8 vs FP32, in the worker's batches
   and per board or per crop;
4. optionally (`--scale 1,2,4`): end-to-end saturation with each number of workers.
"""

from __future__ import annotations

import os
import platform
import time
import uuid
from typing import Any

import numpy as np
from rich.console import Console

from infra.settings import Settings
from linecheck.bench.classify import INT8_BOARDS, candidate_crops, compare
from linecheck.bench.e2e import e2e_runs
from linecheck.bench.raw import bench_events, raw_run
from linecheck.embedded import services

LATENCY_AT = 0.5  # the latency run's arrival rate, as a fraction of the saturation rate


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q))


def run_bench(
    settings: Settings,
    *,
    boards: int = 1000,
    workers: int = 2,
    seed: int = 11,
    scale: tuple[int, ...] = (),
    classify_boards: int = 100,
    int8_boards: int = INT8_BOARDS,
    external: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run every measurement and return them as one flat JSON-ready dict. ``int8_boards``:
    synthetic boards that calibrate a model without an INT8 IR, and as many that control it."""
    from inspection.model.registry import load_card
    from training.synthetic_model import ensure_model

    console = console or Console(stderr=True)
    if boards < 8:
        raise ValueError(f"--boards must be at least 8, got {boards}")
    model_dir = ensure_model(settings, console=console)
    started = time.monotonic()
    tag = uuid.uuid4().hex[:6]  # this run's topics and groups (`bench-<tag>-…`)
    out: dict[str, Any] = {
        "model": model_dir.name,
        "boards": boards,
        "workers": workers,
        "processes_per_worker": settings.worker.processes,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "backend": settings.model.backend,
        "batch_size": settings.kafka.batch_size,
    }
    with services(settings, external, console) as live:
        with console.status(f"making {boards} boards"):
            events = bench_events(live, boards, seed)
        inspecting = workers * live.worker.processes  # the raw side gets as many processes
        with console.status(f"raw: {inspecting} processes, explanations on"):
            on = raw_run(live, events, inspecting)
        with console.status(f"raw: {inspecting} processes, explanations off"):
            off = raw_run(live, events, inspecting, LINECHECK_WORKER__EXPLAIN="false")
        out.update(
            raw_boards_per_s=on.boards_per_s,
            raw_boards_per_s_no_explain=off.boards_per_s,
            **{k: v for k, v in on.stage_ms.items()},
            regions_per_board=on.regions_per_board,
            explained_boards=on.explained / on.boards,
            # per board on one core: what explanations add to the wall time of the whole code
            explain_cost_ms=on.wall_ms_per_board - off.wall_ms_per_board,
        )
        with console.status(f"end to end: {workers} workers, batch {live.kafka.batch_size}"):
            batched, paced = e2e_runs(
                live, events, workers, live.kafka.batch_size, f"{tag}-batched", LATENCY_AT
            )
        assert paced is not None
        waiting = [d - o for d, o in zip(paced.to_decided_ms, paced.own_ms, strict=True)]
        with console.status(f"end to end: {workers} workers, batch 1"):
            single, _ = e2e_runs(live, events, workers, 1, f"{tag}-unbatched")
        out.update(
            # summed over the workers as raw sums its processes (bench.e2e.measure)
            e2e_boards_per_s=batched.per_worker_per_s,
            e2e_over_raw=batched.per_worker_per_s / on.boards_per_s,
            # the whole group: first publish → the last verdict of any worker
            e2e_group_boards_per_s=batched.boards_per_s,
            # the broker's intake in that run (publisher, broker and workers on the same
            # cores): end to end cannot pass it
            e2e_published_boards_per_s=batched.published_per_s,
            e2e_unbatched_boards_per_s=single.per_worker_per_s,
            batched_over_unbatched=batched.per_worker_per_s / single.per_worker_per_s,
            latency_rate=paced.boards_per_s,
            p50_ms=_percentile(paced.latency_ms, 50),
            p99_ms=_percentile(paced.latency_ms, 99),
            # where the latency goes: until the verdict is made (waiting behind other boards,
            # the poll, the inspection), then the batch's sinks (audit insert, send)
            p50_to_decided_ms=_percentile(paced.to_decided_ms, 50),
            p99_to_decided_ms=_percentile(paced.to_decided_ms, 99),
            p99_sinks_ms=_percentile(
                [a - b for a, b in zip(paced.latency_ms, paced.to_decided_ms, strict=True)], 99
            ),
            # until the board's own inspection began: the broker, the poll and the queue of
            # boards in front of it on its worker (its partitions' boards wait for it alone)
            p50_waiting_ms=_percentile(waiting, 50),
            p99_waiting_ms=_percentile(waiting, 99),
            p99_own_ms=_percentile(paced.own_ms, 99),
            saturated_p50_ms=_percentile(batched.latency_ms, 50),
            # the saturation run's boards are spread evenly over the partitions (bench.e2e)
            e2e_busiest_worker_share=batched.busiest_share,
            e2e_steady_boards_per_s=batched.steady_per_s,
        )
        # CPU ms per board of each part (workers, broker, postgres, redis, bench, other,
        # idle) in each run: what the workers share the cores with (bench.cpu)
        for prefix, run_ in (("e2e", batched), ("paced", paced), ("unbatched", single)):
            out.update({f"{prefix}_cpu_ms_{k}": v for k, v in run_.cpu_ms.items()})
        for n in scale:
            with console.status(f"scaling: {n} worker(s)"):
                run, _ = e2e_runs(live, events, n, live.kafka.batch_size, f"{tag}-scale{n}")
            out[f"e2e_boards_per_s_{n}_workers"] = run.per_worker_per_s
    with console.status("classify stage: OpenVINO, torch, INT8"):
        crops = candidate_crops(seed, min(classify_boards, boards), load_card(model_dir))
        per_call = settings.model.boards_per_call
        out.update(compare(model_dir, settings.work_dir, crops, per_call, int8_boards))
    out["bench_seconds"] = time.monotonic() - started
    return out
