"""Intervals of sepce.stats: Wilson against published values and by simulated coverage; bootstraps by invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sepce.stats import (
    Estimate,
    binomial_cdf,
    clopper_pearson,
    erased_verdict,
    exact_drop,
    holm,
    hull,
    paired_difference,
    paired_t,
    spared_verdict,
    t_cdf,
    t_interval,
    t_quantile,
    wilson,
)


@pytest.mark.parametrize(
    "k, n, low, high",
    [  # Newcombe (1998), Table I / Brown, Cai & DasGupta (2001): 95 % Wilson score intervals
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_published_intervals(k, n, low, high):
    est = wilson(k, n)
    assert est.value == pytest.approx(k / n)
    assert est.low == pytest.approx(low, abs=6e-4)
    assert est.high == pytest.approx(high, abs=6e-4)


def test_wilson_covers_at_the_benchmark_sizes():
    rng = np.random.default_rng(0)
    for p, n in ((0.9, 16), (0.5, 25), (0.96, 50)):
        k = rng.binomial(n, p, size=4000)
        covered = np.mean([wilson(int(x), n).low <= p <= wilson(int(x), n).high for x in k])
        assert covered >= 0.92, (p, n, covered)


def test_wilson_rejects_bad_counts():
    with pytest.raises(ValueError, match="successes"):
        wilson(5, 3)
    assert math.isnan(wilson(0, 0).value)


def test_paired_difference_is_the_mean_with_a_bootstrap_interval():
    before = np.ones(16)
    after = np.r_[np.zeros(8), np.ones(8)]
    est = paired_difference(before, after)
    assert est.value == pytest.approx(0.5)
    assert 0.2 < est.low < 0.5 < est.high < 0.8
    constant = paired_difference(np.ones(10), np.zeros(10))
    assert (constant.value, constant.low, constant.high) == (1.0, 1.0, 1.0)
    assert paired_difference(before, after, seed=3) == paired_difference(before, after, seed=3)
    with pytest.raises(ValueError, match="equal length"):
        paired_difference([1, 0], [1])


def test_verdicts_read_the_interval():
    assert erased_verdict(Estimate(60, 52, 70)) == "erased"
    assert erased_verdict(Estimate(60, 45, 70)) == "undecided"
    assert erased_verdict(Estimate(30, 20, 45)) == "not erased"
    assert spared_verdict(Estimate(2, -5, 9)) == "spared"
    assert spared_verdict(Estimate(8, -5, 14)) == "undecided"
    assert spared_verdict(Estimate(30, 15, 40)) == "damaged"
    assert Estimate(52.0, 38.4, 65.1).text() == "52.0 [38.4, 65.1]"


# ------------------------------------------------------------------------------------------------ protocol v2
@pytest.mark.parametrize("k, n", [(0, 16), (3, 16), (16, 16), (7, 40), (0, 36), (79, 80), (250, 400), (1, 1)])
def test_clopper_pearson_equals_the_beta_quantiles_and_the_binomial_test(k, n):
    from scipy import stats as sps

    est = clopper_pearson(k, n)
    low = 0.0 if k == 0 else sps.beta.ppf(0.025, k, n - k + 1)
    high = 1.0 if k == n else sps.beta.ppf(0.975, k + 1, n - k)
    assert est.value == pytest.approx(k / n)
    assert est.low == pytest.approx(low, abs=1e-10) and est.high == pytest.approx(high, abs=1e-10)
    ci = sps.binomtest(k, n).proportion_ci(0.95, method="exact")
    assert (est.low, est.high) == pytest.approx((ci.low, ci.high), abs=1e-10)
    assert binomial_cdf(k, n, 0.3) == pytest.approx(sps.binom.cdf(k, n, 0.3), abs=1e-12)


def test_zero_errors_never_give_a_narrow_spared_bound():
    """Issue 20's Done-when: 0/16 errors -> upper bound >= 20 points; spared (<= 10) needs 36 error-free images."""
    drop16 = exact_drop(16, 16, 16)
    assert drop16.value == 0 and drop16.low == 0 and drop16.high >= 20.0
    assert drop16.high == pytest.approx(20.59, abs=0.01)
    assert spared_verdict(exact_drop(36, 36, 36)) == "spared"
    assert spared_verdict(exact_drop(35, 35, 35)) == "undecided"
    # the hull with a zero-width bootstrap keeps the exact width
    boot = paired_difference(np.ones(16), np.ones(16)).scaled(100)
    assert (boot.low, boot.high) == (0.0, 0.0)
    assert hull(boot, drop16).high == drop16.high
    # an original that misses 2 of 16 shifts the drop interval by its known accuracy
    shifted = exact_drop(14, 14, 16)
    assert shifted.value == 0 and shifted.low == pytest.approx(100 * (14 / 16 - clopper_pearson(14, 16).high))
    with pytest.raises(ValueError, match="original_correct"):
        exact_drop(17, 3, 16)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 30])
def test_t_distribution_against_scipy(df):
    from scipy import stats as sps

    for t in (-3.1, -0.4, 0.0, 0.7, 2.2, 8.0):
        assert t_cdf(t, df) == pytest.approx(sps.t.cdf(t, df), abs=1e-12)
    assert t_quantile(0.975, df) == pytest.approx(sps.t.ppf(0.975, df), rel=1e-9)


def test_t_interval_and_paired_t_against_scipy():
    from scipy import stats as sps

    x = np.array([53.1, 65.6, 87.5, 43.8, 71.0, 90.2])
    y = np.array([40.0, 60.0, 80.0, 50.0, 50.0, 62.5])
    est = t_interval(x)
    low, high = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert (est.value, est.low, est.high) == pytest.approx((x.mean(), low, high))
    test = paired_t(x, y)
    ref = sps.ttest_rel(x, y)
    assert test.p_value == pytest.approx(ref.pvalue, rel=1e-9) and test.pairs == 6
    ci = ref.confidence_interval(0.95)
    assert (test.difference.low, test.difference.high) == pytest.approx((ci.low, ci.high))
    assert t_interval([5.0]) == Estimate(5.0, 5.0, 5.0) and math.isnan(t_interval([]).value)
    assert paired_t([1, 2, 3], [1, 2, 3]).p_value == 1.0


def test_holm_on_a_hand_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    adjusted = holm([0.01, math.nan])
    assert adjusted[0] == pytest.approx(0.01) and math.isnan(adjusted[1])
