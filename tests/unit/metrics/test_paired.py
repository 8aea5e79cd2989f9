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


def test_training_seeds_are_resampled_together_with_the_rows():
    """Three seeds: b_k = a_k + c_k. The difference is the mean over seeds of c_k^2 + 2 c_k (mu_a_k - mu_r); each
    resample draws the seeds (with replacement), then rows shared by a and b, then reference rows: by hand."""
    rng = np.random.default_rng(3)
    a = [rng.normal(0.1 * k, 1.0, (200, 1)) for k in range(3)]
    c, ref = [0.3, 0.5, 0.8], rng.normal(1.0, 1.0, (250, 1))
    d = paired_difference([x + ck for x, ck in zip(a, c)], a, ref, fd, n_boot=100, seed=9)
    closed = lambda k, i, j: c[k] ** 2 + 2 * c[k] * (a[k][i].mean() - ref[j].mean())
    assert d.value == pytest.approx(np.mean([closed(k, slice(None), slice(None)) for k in range(3)]), rel=1e-9)
    boot, hand = np.random.default_rng(9), []
    for _ in range(100):
        ks = boot.integers(0, 3, 3)
        i, j = boot.integers(0, 200, 200), boot.integers(0, 250, 250)
        hand.append(np.mean([closed(k, i, j) for k in ks]))
    assert (d.lo, d.hi) == tuple(pytest.approx(q, rel=1e-9) for q in np.quantile(hand, [0.025, 0.975]))
    with pytest.raises(ValueError, match="training seeds"):
        paired_difference(a, a[:2], ref, fd)


def test_fd_from_resampled_counts_equals_fd_of_gathered_rows():
    """paired.fd takes the counts path (statistics from row counts, the reference's shared per resample)."""
    from multistep.metrics import paired

    rng = np.random.default_rng(4)
    a = [rng.normal(size=(300, 3)) @ rng.normal(size=(3, 3)) for _ in range(2)]
    b, ref = [x + 0.2 for x in a], rng.normal(size=(350, 3))
    fast, slow = (paired_difference(a, b, ref, f, n_boot=40, seed=2) for f in (paired.fd, fd))
    assert (fast.value, fast.lo, fast.hi) == pytest.approx((slow.value, slow.lo, slow.hi), rel=1e-9)
    fast, slow = (paired.interval(a, ref, f, n_boot=40, seed=2) for f in (paired.fd, fd))
    assert (fast.value, fast.lo, fast.hi) == pytest.approx((slow.value, slow.lo, slow.hi), rel=1e-9)
