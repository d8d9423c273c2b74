"""Intervals for the benchmark's numbers: a proportion (Wilson), a paired difference and a pooled mean (bootstrap).

Every accuracy and every accuracy drop the benchmark reports carries a 95 % interval, and its verdicts ("erased",
"spared") are read off the interval, not the point (docs/method.md, "Evaluation"):

- an accuracy ``k / n`` gets the Wilson score interval (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it over
  the normal approximation at the small ``n`` used here);
- a drop ``acc(original) − acc(erased)`` on the SAME evaluation seeds is a mean of paired differences
  ``d_i = correct_original(i) − correct_erased(i)`` ∈ {−1, 0, 1}; its interval is the percentile interval of a
  bootstrap over seeds (Efron & Tibshirani 1993, ch. 13);
- a number pooled over several erasures (a method's mean drop over styles × training seeds) gets a hierarchical
  bootstrap: resample the top-level units (styles), then the runs within each (training seeds), then the
  evaluation seeds within each run (Davison & Hinkley 1997, §3.8), so every source of variation is in the interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

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


#: A two-level sample: units (e.g. erased styles) → runs (e.g. training seeds) → per-seed values of a run, as an
#: array of shape (seeds, K) — K columns of paired quantities a statistic combines (e.g. one per evaluated style).
Tree = Sequence[Sequence[np.ndarray]]


def hierarchical_bootstrap(
    tree: Tree,
    statistic: Callable[[np.ndarray], float],
    level: float = LEVEL,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> Estimate:
    """A pooled statistic and its hierarchical-bootstrap interval.

    ``tree[u][r]`` is run ``r`` of unit ``u``: an array (seeds, K) of per-evaluation-seed values. ``statistic``
    maps the per-seed MEAN of one run (a length-K vector) to that run's number (e.g. the drop on its erased style,
    or the largest drop over its other styles); the pooled value is the mean over units of the mean over their runs.
    Each draw resamples units, then runs within each drawn unit, then seeds within each drawn run (rows of the
    array, so paired columns stay paired)."""
    units = [[np.asarray(run, np.float64) for run in unit] for unit in tree if len(unit)]
    if not units:
        return NAN

    def pooled(chosen_units) -> float:
        return float(np.mean([np.mean([statistic(run.mean(axis=0)) for run in unit]) for unit in chosen_units]))

    value = pooled(units)
    rng = np.random.default_rng(seed)
    out = np.empty(draws)
    for j in range(draws):
        drawn_units = [units[u] for u in rng.integers(0, len(units), len(units))]
        resampled = []
        for unit in drawn_units:
            runs = [unit[r] for r in rng.integers(0, len(unit), len(unit))]
            resampled.append([run[rng.integers(0, len(run), len(run))] for run in runs])
        out[j] = pooled(resampled)
    lo, hi = percentile_interval(out, level)
    return Estimate(value, lo, hi)


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


def as_points(estimate: Optional[Estimate]) -> Estimate:
    """A fraction estimate in percentage points."""
    return NAN if estimate is None else estimate.scaled(100.0)
