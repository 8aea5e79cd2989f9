"""The Fréchet distance (metrics/frechet.py) against scipy's sqrtm formula, on rank-deficient covariances, and its
guards."""

import numpy as np
import pytest
import scipy.linalg

from multistep.metrics import frechet_distance, gaussian_stats


def fd_sqrtm(mu1, s1, mu2, s2) -> float:
    """The classic formula (pytorch-fid / clean-fid): tr of scipy.linalg.sqrtm(S1 S2), real part."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def sample_stats(rng, n, d, scale=1.0, shift=0.0):
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    return gaussian_stats(rng.standard_normal((n, d)) @ (np.eye(d) + a) * scale + shift)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fd_matches_sqrtm_on_random_covariances(seed):
    rng = np.random.default_rng(seed)
    for d in (3, 32, 128):
        mu1, s1 = sample_stats(rng, 4 * d, d)
        mu2, s2 = sample_stats(rng, 4 * d, d, scale=1.3, shift=0.1)
        ours, ref = frechet_distance(mu1, s1, mu2, s2), fd_sqrtm(mu1, s1, mu2, s2)
        assert isinstance(ours, float) and np.isfinite(ours)
        assert ours == pytest.approx(ref, rel=1e-6)
    b = rng.standard_normal((16, 16))  # a general PSD pair (not from samples), far apart
    assert frechet_distance(np.zeros(16), b @ b.T, np.ones(16), np.eye(16)) == pytest.approx(
        fd_sqrtm(np.zeros(16), b @ b.T, np.ones(16), np.eye(16)), rel=1e-6
    )


def test_fd_rank_deficient_covariances():
    rng = np.random.default_rng(3)
    for d, n in [(64, 20), (64, 40), (100, 30)]:  # fewer samples than dimensions: rank n - 1
        mu1, s1 = gaussian_stats(rng.standard_normal((n, d)))
        mu2, s2 = gaussian_stats(rng.standard_normal((n, d)) * 1.3 + 0.2)
        assert np.linalg.matrix_rank(s1) == n - 1
        ours = frechet_distance(mu1, s1, mu2, s2)
        assert np.isfinite(ours) and ours == pytest.approx(fd_sqrtm(mu1, s1, mu2, s2), rel=1e-6)
    # Both covariances on one 10-dim subspace of R^64, against the exact value from the 10x10 problem:
    # S1 = P P^T, S2 = P D P^T -> tr (S1 S2)^1/2 = sum sqrt eig(G D G), G = P^T P. (sqrtm itself is only ~1e-6 good here.)
    p = rng.standard_normal((64, 10))
    dg = np.diag(rng.uniform(0.5, 2.0, 10))
    s1, s2, g = p @ p.T, p @ dg @ p.T, p.T @ p
    exact = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.linalg.eigvals(g @ dg @ g).real).sum()
    assert frechet_distance(np.zeros(64), s1, np.zeros(64), s2) == pytest.approx(exact, rel=1e-10)
    # Two different low-rank subspaces: tr (PP^T QQ^T)^1/2 is the nuclear norm of P^T Q.
    q = rng.standard_normal((64, 7))
    exact = np.trace(s1) + np.trace(q @ q.T) - 2 * np.linalg.svd(p.T @ q, compute_uv=False).sum()
    assert frechet_distance(np.zeros(64), s1, np.zeros(64), q @ q.T) == pytest.approx(exact, rel=1e-8)
    # A zero covariance (e.g. a collapsed generator) is valid: FD = ||dmu||^2 + tr S.
    assert frechet_distance(np.zeros(64), np.zeros((64, 64)), np.ones(64), s1) == pytest.approx(64 + np.trace(s1))


def test_fd_factor_takes_plain_cholesky_only_at_full_rank():
    from multistep.metrics.frechet import _cholesky_factor

    rng = np.random.default_rng(5)
    _, full = sample_stats(rng, 200, 50)
    lo, s2, r = _cholesky_factor(full, full)
    assert r == 50 and np.allclose(lo @ lo.T, full, rtol=0, atol=1e-12) and np.array_equal(s2, full)  # unpermuted
    _, low = gaussian_stats(rng.standard_normal((20, 50)))  # rank 19: plain Cholesky would keep round-off pivots
    lo, s2, r = _cholesky_factor(low, full)
    assert r == 19 and not np.array_equal(s2, full)  # pivoted: S2 permuted to match
    assert np.all(lo[:, 19:] == 0)


def test_fd_identical_inputs_and_guards():
    rng = np.random.default_rng(4)
    mu, s = sample_stats(rng, 200, 50)
    assert frechet_distance(mu, s, mu, s) == 0.0
    assert frechet_distance(mu, s, mu.copy(), s.copy()) == 0.0
    near = frechet_distance(mu, s, mu, s * (1 + 1e-12))
    assert 0.0 <= near < 1e-8
    assert frechet_distance(np.zeros(3), np.zeros((3, 3)), np.array([3.0, 4.0, 0.0]), np.zeros((3, 3))) == 25.0
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(mu, np.full_like(s, np.nan), mu, s)
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(mu, s, mu[:-1], s[:-1, :-1])
