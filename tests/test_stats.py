"""Intervals of sepce.stats: Wilson against published values and by simulated coverage; bootstraps by invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sepce.stats import (
    Estimate,
    erased_verdict,
    hierarchical_bootstrap,
    paired_difference,
    spared_verdict,
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


def test_hierarchical_bootstrap_pools_units_runs_and_seeds():
    rng = np.random.default_rng(1)
    # 5 units (styles) x 2 runs (training seeds) x 16 seeds x 3 columns
    tree = [[rng.integers(0, 2, size=(16, 3)).astype(float) for _ in range(2)] for _ in range(5)]
    first = hierarchical_bootstrap(tree, lambda m: m[0], draws=500)
    expected = np.mean([np.mean([run.mean(axis=0)[0] for run in unit]) for unit in tree])
    assert first.value == pytest.approx(expected)
    assert first.low <= first.value <= first.high
    # more levels of variation -> the interval is at least as wide as resampling one run's seeds only
    one = hierarchical_bootstrap([[tree[0][0]]], lambda m: m[0], draws=500)
    direct = paired_difference(tree[0][0][:, 0], np.zeros(16), draws=500)
    assert one.value == pytest.approx(direct.value)
    assert one.high - one.low == pytest.approx(direct.high - direct.low, abs=0.1)
    # identical runs everywhere -> a zero-width interval
    same = [[np.ones((4, 2))] * 2] * 3
    est = hierarchical_bootstrap(same, lambda m: m.max(), draws=50)
    assert (est.value, est.low, est.high) == (1.0, 1.0, 1.0)


def test_verdicts_read_the_interval():
    assert erased_verdict(Estimate(60, 52, 70)) == "erased"
    assert erased_verdict(Estimate(60, 45, 70)) == "undecided"
    assert erased_verdict(Estimate(30, 20, 45)) == "not erased"
    assert spared_verdict(Estimate(2, -5, 9)) == "spared"
    assert spared_verdict(Estimate(8, -5, 14)) == "undecided"
    assert spared_verdict(Estimate(30, 15, 40)) == "damaged"
    assert Estimate(52.0, 38.4, 65.1).text() == "52.0 [38.4, 65.1]"
