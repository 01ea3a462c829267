"""Cost of the worker's audit insert (`workers.audit_sink.AuditStore.record_batch`) on the
embedded PostgreSQL: the worker thread's CPU time and the wall time per call, for batches of
``--rows`` new verdicts (each with ``--regions`` regions, as a board with candidates).

    python benchmarks/audit_insert.py [--rows 16,1] [--calls 200] [--regions 4]

Prints one JSON object: per batch size, CPU and wall ms per call and CPU ms per row (the
median of three runs of ``--calls`` calls each). The database runs on the same machine,
its own CPU is not counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from infra.db import upgrade  # noqa: E402
from linecheck.embedded import start_postgres  # noqa: E402
from schemas.events import Box, RegionVerdict, StageTimings, Verdict  # noqa: E402
from workers.audit_sink import AuditStore  # noqa: E402


def verdict(regions: int) -> Verdict:
    """A new verdict shaped like a worker's: ``regions`` scored regions, stage timings."""
    return Verdict(
        event_id=uuid.uuid4().hex,
        line="L1",
        machine="aoi-1",
        product="P1",
        board_serial=uuid.uuid4().hex[:12],
        verdict="fail",  # type: ignore[arg-type]
        board_score=0.93,
        regions=[
            RegionVerdict(
                box=Box(x1=10 + 40 * k, y1=20, x2=30 + 40 * k, y2=44),
                defect_type="short" if k == 0 else None,  # type: ignore[arg-type]
                score=0.93 if k == 0 else 0.04,
                type_score=0.88,
            )
            for k in range(regions)
        ],
        roi_method="reference",
        model_version="syn-1",
        threshold_version="t1",
        pass_below=0.3,
        fail_at_or_above=0.7,
        timings=StageTimings(decode_ms=1.1, roi_ms=6.4, classify_ms=2.9, total_ms=14.0),
        worker="bench",
        inspected_at=datetime.now(UTC),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="16,1", help="batch sizes, comma-separated")
    ap.add_argument("--calls", type=int, default=200, help="calls per run")
    ap.add_argument("--regions", type=int, default=4, help="regions per verdict")
    args = ap.parse_args()
    sizes = [int(n) for n in args.rows.split(",") if n.strip()]
    if not sizes or min(sizes) < 1 or args.calls < 1 or args.regions < 0:
        ap.error("--rows takes positive batch sizes, --calls >= 1, --regions >= 0")
    out: dict[str, object] = {"calls": args.calls, "regions": args.regions}
    with tempfile.TemporaryDirectory() as tmp:
        server = start_postgres(Path(tmp) / "pg")
        try:
            upgrade(server.url)
            store = AuditStore(server.url, audit_rate=0.1)
            store.record_batch([(verdict(args.regions), 0, 0)])  # connect, warm the caches
            for n in sizes:
                cpu_runs, wall_runs = [], []
                for _ in range(3):
                    batches = [
                        [(verdict(args.regions), 0, k) for k in range(n)] for _ in range(args.calls)
                    ]
                    cpu = wall = 0.0
                    for items in batches:
                        c0, w0 = time.thread_time(), time.perf_counter()
                        store.record_batch(items)
                        cpu += time.thread_time() - c0
                        wall += time.perf_counter() - w0
                    cpu_runs.append(cpu / args.calls * 1e3)
                    wall_runs.append(wall / args.calls * 1e3)
                cpu_ms, wall_ms = statistics.median(cpu_runs), statistics.median(wall_runs)
                out[f"rows_{n}"] = {
                    "cpu_ms_per_call": round(cpu_ms, 3),
                    "wall_ms_per_call": round(wall_ms, 3),
                    "cpu_ms_per_row": round(cpu_ms / n, 3),
                }
            store.close()
        finally:
            server.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
