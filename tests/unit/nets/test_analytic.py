"""The analytic mixture teacher (nets/analytic.py): its exact posterior mean and variance against generic Gaussian
conditioning and against importance sampling."""

import numpy as np
import pytest
import torch

from multistep.data.gmm import GaussianMixture
from multistep.nets.analytic import MixtureDenoiser
from unit.diffusion.test_ddim import col
from unit.diffusion.test_schedules import COS, F64

pytestmark = pytest.mark.usefixtures("one_thread")


def hetero_mixture(shape, K, seed):
    """Non-uniform weights, per-component and per-dimension stds: exercises the general code path."""
    g = torch.Generator().manual_seed(seed)
    d = int(np.prod(shape))
    means = torch.randn(K, d, generator=g, dtype=F64) * 0.6
    stds = 0.05 + 0.15 * torch.rand(K, d, generator=g, dtype=F64)
    w = torch.arange(1, K + 1, dtype=F64)
    return GaussianMixture(means, stds, w / w.sum(), tuple(shape))


def lowrank_mixture(shape, K, seed, rank=3):
    """Correlated components: per-component isotropic stds plus `rank` orthonormal directions with their own
    variances (the Woodbury path), non-uniform weights."""
    g = torch.Generator().manual_seed(seed)
    d = int(np.prod(shape))
    means = torch.randn(K, d, generator=g, dtype=F64) * 0.6
    stds = (0.05 + 0.15 * torch.rand(K, 1, generator=g, dtype=F64)).expand(K, d).clone()
    factors = torch.linalg.qr(torch.randn(K, d, rank, generator=g, dtype=F64))[0]
    lam = 0.5 * torch.rand(K, rank, generator=g, dtype=F64) ** 2
    w = torch.arange(1, K + 1, dtype=F64)
    return GaussianMixture(means, stds, w / w.sum(), tuple(shape), factors, lam)


def reference_posterior(gmm, sch, z, t):
    """E[x | z_t] and diag Var[x | z_t] by generic Gaussian conditioning with full (B, K, d, d) covariances
    and torch.distributions log-densities (float64), independent of the module's algebra."""
    B, d = z.shape[0], gmm.dim
    zf = z.reshape(B, -1).double()
    a, s = (v.reshape(B, 1, 1, 1) for v in sch.alpha_sigma(t.double()))
    D = (torch.diag_embed(gmm.stds**2) + gmm.factors @ torch.diag_embed(gmm.factor_vars) @ gmm.factors.mT)[None]
    eye = torch.eye(d, dtype=F64)
    czz = a**2 * D + s**2 * eye  # Cov z | k
    cxz = a * D  # Cov(x, z) | k
    mz = a[..., 0] * gmm.means[None]  # (B, K, d) E[z | k]
    logp = torch.distributions.MultivariateNormal(mz, covariance_matrix=czz).log_prob(zf[:, None]) + torch.log(
        gmm.weights
    )
    r = torch.softmax(logp, 1)
    gain = cxz @ torch.linalg.inv(czz)  # (B, K, d, d)
    m_k = gmm.means[None] + (gain @ (zf[:, None] - mz)[..., None])[..., 0]
    v_k = torch.diagonal(D - gain @ cxz.transpose(-1, -2), dim1=-2, dim2=-1)
    m = (r[..., None] * m_k).sum(1)
    var = (r[..., None] * (v_k + m_k**2)).sum(1) - m**2
    return m.reshape(z.shape), var.reshape(z.shape)


@pytest.mark.parametrize(
    "shape, kind",
    [((5,), "hetero"), ((3, 4, 4), "hetero"), ((3, 4, 4), "isotropic"), ((6,), "lowrank"), ((3, 4, 4), "lowrank")],
)
@pytest.mark.parametrize("single_t", [False, True])
def test_mixture_denoiser_exact(shape, kind, single_t):
    make = {"hetero": hetero_mixture, "lowrank": lowrank_mixture}
    gmm = make[kind](shape, 4, seed=9) if kind in make else GaussianMixture.random(shape, 5, 0.6, 0.1, seed=9)
    f = MixtureDenoiser(gmm, COS)
    g = torch.Generator().manual_seed(10)
    B = 48
    t = torch.full((B,), 0.37, dtype=F64) if single_t else torch.rand(B, generator=g, dtype=F64)
    if not single_t:
        t[:3] = torch.tensor([1.0, 1e-4, 0.999])
    x = gmm.sample(B, g, dtype=F64)
    a, s = (v.reshape(B, *[1] * len(shape)) for v in COS.alpha_sigma(t))
    z = a * x + s * torch.randn(x.shape, generator=g, dtype=F64)
    m_ref, v_ref = reference_posterior(gmm, COS, z, t)
    out = f(z, t)
    assert out.shape == z.shape and out.dtype == F64
    torch.testing.assert_close(out, m_ref, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(f.posterior_var(z, t), v_ref, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(f(z.float(), t), m_ref.float(), atol=1e-5, rtol=1e-5)  # float32 in, float32 out
    if not single_t:  # t = 1: the mixture mean
        torch.testing.assert_close(out[0].reshape(-1), gmm.weights @ gmm.means, atol=1e-12, rtol=0)


def test_mixture_denoiser_importance_sampling():
    """E[x | z_t] by self-normalised importance weights p(z_t | x_i) over 200k mixture samples (2-D)."""
    gmm = hetero_mixture((2,), 3, seed=11)
    f = MixtureDenoiser(gmm, COS)
    g = torch.Generator().manual_seed(12)
    xs = gmm.sample(200_000, g, dtype=F64)
    B = 12
    t = torch.linspace(0.45, 0.9, B, dtype=F64)
    a, s = (col(v) for v in COS.alpha_sigma(t))
    z = a * gmm.sample(B, g, dtype=F64) + s * torch.randn(B, 2, generator=g, dtype=F64)
    logw = -((z[:, None] - a[:, None] * xs[None]) ** 2).sum(-1) / (2 * s**2)  # (B, M)
    w = torch.softmax(logw, 1)
    est = w @ xs
    ess = 1.0 / w.pow(2).sum(1)
    se = torch.sqrt(f.posterior_var(z, t) / col(ess))
    assert (ess > 1000).all()
    assert ((est - f(z, t)).abs() < 5 * se).all()
