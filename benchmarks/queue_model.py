"""What the p99 publish → verdict latency at half saturation is made of, and what it would
take to bring it to a target: the boards' own inspection times measured here (the bench's
synthetic boards in this process, one core, the served model, explanations on), then a
queue simulated with them at `linecheck bench`'s latency run (Poisson arrivals at half the
saturation rate) in the two worker shapes:

- ``workers``: two single-process workers, each board to one of them at random (a line's
  hashed keys), each worker a first-come-first-served queue of its own;
- ``processes``: one worker, two inspection processes taking boards from one queue.

    python benchmarks/queue_model.py --bench BENCH.json [--bench BENCH2.json ...]
        [--boards 400] [--target-ms 100] [--seed 11]
    python benchmarks/queue_model.py --check

Each ``BENCH.json`` is a `linecheck bench --json` output of either shape (its
``processes_per_worker`` says which); it gives the rate (``latency_rate``), the slowdown of
a board's own inspection on the shared cores (its ``p99_own_ms`` over the p99 measured here)
and, from its median (``p50_ms``), the part of every board's latency that is neither queue nor
inspection (broker, poll, hand-over, sinks: a constant). The model's p99 is printed beside
the run's, then the factor by which the boards' own time would have to shrink (the
saturation rate, and so the latency run's rate, growing by the same factor) for the model's
p99 to meet ``--target-ms``. ``--check`` only runs the simulation against queueing theory
(exponential service of 10 ms, 100 arrivals a second: M/M/1 per worker, M/M/2 for one
queue) and prints the mean times in the system beside the formulas'. Uses the synthetic
model of `linecheck bench` (`LINECHECK_MODEL__MODELS_DIR` / `LINECHECK_MODEL__VERSION`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from infra.settings import load_settings  # noqa: E402
from linecheck.bench.raw import bench_events  # noqa: E402
from workers.batch_inspection import inspect_batch  # noqa: E402
from workers.inspection_processes import build_inspector  # noqa: E402
from workers.inspector import SourceInfo  # noqa: E402

ARRIVALS = 200_000  # simulated boards per estimate: the p99 to well under a millisecond


def own_times(boards: int, seed: int) -> np.ndarray:
    """Wall ms of each board's inspection, one at a time, in this process (one core)."""
    os.environ["LINECHECK_MODEL__THREADS"] = "1"  # as `linecheck bench` starts its workers
    settings = load_settings()
    inspector = build_inspector(settings)
    events = bench_events(settings, boards, seed)
    source = SourceInfo(topic="bench")
    inspect_batch(inspector, events[:2], [source] * 2)  # warm-up: first inference compiles
    out = []
    for event in events:
        start = time.perf_counter()
        inspect_batch(inspector, [event], [source])
        out.append((time.perf_counter() - start) * 1e3)
    return np.array(out)


def simulate(
    service_ms: np.ndarray, rate_per_s: float, shape: str, rng: np.random.Generator
) -> np.ndarray:
    """Wait + service (ms) of ARRIVALS Poisson arrivals at ``rate_per_s`` whose service
    times are drawn from ``service_ms``: two queues of one server each, the arrivals split at
    random (``workers``), or one queue of two servers (``processes``)."""
    arrive = np.cumsum(rng.exponential(1e3 / rate_per_s, ARRIVALS))
    service = rng.choice(service_ms, ARRIVALS)
    done = np.empty(ARRIVALS)
    if shape == "workers":
        queue = rng.integers(0, 2, ARRIVALS)
        free = [0.0, 0.0]
        for i in range(ARRIVALS):
            q = queue[i]
            free[q] = done[i] = max(arrive[i], free[q]) + service[i]
    else:
        servers = [0.0, 0.0]
        for i in range(ARRIVALS):
            s = 0 if servers[0] <= servers[1] else 1
            servers[s] = done[i] = max(arrive[i], servers[s]) + service[i]
    return done - arrive


