"""Intervals for the benchmark's numbers: proportions (Wilson, Clopper–Pearson), drops (bootstrap, exact), means
over a few units (Student t), paired method differences (paired t, Holm).

Every accuracy and every accuracy drop the benchmark reports carries a 95 % interval, and its verdicts ("erased",
"spared") are read off the interval, not the point (docs/method.md, "Evaluation"):

- an accuracy ``k / n`` gets the Wilson score interval (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it over
  the normal approximation at the small ``n`` used here);
- a drop ``acc(original) − acc(erased)`` on the SAME evaluation seeds is a mean of paired differences
  ``d_i = correct_original(i) − correct_erased(i)`` ∈ {−1, 0, 1}; its interval is the percentile interval of a
  bootstrap over seeds (Efron & Tibshirani 1993, ch. 13);
- (protocol v1 pooled sweep numbers with a hierarchical bootstrap over styles, training seeds and evaluation seeds;
  with two training seeds it under-covered, so v2 replaced it by the exact and t intervals below.)

Protocol v2 (docs/world-benchmark.md, "Protocol v2") adds what never comes out narrower than exact:

- a count ``k / n`` gets the Clopper–Pearson interval (Clopper & Pearson 1934), computed from the binomial tail
  sums (integer ``n``: the beta quantile is the root of a finite sum, found by bisection; no SciPy at run time);
- a drop ``a − k/n`` with the original's accuracy ``a`` known gets the exact drop interval
  ``[a − CP_high(k, n), a − CP_low(k, n)]`` (:func:`exact_drop`), hulled with the between-run interval;
- a mean over ``r`` units gets ``mean ± t(0.975, r − 1)·sd/√r`` (:func:`t_interval`; the t distribution for
  integer degrees of freedom by Abramowitz & Stegun 26.7.3–4); a paired difference the paired t interval and
  p-value (:func:`paired_t`); several p-values Holm's step-down adjustment (Holm 1979, :func:`holm`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np

LEVEL = 0.95
BOOTSTRAP_DRAWS = 4000


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its interval (same units, e.g. percentage points)."""

    value: float
    low: float
    high: float

    def scaled(self, factor: float) -> Estimate:
        return Estimate(self.value * factor, self.low * factor, self.high * factor)

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high}

    def text(self, fmt: str = "{:.1f}") -> str:
        """``52.0 [38.4, 65.1]``; ``–`` when undefined."""
        if math.isnan(self.value):
            return "–"
        return f"{fmt.format(self.value)} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


NAN = Estimate(math.nan, math.nan, math.nan)


def _z(level: float) -> float:
    from statistics import NormalDist

    if not 0 < level < 1:
        raise ValueError(f"confidence level {level!r}: expected a number in (0, 1)")
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(successes: int, trials: int, level: float = LEVEL) -> Estimate:
    """Wilson score interval of a proportion ``successes / trials`` (as a fraction in [0, 1]):
    centre (k + z²/2) / (n + z²), half-width z·sqrt(k(n−k)/n + z²/4) / (n + z²)."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"wilson({successes}, {trials}): expected 0 <= successes <= trials")
    if trials == 0:
        return NAN
    z = _z(level)
    n, k = float(trials), float(successes)
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return Estimate(k / n, max(0.0, centre - half), min(1.0, centre + half))


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap draws."""
    draws = np.asarray(draws, dtype=np.float64)
    alpha = (1 - level) / 2
    return float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


