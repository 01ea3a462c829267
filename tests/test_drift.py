"""The drift monitor on the real Redis: a steady process raises nothing, an injected change
raises alerts after it and none before; label-based FPR drift is flagged by its Wilson bound."""

from __future__ import annotations

import random

import redis

from infra.settings import QualitySettings, Settings
from schemas.events import Alert
from workers.drift import BoardObservation, DriftMonitor, LabelObservation

T0 = 1_790_000_000.0


def _board(rng: random.Random, i: int, drifted: bool) -> BoardObservation:
    defective = rng.random() < 0.5
    n_regions = max(0, round(rng.gauss(19 if drifted else 4, 4 if drifted else 2)))
    if defective:
        score = rng.uniform(0.8, 1.0)
    elif drifted and rng.random() < 0.35:  # noisy scans: good boards look defective
        score = rng.uniform(0.6, 1.0)
    else:
        score = rng.uniform(0.0, 0.2) if n_regions else 0.0
    verdict = "fail" if score >= 0.5 else "pass"
    return BoardObservation(f"e{i}", "L1", "m1", verdict, score, n_regions, T0 + i)


def _run(
    monitor: DriftMonitor, boards: int, drift_from: int | None, seed: int
) -> list[tuple[int, Alert]]:
    rng = random.Random(seed)
    raised = []
    for i in range(boards):
        drifted = drift_from is not None and i >= drift_from
        for alert in monitor.observe_board(_board(rng, i, drifted)):
            raised.append((i, alert))
    return raised


def _monitor(settings: Settings, name: str, **quality: object) -> DriftMonitor:
    client = redis.Redis.from_url(settings.redis.url.get_secret_value(), decode_responses=True)
    q = QualitySettings(**quality)  # type: ignore[arg-type]
    return DriftMonitor(client, q, prefix=f"{settings.redis.key_prefix}:{name}")


def test_steady_process_raises_no_alert(settings: Settings) -> None:
    for seed in range(2):
        assert _run(_monitor(settings, f"steady{seed}"), 600, None, seed) == []


def test_injected_change_raises_alerts_after_it_and_none_before(settings: Settings) -> None:
    monitor = _monitor(settings, "drift")
    raised = _run(monitor, 600, drift_from=300, seed=1)
    metrics = {a.metric for _, a in raised}
    assert "candidates_psi" in metrics
    assert all(i >= 300 for i, _ in raised)
    first_i, first = raised[0]
    assert first_i < 300 + 100  # found within one window of the change
    assert first.trigger_event_id == f"e{first_i}"
    assert first.value > first.limit >= 0.25
    assert first.since.timestamp() >= T0 + 100  # the window after the reference
    # once per excursion: an alert is not repeated while the metric stays drifted
    assert len(raised) == len(metrics)
    # a redelivered verdict is not counted twice
    assert monitor.observe_board(_board(random.Random(0), 599, True)) == []


def test_label_based_fpr_alert_when_the_wilson_lower_bound_clears_the_limit(
    settings: Settings,
) -> None:
    monitor = _monitor(
        settings, "labels", baseline_fpr=0.02, fpr_margin=0.05, min_labelled=30, label_window=200
    )
    rng = random.Random(3)
    raised: list[tuple[int, Alert]] = []
    for i in range(400):
        drifted = i >= 200
        defective = rng.random() < 0.5
        false_call = (not defective) and rng.random() < (0.3 if drifted else 0.02)
        verdict = "fail" if defective or false_call else "pass"
        weight = 1.0 if rng.random() < 0.3 else 10.0  # reviewed boards, or a 10 % audit
        obs = LabelObservation(f"x{i}", "L1", "m1", verdict, defective, weight, T0 + i)
        raised += [(i, a) for a in monitor.observe_label(obs)]
    assert [a.metric for _, a in raised] == ["fpr"]
    i, alert = raised[0]
    assert i >= 200
    assert alert.lower is not None and alert.lower > alert.limit == 0.07
    assert alert.baseline == 0.02


def test_fnr_fpr_baselines_come_from_the_model_card_when_it_has_them(
    settings: Settings, tmp_path: object
) -> None:
    from pathlib import Path

    from inspection.model.registry import ModelCard
    from workers.review_sink import card_baselines

    models = Path(str(tmp_path)) / "models"
    for version, metrics in (
        ("top", {"board_fnr": 0.002, "board_fpr": 0.03}),
        ("val", {"val": {"board_fnr": 0.004, "board_fpr": 0.02, "f_score": 0.99}}),
        ("none", {"region_val": {"val_accuracy": 0.9}}),
    ):
        (models / version).mkdir(parents=True)
        card = ModelCard(version=version, arch="small", metrics=metrics)
        (models / version / "model.json").write_text(card.model_dump_json())
    live = settings.model_copy(deep=True)
    live.model.models_dir = models
    lookup = card_baselines(live)
    q = settings.quality
    assert lookup("top") == (0.002, 0.03)
    assert lookup("val") == (0.004, 0.02)
    assert lookup("none") == (q.baseline_fnr, q.baseline_fpr)
    assert lookup("missing") == (q.baseline_fnr, q.baseline_fpr)
