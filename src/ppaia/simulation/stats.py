"""Mean, sample standard deviation and 95% confidence interval of a few seeds' results.

A sweep has 2–5 seeds per cell, so the interval uses Student's t with n − 1 degrees of freedom (the normal
quantile 1.96 would understate it by a factor of up to 6.5 at n = 2), and the standard deviation is the
sample one (n − 1 in the denominator). With one seed there is no spread to estimate: both are NaN, and
tables print ``n=1`` instead of a misleading ``± 0``.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import t as student_t

__all__ = ["CONFIDENCE", "Estimate", "estimate"]

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """n values summarised: mean, sample standard deviation and the half-width of the 95% t interval."""

    n: int
    mean: float
    sd: float  # NaN when n == 1
    ci95: float  # mean ± ci95 is the 95% confidence interval of the mean; NaN when n == 1

    @property
    def spread(self) -> bool:
        """Whether there is a spread to report (at least two values)."""
        return self.n > 1


def estimate(values: Sequence[float]) -> Estimate:
    """Summarise `values` (at least one)."""
    if not values:
        raise ValueError("estimate: no values")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Estimate(1, mean, math.nan, math.nan)
    sd = statistics.stdev(values)
    return Estimate(len(values), mean, sd, _quantile(len(values) - 1) * sd / math.sqrt(len(values)))


@functools.cache
def _quantile(df: int) -> float:
    """Student's t quantile of the 95% interval (cached: a sweep's curves ask it at every round)."""
    return float(student_t.ppf((1 + CONFIDENCE) / 2, df))
