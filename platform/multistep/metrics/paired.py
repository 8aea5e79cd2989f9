"""Paired comparison of two methods evaluated on the same noise rows (issue 6 of 7): the difference of a metric
with a paired bootstrap interval, so a claim reads "A lower than B by x (95% CI [lo, hi])" or "no difference
detected". Row i of both sample sets started from the same noise, so a resample draws the same rows of both (and,
independently, rows of the reference): the noise both share cancels out of the difference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EVAL_ROWS = "eval_rows"  # artifact folder of the kept feature rows (eval.keep_rows) on trial and sweep runs
REFERENCE = "reference"  # the reference's rows, on the sweep run
FLOOR = "floor"  # the rows of the second data sample the two-sample floor is measured on, on the sweep run


def rows_file(label: str, steps: int | None = None) -> str:
    """eval_rows/<label>_<steps>.npy: one curve point's kept rows (reference.npy: the reference's)."""
    return f"{label}.npy" if steps is None else f"{label}_{steps}.npy"


def kept_rows(x, keep: int) -> np.ndarray | None:
    """The first `keep` rows of samples or features (a tensor or an array), flattened, float32 (None when keep is 0)."""
    if not keep:
        return None
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return x[:keep].reshape(min(keep, len(x)), -1).astype(np.float32)


def save_rows(rows: np.ndarray, folder: Path, label: str, steps: int | None = None) -> str:
    path = Path(folder) / rows_file(label, steps)
    np.save(path, np.asarray(rows, np.float32))
    return str(path)


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


@dataclass
class Estimate:
    value: float  # the metric on the full sets (the mean over training seeds)
    lo: float  # its bootstrap interval
    hi: float
    level: float

    def describe(self) -> str:
        return f"{self.value:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


def _sets(x) -> list[np.ndarray]:
    """One (n, d) float64 array per training seed (a single array: one seed)."""
    xs = x if isinstance(x, (list, tuple)) else [x]
    return [np.asarray(v, np.float64).reshape(len(v), -1) for v in xs]


def _bootstrap(per_seed: Callable, n_seeds: int, n: int, n_ref: int, n_boot: int, seed: int, level: float):
    """(value, lo, hi) of the mean over seeds of per_seed(k, rows, ref_rows), over n_boot resamples that draw the
    seeds with replacement (when there are several), then sample rows i and reference rows j (each with replacement):
    a hierarchical bootstrap over training seeds and evaluation samples."""
    every, every_ref = np.arange(n), np.arange(n_ref)
    value = float(np.mean([per_seed(k, every, every_ref) for k in range(n_seeds)]))
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for r in range(n_boot):
        ks = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else [0]
        i, j = rng.integers(0, n, n), rng.integers(0, n_ref, n_ref)
        draws[r] = np.mean([per_seed(k, i, j) for k in ks])
    tail = (1 - level) / 2
    lo, hi = np.quantile(draws, [tail, 1 - tail])
    return value, float(lo), float(hi)


class _Resampled:
    """Gaussian statistics of a row set's resamples from their row counts (a matmul, no gathered copy; the same as
    np.cov of the gathered rows), the last one kept: the reference's resample is shared by every seed and method."""

    def __init__(self, x: np.ndarray):
        self.x, self.last, self.stats = x, None, None

    def __call__(self, idx: np.ndarray):
        if idx is not self.last:
            n, c = len(idx), np.bincount(idx, minlength=len(self.x)).astype(np.float64)
            mu = c @ self.x / n
            cov = ((self.x.T * c) @ self.x - n * np.outer(mu, mu)) / (n - 1)
            self.last, self.stats = idx, (mu, cov)
        return self.stats


def _metric_fn(metric: Callable, sets: list[list[np.ndarray]], ref: np.ndarray) -> Callable:
    """f(set index, seed, rows, ref rows) -> metric of the resampled rows; FD through resampled statistics."""
    if metric is not fd:
        return lambda s, k, i, j: metric(sets[s][k][i], ref[j])
    from multistep.metrics.frechet import frechet_distance

    stats = [[_Resampled(x) for x in group] for group in sets]
    ref_stats = _Resampled(ref)
    return lambda s, k, i, j: frechet_distance(*stats[s][k](i), *ref_stats(j))


def interval(a, ref, metric: Callable, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> Estimate:
    """metric(a, ref) with its bootstrap interval; a: one array or one per training seed (then their mean)."""
    A, ref = _sets(a), _sets(ref)[0]
    m = _metric_fn(metric, [A], ref)
    fn = lambda k, i, j: m(0, k, i, j)
    return Estimate(*_bootstrap(fn, len(A), len(A[0]), len(ref), n_boot, seed, level), level)


def paired_difference(
    a, b, ref, metric: Callable[[np.ndarray, np.ndarray], float], n_boot: int = 200, seed: int = 0, level: float = 0.95
) -> Difference:
    """metric(a, ref) - metric(b, ref) and its percentile interval over n_boot paired resamples: the same row
    indices i for a and b (they share their noise), independent indices j for the reference rows. a and b may be
    lists with one array per training seed (a[k] and b[k] trained from seed k): the difference is then the mean
    over seeds and each resample also redraws the seeds, the same for both (hierarchical bootstrap)."""
    A, B, ref = _sets(a), _sets(b), _sets(ref)[0]
    if len(A) != len(B):
        raise ValueError(f"paired sets need the same training seeds, got {len(A)} and {len(B)}")
    if any(len(x) != len(y) for x, y in zip(A, B)):
        raise ValueError(f"paired sets need the same rows (noise), got {len(A[0])} and {len(B[0])}")
    m = _metric_fn(metric, [A, B], ref)
    fn = lambda k, i, j: m(0, k, i, j) - m(1, k, i, j)
    return Difference(*_bootstrap(fn, len(A), len(A[0]), len(ref), n_boot, seed, level), level)


def fd(x: np.ndarray, ref: np.ndarray) -> float:
    """The Frechet distance of two row sets (their Gaussian statistics)."""
    from multistep.metrics.frechet import frechet_distance, gaussian_stats

    return frechet_distance(*gaussian_stats(x), *gaussian_stats(ref))
