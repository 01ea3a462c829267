"""Pure statistics of the quality loop: audit sampling, Wilson intervals, PSI.

No I/O here: the review sink, the drift monitor, the SQL checks in the tests and the report
all call these plain functions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

# Candidate regions per board, binned for the label-free PSI: [lo, hi) per bin, last open.
CANDIDATE_EDGES: tuple[int, ...] = (0, 1, 2, 3, 4, 6, 9, 16, 32)


def audit_fraction(event_id: str) -> float:
    """A uniform number in [0, 1) fixed by the event id (SHA-256): the audit draw."""
    digest = hashlib.sha256(event_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def audit_sampled(event_id: str, rate: float) -> bool:
    """Whether an automatically decided board is sampled for audit review at `rate`.

    Deterministic from the event id, so a redelivered event gets the same answer and anyone
    (the worker, a test, an auditor) can recompute it."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"audit rate must be in [0, 1], got {rate}")
    return rate > 0.0 and audit_fraction(event_id) < rate


def wilson_interval(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (k, n may be effective counts).

    n = 0 gives (0, 1): no evidence either way."""
    if n < 0 or k < 0 or k > n + 1e-9:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(max(0.0, p * (1 - p) / n + z2 / (4 * n * n)))
    denom = 1 + z2 / n
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


def weighted_rate(items: Iterable[tuple[bool, float]]) -> tuple[float, float, float]:
    """(rate, effective n, effective k) of weighted Bernoulli outcomes (hit, weight).

    Horvitz–Thompson ratio with Kish's effective sample size n_eff = (Σw)² / Σw², so that a
    Wilson interval on (rate · n_eff, n_eff) is honest about inverse-probability weights."""
    sw = sw2 = shit = 0.0
    for hit, w in items:
        if w <= 0:
            raise ValueError(f"weights must be positive, got {w}")
        sw += w
        sw2 += w * w
        shit += w if hit else 0.0
    if sw == 0:
        return 0.0, 0.0, 0.0
    rate = shit / sw
    n_eff = sw * sw / sw2
    return rate, n_eff, rate * n_eff


def psi(reference: Sequence[float], current: Sequence[float], smoothing: float = 0.5) -> float:
    """Population stability index Σ (c − r) · ln(c / r) of two histograms (counts per bin).

    Counts get `smoothing` added per bin (Laplace) so that an empty bin stays finite."""
    if len(reference) != len(current) or not reference:
        raise ValueError("reference and current need the same, non-zero number of bins")
    nr = sum(reference) + smoothing * len(reference)
    nc = sum(current) + smoothing * len(current)
    if nr <= 0 or nc <= 0:
        raise ValueError("histograms must not be empty")
    total = 0.0
    for r, c in zip(reference, current, strict=True):
        pr = (r + smoothing) / nr
        pc = (c + smoothing) / nc
        total += (pc - pr) * math.log(pc / pr)
    return total


def quantile_edges(values: Sequence[float], bins: int) -> list[float]:
    """Inner bin edges at the reference's quantiles (deduplicated; ties make fewer bins)."""
    if not values:
        raise ValueError("no reference values")
    ordered = sorted(values)
    edges: list[float] = []
    for i in range(1, bins):
        q = ordered[min(len(ordered) - 1, round(i * len(ordered) / bins))]
        if not edges or q > edges[-1]:
            edges.append(q)
    return edges


def histogram(values: Iterable[float], inner_edges: Sequence[float]) -> list[int]:
    """Counts per bin: bin 0 is < edges[0], bin i is [edges[i-1], edges[i]), last is ≥ edges[-1]."""
    import bisect

    counts = [0] * (len(inner_edges) + 1)
    for v in values:
        counts[bisect.bisect_right(inner_edges, v)] += 1
    return counts


def chi2_quantile(df: int, p: float) -> float:
    """Chi-square quantile by the Wilson–Hilferty approximation (good to ~1% for df ≥ 2)."""
    if df < 1 or not 0.0 < p < 1.0:
        raise ValueError(f"need df >= 1 and 0 < p < 1, got df={df}, p={p}")
    z = _normal_quantile(p)
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def _normal_quantile(p: float) -> float:
    """Inverse standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9)."""
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
         1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)  # fmt: skip
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
         6.680131188771972e01, -1.328068155288572e01)  # fmt: skip
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
         -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)  # fmt: skip
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00,
         3.754408661907416e00)  # fmt: skip
    lo = 0.02425
    if p < lo:
        q = math.sqrt(-2 * math.log(p))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
        )
    if p > 1 - lo:
        return -_normal_quantile(1 - p)
    q = p - 0.5
    r = q * q
    return (
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
        * q
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    )


def psi_limit(limit: float, bins: int, n_ref: int, n_cur: int, alpha: float = 1e-4) -> float:
    """The PSI a window must exceed to count as drift: the configured `limit`, or the level
    that sampling noise alone exceeds with probability `alpha`, whichever is higher.

    Under no change, PSI · n_ref·n_cur/(n_ref+n_cur) is about χ²(bins − 1); small windows
    therefore need a higher PSI before it means anything."""
    noise = chi2_quantile(max(1, bins - 1), 1.0 - alpha) * (1.0 / n_ref + 1.0 / n_cur)
    return max(limit, noise)
