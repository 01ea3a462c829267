"""INT8 with NNCF's fast bias correction (its default) against its full one: the detection
F-score of each INT8 copy against FP32 on synthetic boards no model was trained or
calibrated on, for one or more models.

    python benchmarks/int8_bias_correction.py MODEL_DIR [MODEL_DIR ...] [--boards 100,300]

Each ``MODEL_DIR`` (a registry folder) is copied twice into ``--out`` and quantized as
``linecheck bench`` quantizes its copy (:func:`linecheck.bench.classify.int8_samples`:
calibration on the candidates of 240 synthetic boards of generator seed 0, accuracy control
on 240 of seed 1). The F-scores (DeepPCB protocol, IoU > 0.33, same type) are measured on
the ROI candidates of the first N boards of seed 11 (the bench's boards: ``--boards`` 100) and
of seed 12, one count per entry of ``--boards``. Prints one JSON object and a Markdown table
on stderr.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from inspection.backends import load_classifier  # noqa: E402
from inspection.model.registry import clone_model, load_card  # noqa: E402
from linecheck.bench.classify import (  # noqa: E402
    candidate_crops,
    f_score,
    int8_samples,
    quantize_copy,
)

TEST_SEEDS = (11, 12)


def measure(model_dir: Path, out: Path, counts: list[int]) -> dict[str, Any]:
    """FP32 and both INT8 copies' F-scores on each test set of ``model_dir``."""
    card = load_card(model_dir)
    tests = {
        f"seed{seed}x{n}": candidate_crops(seed, n, card)
        for seed, n in zip(TEST_SEEDS, counts, strict=False)
    }
    fp32 = load_classifier(model_dir, backend="openvino", threads=1)
    row: dict[str, Any] = {"fp32": {k: f_score(fp32, b) for k, b in tests.items()}}
    samples = int8_samples(card)  # the same crops for both copies
    for name, fast in (("int8_fast", True), ("int8_full", False)):
        dest = out / name
        shutil.rmtree(dest / model_dir.name, ignore_errors=True)
        copy = clone_model(model_dir, model_dir.name, dest)
        started = time.monotonic()
        quantize_copy(copy, samples, fast_bias_correction=fast)
        took = time.monotonic() - started
        int8 = load_classifier(copy, backend="openvino", threads=1, variant="int8")
        scores = {k: f_score(int8, b) for k, b in tests.items()}
        row[name] = {**scores, "seconds": round(took, 1)}
        row[f"{name}_delta"] = {k: scores[k] - row["fp32"][k] for k in tests}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", type=Path, nargs="+", help="registry folders of models")
    ap.add_argument("--boards", default="100,300", help="test boards of seed 11, seed 12")
    ap.add_argument("--out", type=Path, default=None, help="folder for the INT8 copies")
    args = ap.parse_args()
    counts = [int(n) for n in args.boards.split(",")]
    if not 1 <= len(counts) <= len(TEST_SEEDS) or min(counts) < 1:
        ap.error(f"--boards takes 1 to {len(TEST_SEEDS)} positive counts, got {args.boards!r}")
    for m in args.models:
        if not (m / "model.json").is_file():
            ap.error(f"{m} is not a model folder (no model.json)")
    out = args.out or Path(tempfile.mkdtemp(prefix="int8-bias-"))
    results = {str(m): measure(m, out / m.name, counts) for m in args.models}
    print(json.dumps(results, indent=1))
    sets = list(next(iter(results.values()))["fp32"])
    print("| model | set | FP32 F | INT8 fast: F (Δ points) | INT8 full: F (Δ points) |",
          file=sys.stderr)  # fmt: skip
    print("|---|---|---|---|---|", file=sys.stderr)
    for m, r in results.items():
        for s in sets:
            cells = [f"{r[v][s]:.4f} ({100 * r[v + '_delta'][s]:+.2f})"
                     for v in ("int8_fast", "int8_full")]  # fmt: skip
            print(f"| {Path(m).name} | {s} | {r['fp32'][s]:.4f} | {' | '.join(cells)} |",
                  file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