@dataclass(frozen=True)
class RunModel:
    """One bench run's latency run as a queue: its shape and rate, the boards' own times
    scaled by the run's slowdown on the shared cores, and the part of every board's latency
    that is neither queue nor inspection (broker, poll, hand-over, sinks), a constant set so
    that the model's median is the run's."""

    own: np.ndarray
    rate: float
    shape: str
    slowdown: float
    sim_seed: int
    fixed: float = 0.0

    @classmethod
    def of(cls, own: np.ndarray, bench: dict[str, float], seed: int) -> RunModel:
        shape = "processes" if bench["processes_per_worker"] > 1 else "workers"
        slowdown = bench["p99_own_ms"] / float(np.percentile(own, 99))
        sim_seed = int(np.random.default_rng(seed).integers(1 << 31))
        bare = cls(own, bench["latency_rate"], shape, slowdown, sim_seed)
        return replace(bare, fixed=bench["p50_ms"] - float(np.percentile(bare.queued(1.0), 50)))

    def queued(self, shrink: float) -> np.ndarray:
        """Wait + inspection (ms) with the boards' own time × ``shrink`` (the rate divided by
        it: half of a faster saturation)."""
        return simulate(
            self.own * self.slowdown * shrink, self.rate / shrink, self.shape,
            np.random.default_rng(self.sim_seed),
        )  # fmt: skip

    def percentiles(self, shrink: float = 1.0) -> tuple[float, float]:
        """The model's p50 / p99 publish → verdict (ms)."""
        latency = self.fixed + self.queued(shrink)
        return float(np.percentile(latency, 50)), float(np.percentile(latency, 99))

    def shrink_for(self, target_ms: float) -> float:
        """The largest factor (0.05–2, bisection) on the boards' own time for which the p99 ≤
        ``target_ms``: under 1, how much faster the inspection must get; over 1, the room."""
        lo, hi = 0.05, 2.0
        for _ in range(14):
            mid = (lo + hi) / 2
            if self.percentiles(mid)[1] <= target_ms:
                lo = mid
            else:
                hi = mid
        return lo


def check(seed: int) -> dict[str, float]:
    """Mean time in the system, simulated and by formula, for exponential service (10 ms)
    at 100 arrivals/s: two queues at 50/s each (M/M/1: 1 / (μ − λ)) and one queue of two
    servers (M/M/2: 1/μ + C / (2μ − λ), Erlang's C = 1/3 at ρ 0.5)."""
    rng = np.random.default_rng(seed)
    service = rng.exponential(10.0, ARRIVALS)
    mu, lam = 100.0, 100.0
    rho = lam / (2 * mu)
    erlang_c = 2 * rho**2 / (1 + rho)  # M/M/2's chance of waiting
    return {
        "workers_mean_ms": round(float(simulate(service, lam, "workers", rng).mean()), 2),
        "workers_theory_ms": round(1e3 / (mu - lam / 2), 2),
        "processes_mean_ms": round(float(simulate(service, lam, "processes", rng).mean()), 2),
        "processes_theory_ms": round(1e3 / mu + 1e3 * erlang_c / (2 * mu - lam), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, action="append", default=[])
    ap.add_argument("--check", action="store_true", help="the simulation against theory")
    ap.add_argument("--boards", type=int, default=400)
    ap.add_argument("--seed", type=int, default=11, help="the bench's board seed")
    ap.add_argument("--target-ms", type=float, default=100.0)
    args = ap.parse_args()
    if args.check:
        print(json.dumps(check(args.seed), indent=1))
        return
    if not args.bench:
        ap.error("give at least one --bench BENCH.json (a `linecheck bench --json` output)")
    own = own_times(args.boards, args.seed)
    runs: list[dict[str, object]] = []
    for path in args.bench:
        bench = json.loads(path.read_text())
        run = RunModel.of(own, bench, args.seed)
        p50, p99 = run.percentiles()
        runs.append(
            {
                "bench": str(path),
                "shape": f"{bench['workers']} worker(s) × {bench['processes_per_worker']}",
                "latency_rate": round(run.rate, 1),
                "slowdown": round(run.slowdown, 2),
                "p50_ms": round(p50, 1),
                "neither_queue_nor_inspection_ms": round(run.fixed, 1),
                "measured_p99_ms": round(bench["p99_ms"], 1),
                "model_p99_ms": round(p99, 1),
                "own_time_factor_for_target": round(run.shrink_for(args.target_ms), 3),
            }
        )
    own_ms = {
        "boards": len(own),
        "mean": round(float(own.mean()), 2),
        "p50": round(float(np.percentile(own, 50)), 2),
        "p99": round(float(np.percentile(own, 99)), 2),
    }
    print(json.dumps({"own_ms": own_ms, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
