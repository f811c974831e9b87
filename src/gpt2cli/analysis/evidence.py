"""How sure a verdict is: intervals for rates and means, and the rule that turns them into a verdict.

Every verdict of `gpt2 eval` and the training-time mismatch alarm compares a
figure of the model's output with the same figure of real text (or of the
same model earlier). A handful of samples gives a figure that moves a lot from
one draw to the next, so each comparison carries a 95% interval and a verdict
fires only when the whole interval is past its threshold.

Intervals:
- a rate k/n: Wilson's score interval (Wilson 1927; Brown, Cai & DasGupta
  2001 recommend it over the normal approximation, which collapses to [0, 0]
  at k = 0).
- a difference of two independent rates: Newcombe's hybrid score interval
  (Newcombe 1998, method 10), built from the two Wilson intervals.
- means, ratios of sums and their differences: the percentile bootstrap
  (Efron & Tibshirani 1993), resampling the independent units (samples,
  documents) with a fixed seed so a verdict is reproducible.

The rule (`graded_verdict`): with the rise d over the reference, its
interval [lo, hi] and thresholds t_1 < t_2 < ... for the levels,
- the highest level whose threshold lo exceeds: that level (beyond chance);
- else, when d itself exceeds the lowest threshold: "not enough evidence"
  (it looks bad, but chance alone could give it);
- else "ok".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
Z = 1.959963984540054  # two-sided 95% normal quantile
RESAMPLES = 2000
NOT_ENOUGH = "not enough evidence"


def wilson_interval(k: int, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval for a rate of k successes in n trials; (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 or n the bound is exactly 0 or 1; rounding must not move it inside.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def rate_difference_interval(k1: int, n1: int, k2: int, n2: int, z: float = Z) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 - p2 (independent samples)."""
    p1, p2 = (k1 / n1 if n1 else 0.0), (k2 / n2 if n2 else 0.0)
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, lo), min(1.0, hi)


def resample_indices(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) indices drawn with replacement."""
    return rng.integers(0, n, size=(resamples, n))


def bootstrap_ratio(
    sums: Sequence[float], counts: Sequence[float], resamples: int = RESAMPLES, seed: int = 0
) -> np.ndarray:
    """Bootstrap draws of sum(sums) / sum(counts), resampling the units (rows) with replacement.

    A mean over tokens grouped by document is such a ratio: the documents are
    the independent units, not the tokens (tokens of one story are correlated).
    """
    s = np.asarray(sums, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    if s.size == 0:
        return np.full(resamples, np.nan)
    idx = resample_indices(s.size, resamples, np.random.default_rng(seed))
    with np.errstate(invalid="ignore", divide="ignore"):
        return s[idx].sum(axis=1) / c[idx].sum(axis=1)


def bootstrap_mean(values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Bootstrap draws of the mean of `values` (the units resampled with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    return bootstrap_ratio(v, np.ones_like(v), resamples, seed)


def interval(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap draws (the finite ones; NaN, NaN when there are none)."""
    values = np.asarray(draws, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(values, [a, 1 - a])
    return float(lo), float(hi)


def mean_difference(
    a: Sequence[float], b: Sequence[float], resamples: int = RESAMPLES, seed: int = 0
) -> dict:
    """mean(a) - mean(b) of two independent groups with its bootstrap interval and group sizes."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    da, db = bootstrap_mean(a, resamples, seed), bootstrap_mean(b, resamples, seed + 1)
    lo, hi = interval(da - db)
    return {
        "n": int(a.size),
        "mean": float(a.mean()) if a.size else None,
        "interval": list(interval(da)) if a.size else None,
        "reference_n": int(b.size),
        "reference_mean": float(b.mean()) if b.size else None,
        "reference_interval": list(interval(db)) if b.size else None,
        "rise": float(a.mean() - b.mean()) if a.size and b.size else None,
        "rise_interval": [lo, hi] if a.size and b.size else None,
    }


def rate_difference(k: int, n: int, k_ref: int, n_ref: int) -> dict:
    """k/n - k_ref/n_ref with Wilson intervals for each rate and Newcombe's for the difference."""
    rate = k / n if n else None
    ref = k_ref / n_ref if n_ref else None
    return {
        "n": int(n),
        "count": int(k),
        "rate": rate,
        "interval": list(wilson_interval(k, n)),
        "reference_n": int(n_ref),
        "reference_count": int(k_ref),
        "reference_rate": ref,
        "reference_interval": list(wilson_interval(k_ref, n_ref)),
        "rise": None if rate is None or ref is None else rate - ref,
        "rise_interval": list(rate_difference_interval(k, n, k_ref, n_ref)),
    }


def graded_verdict(
    rise: float | None, lo: float | None, levels: Sequence[tuple[str, float]]
) -> str:
    """The verdict for a rise with lower interval bound `lo`; `levels` as (name, threshold), any order.

    See the module docstring for the rule. No interval (lo None) never fires.
    """
    if rise is None or not math.isfinite(rise):
        return NOT_ENOUGH
    ordered = sorted(levels, key=lambda x: x[1], reverse=True)
    for name, threshold in ordered:
        if lo is not None and math.isfinite(lo) and lo > threshold:
            return name
    if rise > ordered[-1][1]:
        return NOT_ENOUGH
    return "ok"


def worst(verdicts: Sequence[str], order: Sequence[str]) -> str:
    """The most severe of `verdicts`; `order` lists them mildest first (NOT_ENOUGH after "ok")."""
    rank = {v: i for i, v in enumerate(order)}
    return max(verdicts, key=lambda v: rank[v])


def fmt_interval(lo: float | None, hi: float | None, spec: str = ".3f") -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "[n/a]"
    return f"[{format(lo, spec)}, {format(hi, spec)}]"

