"""Small statistics for benchmark summaries: bootstrap intervals, the sign test, detectable effects, curve areas.

Pure functions of numbers (numpy only). Used by the causal premise test (:mod:`attnrl.analysis.causal`) and the
learning-sweep summaries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np

_VECTORISED = {np.mean: np.mean, np.median: np.median, np.nanmean: np.nanmean}


def _as_1d(values, name: str) -> np.ndarray:
    if np.isscalar(values):
        raise ValueError(f"{name} must be a sequence of numbers, got the scalar {values!r}")
    x = np.asarray(values, dtype=float).reshape(-1)
    if x.size == 0:
        raise ValueError(f"{name} is empty: need at least one value")
    if np.isnan(x).any():
        raise ValueError(f"{name} holds NaN at positions {np.flatnonzero(np.isnan(x))[:10].tolist()}; drop them first")
    return x


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must lie in (0, 1), e.g. 0.95 for a 95% interval")


def bootstrap_ci(
    values: Sequence[float],
    n_boot: int = 10000,
    level: float = 0.95,
    seed: int = 0,
    statistic: Callable = np.mean,
) -> tuple[float, float, float]:
    """Percentile bootstrap: (statistic(values), lo, hi) with ``level`` coverage over ``n_boot`` resamples.

    ``values``: (n,) numbers, one per independent unit (e.g. per problem, or per seed). For a paired design pass
    the per-unit differences (or use :func:`paired_bootstrap_ci`). ``statistic`` maps a 1-D array to a number;
    ``np.mean``/``np.median`` run vectorised. With one value the interval collapses to it.
    """
    x = _as_1d(values, "values")
    _check_level(level)
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot} must be >= 1 (10000 is a good default)")
    estimate = float(statistic(x))
    if x.size == 1:
        return estimate, estimate, estimate
    rng = np.random.default_rng(seed)
    fast = _VECTORISED.get(statistic)
    chunk = max(1, 2_000_000 // x.size)  # bounded memory: about 16 MB of indices per chunk
    boots = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, x.size, size=(min(chunk, n_boot - start), x.size))
        sample = x[idx]
        boots.append(fast(sample, axis=1) if fast is not None else np.array([statistic(row) for row in sample]))
    dist = np.concatenate(boots)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(dist, [alpha, 1.0 - alpha])
    return estimate, float(lo), float(hi)


def paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], n_boot: int = 10000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Bootstrap interval of mean(a - b) for paired values (unit i measured under both conditions)."""
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired values need equal lengths, got {x.size} and {y.size}")
    return bootstrap_ci(x - y, n_boot=n_boot, level=level, seed=seed)


def bootstrap_ratio_ci(
    numerator: Sequence[float], denominator: Sequence[float], n_boot: int = 10000, level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean(num) / mean(den), lo, hi), resampling the paired units jointly (percentile bootstrap).

    Resamples whose denominator mean is 0 are dropped; NaN throughout when the observed denominator mean is 0.
    """
    x, y = _as_1d(numerator, "numerator"), _as_1d(denominator, "denominator")
    if x.shape != y.shape:
        raise ValueError(f"paired values need equal lengths, got {x.size} and {y.size}")
    _check_level(level)
    nan = float("nan")
    if y.mean() == 0:
        return nan, nan, nan
    estimate = float(x.mean() / y.mean())
    if x.size == 1:
        return estimate, estimate, estimate
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    den = y[idx].mean(1)
    ok = den != 0
    if not ok.any():
        return estimate, nan, nan
    ratios = x[idx].mean(1)[ok] / den[ok]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(ratios, [alpha, 1.0 - alpha])
    return estimate, float(lo), float(hi)


def sign_test(diffs: Sequence[float]) -> float:
    """Exact two-sided binomial sign test p-value of H0 "positive and negative differences equally likely".

    Zeros (ties) are dropped; with no non-zero difference the p-value is 1. p = min(1, 2 P(X <= min(k, n - k)))
    for X ~ Binomial(n, 1/2), n = non-zero differences, k = positive ones (e.g. 10 of 12 positive: 0.0386).
    """
    d = np.asarray(diffs, dtype=float).reshape(-1)
    if np.isnan(d).any():
        raise ValueError("diffs hold NaN; drop them first")
    n_pos, n_neg = int((d > 0).sum()), int((d < 0).sum())
    n = n_pos + n_neg
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(n_pos, n_neg) + 1))
    return min(1.0, 2.0 * tail / 2.0**n)


def minimum_detectable_difference(
    diffs_or_sd: Sequence[float] | float, n: int | None = None, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest true mean paired difference a two-sided level-``alpha`` test detects with ``power`` (normal approx).

    MDD = (z_{1-alpha/2} + z_{power}) * sd / sqrt(n). ``diffs_or_sd``: the per-unit differences (sd = their
    sample standard deviation, ddof=1; ``n`` defaults to their count) or a standard deviation (then ``n`` is
    required). Units are those of the differences.
    """
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"alpha={alpha} and power={power} must both lie in (0, 1)")
    if np.isscalar(diffs_or_sd):
        sd = float(diffs_or_sd)
        if n is None:
            raise ValueError("a standard deviation was given: pass n, the number of paired units")
        if sd < 0:
            raise ValueError(f"standard deviation {sd} must be >= 0")
    else:
        d = _as_1d(diffs_or_sd, "diffs_or_sd")
        if d.size < 2:
            raise ValueError("need at least two differences to estimate their standard deviation")
        sd = float(d.std(ddof=1))
        n = d.size if n is None else n
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    z = NormalDist().inv_cdf
    return (z(1.0 - alpha / 2.0) + z(power)) * sd / math.sqrt(n)


def area_under_curve(steps: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area under values(steps) divided by the step range: the curve's mean level, in value units.

    ``steps`` strictly increasing; a single point returns its value.
    """
    s, v = _as_1d(steps, "steps"), _as_1d(values, "values")
    if s.shape != v.shape:
        raise ValueError(f"steps and values need equal lengths, got {s.size} and {v.size}")
    if s.size == 1:
        return float(v[0])
    if not (np.diff(s) > 0).all():
        raise ValueError(f"steps must be strictly increasing, got {s.tolist()}")
    area = float(((v[1:] + v[:-1]) / 2.0 * np.diff(s)).sum())
    return area / float(s[-1] - s[0])


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control over ``m`` tests), in the input order.

    With p sorted ascending p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)). Rejecting
    every hypothesis whose adjusted p is below alpha controls the family-wise error rate at alpha. Example:
    [0.01, 0.04, 0.03, 0.005] -> [0.03, 0.06, 0.06, 0.02].
    """
    p = _as_1d(p_values, "p_values")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.tolist()
