"""Per-board cost of the worker's stages in one process, without Kafka (the "raw" pipeline).

    python benchmarks/pipeline.py [--boards 100] [--backend openvino|torch] [--threads 1]

Uses the newest registered model (train one with `linecheck train` or `linecheck demo`).
Prints one JSON line: ms per board per stage (mean) and boards/s for one worker process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from infra.images import encode_png
from infra.object_store import ObjectStore
from infra.settings import load_settings
from inspection.backends import load_classifier
from inspection.model.registry import load_card, resolve_model
from producers.simulator import synthetic_samples
from schemas.events import FlaggedBoard, ImageRef
from workers.inspector import Inspector


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--boards", type=int, default=100)
    parser.add_argument("--backend", choices=["openvino", "torch"], default="openvino")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--store", type=Path, default=Path(".linecheck/bench-objects"))
    args = parser.parse_args()

    import cv2

    cv2.setNumThreads(args.threads)  # as a worker does
    settings = load_settings()
    model_dir = resolve_model(settings.model.models_dir, settings.model.version)
    store = ObjectStore(args.store)
    classifier = load_classifier(model_dir, backend=args.backend, threads=args.threads)
    inspector = Inspector(classifier, load_card(model_dir).require_thresholds(), store)
    events = []
    for s in itertools.islice(synthetic_samples(seed=11), args.boards):
        if s.template_id and s.template is not None:
            store.put_template(s.template_id, encode_png(s.template))
        events.append(
            FlaggedBoard(
                line="L1",
                machine="m",
                product=s.product,
                board_serial=s.serial,
                template_id=s.template_id,
                image=ImageRef(data=s.image),
            )
        )
    inspector.inspect(events[0])  # warm-up: first inference compiles kernels
    start = time.perf_counter()
    verdicts = [inspector.inspect(e) for e in events]
    elapsed = time.perf_counter() - start
    n = len(verdicts)
    print(
        json.dumps(
            {
                "model": model_dir.name,
                "backend": args.backend,
                "threads": args.threads,
                "boards": n,
                "decode_ms": sum(v.timings.decode_ms for v in verdicts) / n,
                "roi_ms": sum(v.timings.roi_ms for v in verdicts) / n,
                "classify_ms": sum(v.timings.classify_ms for v in verdicts) / n,
                "total_ms": sum(v.timings.total_ms for v in verdicts) / n,
                "regions_per_board": sum(len(v.regions) for v in verdicts) / n,
                "boards_per_s": n / elapsed,
            }
        )
    )


if __name__ == "__main__":
    main()
