"""Statistics helpers of benchmark summaries against known values."""

import math

import numpy as np
import pytest

from attnrl.analysis.stats import (
    area_under_curve,
    bootstrap_ci,
    bootstrap_ratio_ci,
    holm_adjust,
    minimum_detectable_difference,
    paired_bootstrap_ci,
    sign_test,
)


def _binomial_two_sided(k: int, n: int) -> float:
    """Hand-written exact two-sided p of k successes in n fair trials (sum of the two tails)."""
    lo = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(lo + 1)) / 2**n
    return min(1.0, 2 * tail)


def test_sign_test_known_values():
    assert sign_test([1.0] * 10 + [-1.0] * 2) == pytest.approx(158 / 4096)  # 0.0386
    assert round(sign_test([1.0] * 10 + [-1.0] * 2), 4) == 0.0386
    assert sign_test([0.3] * 10 + [-2.0] * 2 + [0.0] * 5) == pytest.approx(158 / 4096)  # ties dropped
    assert sign_test([1.0] * 12) == pytest.approx(2 / 4096)
    assert sign_test([-1.0] * 12) == pytest.approx(2 / 4096)
    assert sign_test([1.0] * 6 + [-1.0] * 6) == 1.0
    assert sign_test([0.0, 0.0]) == 1.0 and sign_test([]) == 1.0
    assert sign_test([1.0]) == 1.0
    for k, n in [(0, 5), (3, 7), (15, 20), (1, 9)]:
        assert sign_test([1.0] * k + [-1.0] * (n - k)) == pytest.approx(_binomial_two_sided(k, n))
    assert sign_test([5.0] * 3 + [-1.0] * 17) == pytest.approx(0.002577, abs=1e-6)  # binomtest(3, 20).pvalue
    with pytest.raises(ValueError, match="NaN"):
        sign_test([1.0, float("nan")])


def test_bootstrap_ci_constant_and_order():
    assert bootstrap_ci([2.5] * 10) == (2.5, 2.5, 2.5)
    assert bootstrap_ci([4.0]) == (4.0, 4.0, 4.0)
    x = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    est, lo, hi = bootstrap_ci(x, n_boot=4000)
    assert est == pytest.approx(x.mean()) and lo < est < hi
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)  # normal theory: the percentile interval is close to it
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    assert bootstrap_ci(x, n_boot=4000) == (est, lo, hi)  # seeded
    assert bootstrap_ci(x, n_boot=4000, seed=5) != (est, lo, hi)
    _, lo90, hi90 = bootstrap_ci(x, n_boot=4000, level=0.9)
    assert lo < lo90 < hi90 < hi


def test_bootstrap_ci_generic_statistic_matches_vectorised():
    x = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    assert bootstrap_ci(x, n_boot=500, statistic=lambda v: float(np.mean(v))) == bootstrap_ci(x, n_boot=500)
    est, lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 10.0], n_boot=500, statistic=np.median)
    assert est == 2.5 and 1.0 <= lo <= est <= hi <= 10.0


def test_bootstrap_bad_input():
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="scalar"):
        bootstrap_ci(3.0)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])


def test_paired_and_ratio():
    a, b = [3.0, 5.0, 4.0, 6.0, 2.0], [1.0, 2.0, 2.0, 3.0, 1.0]
    assert paired_bootstrap_ci(a, b, n_boot=300) == bootstrap_ci(np.subtract(a, b), n_boot=300)
    assert bootstrap_ratio_ci([2.0, 4.0, 6.0], [1.0, 2.0, 3.0], n_boot=300) == pytest.approx((2.0, 2.0, 2.0))
    est, lo, hi = bootstrap_ratio_ci(a, b, n_boot=2000)
    assert est == pytest.approx(sum(a) / sum(b)) and lo <= est <= hi
    assert all(math.isnan(v) for v in bootstrap_ratio_ci([1.0, 2.0], [0.0, 0.0]))


def test_minimum_detectable_difference_known_values():
    assert minimum_detectable_difference(1.0, 1) == pytest.approx(1.959964 + 0.841621, abs=1e-5)  # 2.8016
    assert minimum_detectable_difference(2.0, 25) == pytest.approx(2 * 2.801585 / 5, abs=1e-5)
    assert minimum_detectable_difference(1.0, 1, alpha=0.01, power=0.9) == pytest.approx(2.575829 + 1.281552,
                                                                                       abs=1e-5)
    d = [1.0, -1.0, 1.0, -1.0]
    assert minimum_detectable_difference(d) == pytest.approx(2.801585 * np.std(d, ddof=1) / 2, abs=1e-5)
    assert minimum_detectable_difference(d, n=16) == pytest.approx(2.801585 * np.std(d, ddof=1) / 4, abs=1e-5)
    with pytest.raises(ValueError, match="pass n"):
        minimum_detectable_difference(1.0)
    with pytest.raises(ValueError, match="two differences"):
        minimum_detectable_difference([1.0])
    with pytest.raises(ValueError, match="power"):
        minimum_detectable_difference(1.0, 4, power=80)


def test_area_under_curve():
    assert area_under_curve([0, 1, 2], [0.0, 1.0, 0.0]) == pytest.approx(0.5)
    assert area_under_curve([0, 10, 30], [1.0, 1.0, 3.0]) == pytest.approx((10 * 1 + 20 * 2) / 30)
    assert area_under_curve([5, 7], [0.4, 0.4]) == pytest.approx(0.4)
    assert area_under_curve([3], [0.7]) == 0.7
    with pytest.raises(ValueError, match="strictly increasing"):
        area_under_curve([0, 2, 1], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="equal lengths"):
        area_under_curve([0, 1], [1.0])


def test_holm_adjust_known_values():
    # Worked by hand: sorted 0.005, 0.01, 0.03, 0.04 -> x4 0.02, x3 0.03, x2 0.06, x1 0.04 -> running max.
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5]) == [0.5]
    assert holm_adjust([0.3, 0.4, 0.9]) == pytest.approx([0.9, 0.9, 0.9])  # capped at 1 before the running max
    rng = np.random.default_rng(0)
    p = rng.uniform(size=7)
    adjusted = np.array(holm_adjust(p))
    assert (adjusted >= p).all() and (adjusted <= 1).all()
    order = np.argsort(p)
    assert (np.diff(adjusted[order]) >= 0).all()  # monotone in the raw p
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_adjust([0.2, 1.5])
