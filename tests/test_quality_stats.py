"""Pure statistics of the quality loop against known values."""

from __future__ import annotations

import math

import pytest

from infra.stats import (
    audit_fraction,
    audit_sampled,
    chi2_quantile,
    histogram,
    psi,
    psi_limit,
    quantile_edges,
    weighted_rate,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        # z = 1.96 (95%); 0/n has the closed form upper = z² / (n + z²) = 0.277540 for n = 10
        (0, 10, 0.0, 3.8416 / 13.8416),
        (5, 10, 0.236590, 0.763410),
        (10, 10, 1 - 3.8416 / 13.8416, 1.0),
        (1, 100, 0.001767, 0.054488),
        (81, 263, 0.255288, 0.366211),
    ],
)
def test_wilson_interval_matches_known_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=2e-6)
    # Independent check: Wilson's bounds are where the score test is exactly at z:
    # (p̂ − p)² = z² p (1 − p) / n
    for p in got:
        if 0.0 < p < 1.0:
            assert (k / n - p) ** 2 == pytest.approx(1.96**2 * p * (1 - p) / n, rel=1e-9)


def test_wilson_interval_edge_cases() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(3, 10, z=2.576)  # 99% is wider than 95%
    lo95, hi95 = wilson_interval(3, 10)
    assert lo < lo95 < 0.3 < hi95 < hi
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_psi_of_known_histograms() -> None:
    # Σ (c − r) ln(c / r) for r = 25% each, c = 10/20/30/40%
    expected = (
        -0.15 * math.log(0.4) - 0.05 * math.log(0.8) + 0.05 * math.log(1.2) + 0.15 * math.log(1.6)
    )
    assert psi([25, 25, 25, 25], [10, 20, 30, 40], smoothing=0) == pytest.approx(expected)
    assert expected == pytest.approx(0.228217, abs=1e-6)
    assert psi([5, 5], [50, 50]) == pytest.approx(0.0)
    assert psi([10, 0], [0, 10]) > 1.0  # empty bins stay finite with smoothing
    assert math.isfinite(psi([10, 0], [0, 10]))


def test_quantile_edges_and_histogram() -> None:
    values = [i / 100 for i in range(100)]
    edges = quantile_edges(values, 4)
    assert edges == [0.25, 0.5, 0.75]
    assert histogram(values, edges) == [25, 25, 25, 25]
    assert quantile_edges([0.0] * 50 + [1.0] * 50, 10) == [0.0, 1.0]  # ties: fewer bins


def test_chi2_quantile_and_psi_noise_floor() -> None:
    assert chi2_quantile(9, 0.999) == pytest.approx(27.877, rel=0.01)
    assert chi2_quantile(1, 0.95) == pytest.approx(3.841, rel=0.03)  # worst at df = 1
    # 100 vs 100 boards in 10 bins: noise alone reaches PSI ~0.56 once in 1000 windows
    assert psi_limit(0.25, 10, 100, 100, alpha=0.001) == pytest.approx(27.877 * 0.02, rel=0.01)
    assert psi_limit(0.25, 10, 10_000, 10_000) == 0.25


def test_audit_sampling_is_deterministic_and_close_to_the_rate() -> None:
    ids = [f"event-{i}" for i in range(20_000)]
    picked = [audit_sampled(e, 0.1) for e in ids]
    assert picked == [audit_sampled(e, 0.1) for e in ids]
    assert sum(picked) / len(ids) == pytest.approx(0.1, abs=0.006)
    assert not any(audit_sampled(e, 0.0) for e in ids[:100])
    assert all(audit_sampled(e, 1.0) for e in ids[:100])
    assert 0.0 <= audit_fraction("x") < 1.0
    with pytest.raises(ValueError):
        audit_sampled("x", 1.5)


def test_weighted_rate_uses_kish_effective_n() -> None:
    rate, n_eff, k_eff = weighted_rate([(True, 1.0), (False, 1.0), (False, 1.0), (False, 1.0)])
    assert (rate, n_eff, k_eff) == (0.25, 4.0, 1.0)
    # one audited miss standing for 10 boards, two reviewed catches
    rate, n_eff, _ = weighted_rate([(True, 10.0), (False, 1.0), (False, 1.0)])
    assert rate == pytest.approx(10 / 12)
    assert n_eff == pytest.approx(144 / 102)
