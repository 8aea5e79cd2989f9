"""metrics/paired.py: the paired bootstrap of a metric difference, against a hand-computed case."""

import numpy as np
import pytest

from multistep.metrics.frechet import frechet_distance, gaussian_stats
from multistep.metrics.paired import paired_difference


def fd(x, ref):
    return frechet_distance(*gaussian_stats(x), *gaussian_stats(ref))


def test_a_shifted_copy_differs_by_the_hand_computed_amount():
    """1-D: FD = (mu_x - mu_r)^2 + (s_x - s_r)^2. With b = a + c (same spread) FD(b) - FD(a) = c^2 + 2c (mu_a - mu_r),
    in the full sets and in every paired resample, so the interval is the quantiles of that expression."""
    rng = np.random.default_rng(0)
    a, ref, c = rng.normal(0.0, 1.0, (400, 1)), rng.normal(1.0, 1.0, (500, 1)), 0.5  # b = a + c is closer
    d = paired_difference(a + c, a, ref, fd, n_boot=300, seed=5)
    assert d.value == pytest.approx(c**2 + 2 * c * (a.mean() - ref.mean()), rel=1e-9)
    boot = np.random.default_rng(5)
    hand = []
    for _ in range(300):  # the same draws, the closed form
        i, j = boot.integers(0, 400, 400), boot.integers(0, 500, 500)
        hand.append(c**2 + 2 * c * (a[i].mean() - ref[j].mean()))
    lo, hi = np.quantile(hand, [0.025, 0.975])
    assert (d.lo, d.hi) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
    assert d.detected and d.value < 0 and d.describe("MCD", "TRACT").startswith("MCD lower than TRACT by")


def test_the_same_method_twice_is_no_difference():
    rng = np.random.default_rng(1)
    a, ref = rng.normal(size=(300, 2)), rng.normal(size=(300, 2))
    d = paired_difference(a, a.copy(), ref, fd, n_boot=50)
    assert (d.value, d.lo, d.hi) == (0.0, 0.0, 0.0) and not d.detected
    assert d.describe().startswith("no difference detected")
    with pytest.raises(ValueError, match="same rows"):
        paired_difference(a, a[:10], ref, fd)
