"""`linecheck bench` on the session's real servers: every figure measured, the ratios
consistent with the runs they come from, and the model registry left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.settings import Settings

REQUIRED = (
    "raw_boards_per_s", "e2e_boards_per_s", "e2e_over_raw", "roi_ms", "p50_ms", "p99_ms",
    "openvino_over_torch", "int8_over_fp32", "int8_f_score_delta", "batched_over_unbatched",
    "explain_cost_ms",
)  # fmt: skip


def test_bench_measures_every_ratio_in_one_run(settings: Settings, model_dir: Path) -> None:
    from inspection.model.registry import IR_INT8_XML
    from linecheck.bench import LATENCY_AT, run_bench

    result = run_bench(
        settings, boards=16, workers=2, scale=(1,), classify_boards=6, int8_boards=60,
        external=True,
    )  # fmt: skip
    json.dumps(result, allow_nan=False)  # valid JSON: no NaN anywhere
    missing = [k for k in REQUIRED if k not in result]
    assert not missing
    assert result["e2e_over_raw"] == pytest.approx(
        result["e2e_boards_per_s"] / result["raw_boards_per_s"]
    )
    # each worker's own span is within the group's: summed, they decide at least as fast
    assert result["e2e_group_boards_per_s"] <= result["e2e_boards_per_s"] * (1 + 1e-9)
    # the last verdict comes after its board reached the broker (its ack may trail a little)
    assert result["e2e_boards_per_s"] <= 1.1 * result["e2e_published_boards_per_s"]
    assert result["batched_over_unbatched"] == pytest.approx(
        result["e2e_boards_per_s"] / result["e2e_unbatched_boards_per_s"]
    )
    assert result["openvino_over_torch"] == pytest.approx(
        result["classify_ms_torch"] / result["classify_ms_openvino"]
    )
    assert result["int8_f_score_delta"] == pytest.approx(
        result["int8_f_score"] - result["fp32_f_score"]
    )
    # the stages add up to no more than the whole board
    stages = sum(result[k] for k in ("decode_ms", "roi_ms", "classify_ms", "explain_ms"))
    assert 0 < stages <= result["total_ms"] + 1e-6
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    # a verdict is sent after it is made: the time to the decision is part of the latency
    assert 0 < result["p50_to_decided_ms"] <= result["p50_ms"]
    assert 0 < result["p99_to_decided_ms"] <= result["p99_ms"]
    assert result["p99_sinks_ms"] > 0
    # publish → decided = waiting + the board's own inspection
    assert 0 < result["p50_waiting_ms"] < result["p50_to_decided_ms"]
    assert 0 < result["p99_waiting_ms"] < result["p99_to_decided_ms"]
    assert 0 < result["p99_own_ms"] < result["p99_to_decided_ms"]
    # open-loop arrivals at half the saturation rate: the line ran slower than saturated
    assert result["latency_rate"] < result["e2e_boards_per_s"] * (LATENCY_AT + 0.4)
    assert result["e2e_boards_per_s_1_workers"] > 0
    # the saturation run's 16 boards went round robin to the partitions, one per worker
    assert result["e2e_busiest_worker_share"] == pytest.approx(0.5)
    # the CPU of each part was read: the workers inspected, the broker carried the boards
    assert result["e2e_cpu_ms_worker"] > 0 and result["e2e_cpu_ms_broker"] > 0
    assert result["paced_cpu_ms_worker"] > 0 and result["unbatched_cpu_ms_worker"] > 0
    # the untrained test model finds every candidate doubtful: explanations were written
    assert result["explained_boards"] > 0
    assert result["raw_boards_per_s_no_explain"] > 0
    # INT8 was measured on a quantized copy; the registered model was not touched
    assert not (model_dir / IR_INT8_XML).exists()
    assert (Path(settings.work_dir) / "bench-models" / model_dir.name / IR_INT8_XML).is_file()


def test_bench_cli_refuses_bad_options() -> None:
    from typer.testing import CliRunner

    from linecheck.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["bench", "--scale", "two"])
    assert bad.exit_code == 2 and "--scale takes worker counts" in bad.output
    few = runner.invoke(app, ["bench", "--boards", "3"])
    assert few.exit_code == 2


def test_classify_setups_take_turns_pass_by_pass() -> None:
    """The runtimes' passes alternate (a drift of the machine's speed weighs on all alike)
    and each setup's figure is its own best pass, per board."""
    import numpy as np

    from linecheck.bench.classify import interleaved_ms

    log: list[str] = []

    class Recording:
        def __init__(self, name: str) -> None:
            self.name = name

        def predict_proba(self, crops: np.ndarray) -> np.ndarray:
            log.append(self.name)
            return np.zeros((len(crops), 7), np.float32)

    calls = [np.zeros((2, 3, 8, 8), np.uint8)] * 2  # two calls a pass
    a, b = Recording("a"), Recording("b")
    ms = interleaved_ms({"a": (a, calls), "b": (b, calls)}, boards=4, rounds=3)  # type: ignore[dict-item]
    assert log == ["a", "b"] + ["a", "a", "b", "b"] * 3  # warm-ups, then turn by turn
    assert set(ms) == {"a", "b"} and all(0.0 < v < 100.0 for v in ms.values())
