"""Verdicts that survive seed noise: a claim "holds" only when its ordering is larger than the spread over seeds.

Every comparison is paired by seed (the same seed gives both runs the same data split, devices and fading):
for each seed, ``gain = baseline - candidate`` when lower is better (or the reverse). The verdict is

- **holds**: the ordering holds in every seed and a paired t-test across seeds rejects "no difference" at
  ``ALPHA`` (two-sided);
- **does not hold**: the opposite ordering is significant at ``ALPHA``;
- **inconclusive**: anything else (the difference is within seed noise, or too few seeds).

The effect size is Cohen's d_z: the mean gain over the standard deviation of the gains. With 3 seeds a paired
t-test needs a very consistent effect to reach ``ALPHA``; that is the point: three noisy seeds are not evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05


@dataclass(frozen=True)
class Comparison:
    """A paired comparison across seeds."""

    wins: int
    """Seeds in which the claimed ordering holds."""
    seeds: int
    mean_gain: float
    p_value: float
    effect_size: float
    """Cohen's d_z (mean gain / std of gains); inf when every seed gains exactly the same."""

    @property
    def verdict(self) -> str:
        if self.seeds >= 2 and self.p_value < ALPHA:
            if self.mean_gain > 0 and self.wins == self.seeds:
                return "holds"
            if self.mean_gain < 0:
                return "does not hold"
        return "inconclusive"

    def describe(self) -> str:
        d = ("n/a" if math.isnan(self.effect_size) else "inf" if math.isinf(self.effect_size)
             else f"{self.effect_size:.2f}")
        p = "n/a" if math.isnan(self.p_value) else f"{self.p_value:.3g}"
        return f"{self.wins}/{self.seeds} seeds, paired t-test p = {p}, d = {d}"


def compare(baseline: np.ndarray, candidate: np.ndarray, lower_is_better: bool = True) -> Comparison:
    """Is ``candidate`` better than ``baseline``? Arrays hold one value per seed, in the same seed order."""
    a, b = np.asarray(baseline, dtype=float), np.asarray(candidate, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs one value per seed on both sides, got {a.shape} and {b.shape}")
    gain = a - b if lower_is_better else b - a
    n = len(gain)
    sd = float(gain.std(ddof=1)) if n > 1 else math.nan
    mean = float(gain.mean())
    if n < 2:
        p, d = math.nan, math.nan
    elif sd == 0.0:
        p, d = (0.0, math.copysign(math.inf, mean)) if mean != 0 else (1.0, 0.0)
    else:
        p, d = float(stats.ttest_rel(a, b).pvalue), mean / sd
    return Comparison(int((gain > 0).sum()), n, mean, p, d)


def combine(parts: list[Comparison]) -> str:
    """The verdict of a claim made of several comparisons (e.g. "lower than both others")."""
    verdicts = [c.verdict for c in parts]
    if all(v == "holds" for v in verdicts):
        return "holds"
    if any(v == "does not hold" for v in verdicts):
        return "does not hold"
    return "inconclusive"
