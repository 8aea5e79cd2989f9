"""Paired comparison of two methods evaluated on the same noise rows (issue 6 of 7): the difference of a metric
with a paired bootstrap interval, so a claim reads "A lower than B by x (95% CI [lo, hi])" or "no difference
detected". Row i of both sample sets started from the same noise, so a resample draws the same rows of both (and,
independently, rows of the reference): the noise both share cancels out of the difference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Difference:
    value: float  # metric(a) - metric(b) on the full sets
    lo: float  # the bootstrap interval of the difference
    hi: float
    level: float  # e.g. 0.95

    @property
    def detected(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def describe(self, a: str = "A", b: str = "B") -> str:
        ci = f"({100 * self.level:.0f}% CI [{self.lo:.4g}, {self.hi:.4g}])"
        if not self.detected:
            return f"no difference detected between {a} and {b}: {self.value:+.4g} {ci}"
        word = "lower" if self.value < 0 else "higher"
        return f"{a} {word} than {b} by {abs(self.value):.4g} {ci}"


def paired_difference(
    a, b, ref, metric: Callable[[np.ndarray, np.ndarray], float], n_boot: int = 200, seed: int = 0, level: float = 0.95
) -> Difference:
    """metric(a, ref) - metric(b, ref) and its percentile interval over n_boot paired resamples: the same row
    indices i for a and b (they share their noise), independent indices j for the reference rows."""
    a, b, ref = (np.asarray(x, np.float64).reshape(len(x), -1) for x in (a, b, ref))
    if len(a) != len(b):
        raise ValueError(f"paired sets need the same rows (noise), got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for k in range(n_boot):
        i, j = rng.integers(0, len(a), len(a)), rng.integers(0, len(ref), len(ref))
        diffs[k] = metric(a[i], ref[j]) - metric(b[i], ref[j])
    tail = (1 - level) / 2
    lo, hi = np.quantile(diffs, [tail, 1 - tail])
    return Difference(metric(a, ref) - metric(b, ref), float(lo), float(hi), level)
