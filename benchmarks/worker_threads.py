"""Where a worker's CPU goes on a quiet line: one paced run (open-loop Poisson arrivals) through
`linecheck bench`'s own worker group on the embedded servers, and the CPU ms per board of each
thread of the workers (the inspection thread, the event loop, the sink threads, the consumer's
poll thread, librdkafka's threads) beside the bench's per-process groups and the p50/p99
publish → verdict latency.

    python benchmarks/worker_threads.py [--rate 40] [--boards 600] [--workers 2]

The threads are named from a `py-spy dump` of each worker after the run (Python thread names;
a trailing number is dropped, so the sink pool's threads add up as "AnyIO worker thread").
Set ``LINECHECK_WORKER__EXPLAIN=false`` (or any other setting) in the environment to compare.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from infra.db import upgrade  # noqa: E402
from infra.settings import load_settings  # noqa: E402
from inspection.products import register_products  # noqa: E402
from linecheck.bench.e2e import VerdictWatch, measure, worker_group  # noqa: E402
from linecheck.bench.raw import bench_events  # noqa: E402
from linecheck.embedded import services  # noqa: E402
from training.synthetic_model import ensure_model  # noqa: E402


def thread_cpu(pids: set[int]) -> dict[tuple[int, int], float]:
    """CPU seconds so far of every thread of ``pids``, by (pid, thread id)."""
    out = {}
    for pid in pids:
        for t in psutil.Process(pid).threads():
            out[(pid, t.id)] = t.user_time + t.system_time
    return out


def thread_names(pids: set[int]) -> dict[int, str]:
    """Thread id → Python thread name (or the OS name for native threads), from py-spy."""
    names: dict[int, str] = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            names[int(task.name)] = (task / "comm").read_text().strip()
        dump = subprocess.run(
            ["py-spy", "dump", "-p", str(pid)], capture_output=True, text=True, check=False
        ).stdout
        for m in re.finditer(r'Thread (\d+) \([^)]*\): "([^"]+)"', dump):
            names[int(m.group(1))] = m.group(2)
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=40.0, help="mean arrivals, boards/s")
    ap.add_argument("--boards", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    console = Console(stderr=True)
    settings = load_settings()
    ensure_model(settings, console=console)
    with services(settings, False, console) as live:
        events = bench_events(live, args.boards, 11)
        url = live.postgres.url.get_secret_value()
        upgrade(url)
        products = sorted({json.loads(e)["product"] for e in events})
        register_products(url, products, "reference", "bench", "worker_threads.py")
        run = f"threads-{np.random.default_rng().integers(1 << 30)}"
        with worker_group(live, args.workers, live.kafka.batch_size, run) as (group, procs):
            pids = {p.proc.pid for p in procs}
            watch = VerdictWatch(group)
            try:
                measure(group, watch, events[:100], None, pids)  # warm-up
                before = thread_cpu(pids)
                paced = measure(group, watch, events, args.rate, pids)
                after = thread_cpu(pids)
                names = thread_names(pids)
            finally:
                watch.close()
    per_thread: dict[str, float] = {}
    for key, seconds in after.items():
        name = re.sub(r"[-_]?\d+(_\d+)?$", "", names.get(key[1], "?"))
        per_thread[name] = per_thread.get(name, 0.0) + seconds - before.get(key, 0.0)
    report = {
        "rate": args.rate,
        "boards": len(events),
        "workers": args.workers,
        "p50_ms": round(float(np.percentile(paced.latency_ms, 50)), 1),
        "p99_ms": round(float(np.percentile(paced.latency_ms, 99)), 1),
        "thread_cpu_ms_per_board": {
            k: round(v * 1e3 / len(events), 2)
            for k, v in sorted(per_thread.items(), key=lambda kv: -kv[1])
            if v > 0
        },
        "cpu_ms_per_board": {k: round(v, 2) for k, v in paced.cpu_ms.items()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
