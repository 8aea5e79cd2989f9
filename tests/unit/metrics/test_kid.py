"""KID and the bootstrap FD interval (metrics/kid.py)."""

import numpy as np

from multistep.metrics import bootstrap_fd_ci, frechet_distance, gaussian_stats, kid
from multistep.metrics.kid import mmd2_unbiased


def test_kid_unbiased_on_same_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((1000, 16)), rng.standard_normal((1000, 16))
    k0, se0 = kid(a, b, num_subsets=10, subset_size=100)  # disjoint subsets
    assert se0 > 0 and abs(k0) < 3 * se0
    k1, se1 = kid(a, rng.standard_normal((1000, 16)) + 0.5, num_subsets=10, subset_size=100)
    assert k1 > 10 * se1 and k1 > 20 * abs(k0)
    # Unbiasedness itself: the per-subset estimates average to ~0 over many independent pairs (a biased
    # V-statistic would sit at +O(1/m)).
    vals = [mmd2_unbiased(rng.standard_normal((20, 4)), rng.standard_normal((20, 4))) for _ in range(400)]
    assert abs(np.mean(vals)) < 3 * np.std(vals) / np.sqrt(len(vals))
    k2, se2 = kid(a, b, num_subsets=50, subset_size=200)  # overlapping subsets: a finite, positive SE
    assert np.isfinite(k2) and se2 > 0


def test_bootstrap_fd_ci_covers_the_estimate():
    rng = np.random.default_rng(8)
    a = rng.standard_normal((2000, 4))
    b = rng.standard_normal((2000, 4)) + np.array([1.0, 0, 0, 0])  # true FD = 1
    point = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    low, high = bootstrap_fd_ci(a, b, n_boot=100, alpha=0.1, seed=0)
    assert low < point < high and low < 1.0 < high and high - low < 0.5
    assert bootstrap_fd_ci(a, b, n_boot=100, alpha=0.1, seed=0) == (low, high)  # seeded
