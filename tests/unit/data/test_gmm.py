"""Gaussian mixtures (data/gmm.py): the random mixtures of earlier releases, correlated components."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_gmm_random_unchanged_without_factors():
    """rank 0 draws exactly the mixtures of earlier releases (means ~ N(0, mean_std^2) from the seed)."""
    from multistep.data.gmm import GaussianMixture

    m = GaussianMixture.random((16,), 10, 0.6, 0.1, seed=0)
    ref = torch.randn(10, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.6
    assert m.rank == 0 and torch.equal(m.means, ref) and m.factors.shape == (10, 16, 0)


def test_gmm_correlated_components_have_their_covariance():
    """Samples of one component have Sigma_k = s^2 I + Q diag(lambda) Q^T; image fields are smooth."""
    from multistep.data.gmm import GaussianMixture

    m = GaussianMixture.random((3, 8, 8), 1, 0.6, 0.1, seed=3, rank=4, rank_std=0.5, smooth=4)
    Q = m.factors[0]
    torch.testing.assert_close(Q.T @ Q, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    x = m.sample(40_000, torch.Generator().manual_seed(1), dtype=torch.float64).reshape(40_000, -1)
    cov = torch.cov(x.T)
    sigma = 0.01 * torch.eye(192, dtype=torch.float64) + 0.25 * Q @ Q.T
    assert (cov - sigma).abs().max() < 0.02  # sampling error of 40k draws: ~ 0.3 / sqrt(40k) * 3
    # bilinear upsampling from 2x2: neighbouring pixels of a direction are strongly correlated
    f = Q.T.reshape(4, 3, 8, 8)
    nb = torch.corrcoef(torch.stack([f[..., :, :-1].flatten(), f[..., :, 1:].flatten()]))[0, 1]
    assert nb > 0.8
    with pytest.raises(ValueError, match="rank 200 exceeds the dimension 192"):
        GaussianMixture.random((3, 8, 8), 1, rank=200)