def paired_difference(
    before: Sequence[float],
    after: Sequence[float],
    level: float = LEVEL,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> Estimate:
    """Mean of ``before[i] − after[i]`` (paired by index, e.g. one evaluation seed) with a bootstrap-over-pairs
    percentile interval."""
    a, b = np.asarray(before, np.float64), np.asarray(after, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_difference: expected two 1-D sequences of equal length, got {a.shape} and {b.shape}")
    if a.size == 0:
        return NAN
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(draws, d.size))
    lo, hi = percentile_interval(d[idx].mean(axis=1), level)
    return Estimate(float(d.mean()), lo, hi)


def verdict(estimate: Estimate, threshold: float, above: str, below: str) -> str:
    """``above`` when the whole interval is >= ``threshold``, ``below`` when it is entirely below, else
    ``undecided``."""
    if math.isnan(estimate.value):
        return "undecided"
    if estimate.low >= threshold:
        return above
    if estimate.high < threshold:
        return below
    return "undecided"


def erased_verdict(drop: Estimate, aim: float = 50.0) -> str:
    """Erased: the drop's lower bound reaches the aim; not erased: its upper bound is below it."""
    return verdict(drop, aim, "erased", "not erased")


def spared_verdict(drop: Estimate, limit: float = 10.0) -> str:
    """Spared: the drop's upper bound is at most ``limit`` points; damaged: its lower bound exceeds it."""
    if math.isnan(drop.value):
        return "undecided"
    if drop.high <= limit:
        return "spared"
    if drop.low > limit:
        return "damaged"
    return "undecided"


# ------------------------------------------------------------------------------------------------ exact (protocol v2)
def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (stable for the n used here, up to thousands)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq for i in range(k + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def _bisect(f: Callable[[float], float], lo: float, hi: float, iterations: int = 200) -> float:
    """Root of an increasing ``f`` on [lo, hi] (f(lo) <= 0 <= f(hi)) by bisection to machine precision."""
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(successes: int, trials: int, level: float = LEVEL) -> Estimate:
    """Clopper–Pearson ("exact") interval of ``successes / trials`` as a fraction: the lower bound is the p with
    P(X >= k | p) = α/2 (0 when k = 0), the upper the p with P(X <= k | p) = α/2 (1 when k = n). Never narrower
    than the binomial test's acceptance region; it equals the beta quantiles Beta(α/2; k, n−k+1) and
    Beta(1−α/2; k+1, n−k)."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"clopper_pearson({successes}, {trials}): expected 0 <= successes <= trials")
    if not 0 < level < 1:
        raise ValueError(f"confidence level {level!r}: expected a number in (0, 1)")
    if trials == 0:
        return NAN
    k, n, alpha = successes, trials, 1 - level
    low = 0.0 if k == 0 else _bisect(lambda p: (1 - binomial_cdf(k - 1, n, p)) - alpha / 2, 0.0, 1.0)
    high = 1.0 if k == n else _bisect(lambda p: alpha / 2 - binomial_cdf(k, n, p), 0.0, 1.0)
    return Estimate(k / n, low, high)


def exact_drop(original_correct: int, correct: int, images: int, level: float = LEVEL) -> Estimate:
    """The exact drop interval in points: the original's accuracy a = ``original_correct / images`` on the same
    images is fixed (known, not estimated), the erased model's ``correct`` of ``images`` is binomial, so the drop
    ``a − k/n`` lies in ``[a − CP_high(k, n), a − CP_low(k, n)]`` (docs/world-benchmark.md, "Intervals")."""
    if not 0 <= original_correct <= images:
        raise ValueError(f"exact_drop: original_correct {original_correct} not in [0, {images}]")
    cp = clopper_pearson(correct, images, level)
    if images == 0:
        return NAN
    a = original_correct / images
    return Estimate(a - cp.value, a - cp.high, a - cp.low).scaled(100.0)


def hull(*estimates: Estimate) -> Estimate:
    """The smallest interval containing every (defined) interval, around the first estimate's value."""
    defined = [e for e in estimates if not math.isnan(e.value)]
    if not defined:
        return NAN
    return Estimate(defined[0].value, min(e.low for e in defined), max(e.high for e in defined))


def t_cdf(t: float, df: int) -> float:
    """Student's t distribution function for integer ``df`` >= 1 (Abramowitz & Stegun 26.7.3 (odd df) and 26.7.4
    (even df): A(t|ν) = P(|T| <= |t|) as a finite series in θ = atan(t/√ν))."""
    if df < 1 or int(df) != df:
        raise ValueError(f"t_cdf: degrees of freedom {df!r}, expected an integer >= 1")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        total, term = 0.0, c
        if df > 1:
            total = c
            for j in range(3, df, 2):
                term *= c * c * (j - 1) / j
                total += term
        a = 2 / math.pi * (theta + s * total)
    else:
        total, term = 1.0, 1.0
        for j in range(2, df, 2):
            term *= c * c * (j - 1) / j
            total += term
        a = s * total
    a = min(1.0, max(0.0, a))
    return 0.5 + a / 2 if t >= 0 else 0.5 - a / 2


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with integer ``df`` (bisection on :func:`t_cdf`)."""
    if not 0 < q < 1:
        raise ValueError(f"t_quantile: {q!r} is not in (0, 1)")
    hi = 1.0
    while t_cdf(hi, df) < q:
        hi *= 2
    lo = -1.0
    while t_cdf(lo, df) > q:
        lo *= 2
    return _bisect(lambda x: t_cdf(x, df) - q, lo, hi)


def t_interval(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean of ``r`` unit values ± t((1+level)/2, r − 1)·sd/√r (a point interval for r = 1: one unit has no
    between-unit spread; callers hull it with a within-unit interval)."""
    x = np.asarray([v for v in values if not math.isnan(v)], np.float64)
    if x.size == 0:
        return NAN
    mean = float(x.mean())
    if x.size == 1:
        return Estimate(mean, mean, mean)
    half = t_quantile(0.5 + level / 2, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Estimate(mean, mean - half, mean + half)


@dataclass(frozen=True)
class PairedTest:
    """A paired t comparison: the mean difference with its t interval, the two-sided p-value, the number of pairs
    and (after :func:`holm`) the adjusted p-value."""

    difference: Estimate
    p_value: float
    pairs: int
    adjusted_p: float = math.nan

    def significant(self, alpha: float = 1 - LEVEL) -> bool:
        return not math.isnan(self.adjusted_p) and self.adjusted_p < alpha


def paired_t(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> PairedTest:
    """Paired t test of ``a[i] − b[i]``: interval mean ± t·sd/√n, p = 2·(1 − F_t(|mean|/(sd/√n), n − 1));
    p = 1 when every difference is 0, 0 when they are all equal and non-zero."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired_t: expected two 1-D sequences of equal length, got {x.shape} and {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    d = x[keep] - y[keep]
    if d.size < 2:
        return PairedTest(t_interval(d, level), math.nan, int(d.size))
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:
        return PairedTest(Estimate(mean, mean, mean), 1.0 if mean == 0 else 0.0, int(d.size))
    t = mean / (sd / math.sqrt(d.size))
    p = 2 * (1 - t_cdf(abs(t), d.size - 1))
    return PairedTest(t_interval(d, level), min(1.0, max(0.0, p)), int(d.size))


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order: sorted ascending, the i-th (0-based) of
    m is multiplied by m − i, made non-decreasing, capped at 1. NaN stays NaN and does not count towards m."""
    indexed = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    indexed.sort()
    m = len(indexed)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def as_points(estimate: Optional[Estimate]) -> Estimate:
    """A fraction estimate in percentage points."""
    return NAN if estimate is None else estimate.scaled(100.0)
