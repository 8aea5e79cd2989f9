"""DDIM, inverse DDIM and aDDIM (diffusion/ddim.py) on random inputs: parametrizations, the identities of
algorithms.md §1.3-§3, §2.1 properties 1-4 and Appendix B, and the aDDIM Gaussian toy."""

import math

import pytest
import torch
from scipy import stats

from multistep.data.gmm import GaussianMixture
from multistep.diffusion.ddim import (
    addim_step,
    analytic_xvar,
    ddim_slope,
    ddim_step,
    eps_from_v,
    eps_from_x,
    inv_ddim,
    v_from_x,
    x_from_eps,
    x_from_v,
)
from multistep.nets.analytic import MixtureDenoiser
from unit.diffusion.test_schedules import COS, F64, IDS, SCHEDULES

pytestmark = pytest.mark.usefixtures("one_thread")


def rand_ts(n, g, lo=0.02, gap=0.01):
    """Per-example t ~ U(lo, 1] and s ~ U[0, t - gap]."""
    t = lo + (1 - lo) * (1 - torch.rand(n, generator=g, dtype=F64))
    return t, (t - gap) * torch.rand(n, generator=g, dtype=F64)


def col(v):
    return v.reshape(-1, 1)


@pytest.mark.parametrize("sch", SCHEDULES, ids=IDS)
def test_v_parametrization(sch):
    g = torch.Generator().manual_seed(1)
    B, d = 64, 1000
    t = 0.05 + 0.9 * torch.rand(B, generator=g, dtype=F64)
    x, eps, x_hat = (torch.randn(B, d, generator=g, dtype=F64) for _ in range(3))
    a, s = (col(v) for v in sch.alpha_sigma(t))
    z = a * x + s * eps
    v = a * eps - s * x
    torch.testing.assert_close(x_from_v(sch, z, t, v), x, atol=1e-12, rtol=0)  # x = alpha z - sigma v
    torch.testing.assert_close(eps_from_v(sch, z, t, v), eps, atol=1e-12, rtol=0)  # eps = sigma z + alpha v
    torch.testing.assert_close(v_from_x(sch, z, t, x), v, atol=1e-10, rtol=0)
    torch.testing.assert_close(eps_from_x(sch, z, t, x), eps, atol=1e-10, rtol=0)
    torch.testing.assert_close(x_from_eps(sch, z, t, eps), x, atol=1e-10, rtol=0)
    v_hat, eps_hat = v_from_x(sch, z, t, x_hat), eps_from_x(sch, z, t, x_hat)
    snr = sch.snr(t)
    ratio_v = (v - v_hat).pow(2).sum(1) / (x - x_hat).pow(2).sum(1)
    ratio_e = (eps - eps_hat).pow(2).sum(1) / (x - x_hat).pow(2).sum(1)
    torch.testing.assert_close(ratio_v, snr + 1, rtol=1e-9, atol=0)  # v-loss = (SNR + 1) x-loss
    torch.testing.assert_close(ratio_e, snr, rtol=1e-9, atol=0)  # eps-loss = SNR x-loss


@pytest.mark.parametrize("sch", SCHEDULES, ids=IDS)
def test_ddim_inverse_and_ct_identities(sch):
    g = torch.Generator().manual_seed(2)
    B, d = 256, 1000
    t, s = rand_ts(B, g)
    x, eps, x_hat = (torch.randn(B, d, generator=g, dtype=F64) for _ in range(3))
    a_t, sig_t = (col(v) for v in sch.alpha_sigma(t))
    a_s, sig_s = (col(v) for v in sch.alpha_sigma(s))
    z_t = a_t * x + sig_t * eps
    torch.testing.assert_close(inv_ddim(sch, ddim_step(sch, x_hat, z_t, t, s), z_t, t, s), x_hat, atol=1e-9, rtol=0)
    z_s = a_s * x + sig_s * eps
    torch.testing.assert_close(ddim_step(sch, x, z_t, t, s), z_s, atol=1e-12, rtol=0)  # property 3: same eps
    torch.testing.assert_close(inv_ddim(sch, z_s, z_t, t, s), x, atol=1e-9, rtol=0)  # S = T limit is diffusion
    # eq. 4 second form, and §2.3: z-space error = c(t, s) x-space error
    c = col(ddim_slope(sch, t, s))
    assert (c > 0).all()  # property 4: slope > 0
    torch.testing.assert_close(ddim_step(sch, x_hat, z_t, t, s), c * x_hat + sig_s / sig_t * z_t, atol=1e-12, rtol=0)
    z_ref = torch.randn(B, d, generator=g, dtype=F64)
    torch.testing.assert_close(
        ddim_step(sch, x_hat, z_t, t, s) - z_ref, c * (x_hat - inv_ddim(sch, z_ref, z_t, t, s)), atol=1e-10, rtol=0
    )
    # TRACT / PD gamma form (gamma = alpha^2 = sigmoid(logsnr)) of the same target, and PD's softplus ratio
    gt, gs = col(torch.sigmoid(sch.logsnr(t))), col(torch.sigmoid(sch.logsnr(s)))
    tract = (z_t * torch.sqrt(1 - gs) - z_ref * torch.sqrt(1 - gt)) / (
        torch.sqrt(gt * (1 - gs)) - torch.sqrt(gs * (1 - gt))
    )
    torch.testing.assert_close(tract, inv_ddim(sch, z_ref, z_t, t, s), atol=1e-8, rtol=1e-8)
    sp = torch.nn.functional.softplus
    torch.testing.assert_close(
        col(torch.exp(0.5 * (sp(sch.logsnr(t)) - sp(sch.logsnr(s))))), sig_s / sig_t, atol=1e-12, rtol=1e-10
    )


@pytest.mark.parametrize("sch", SCHEDULES, ids=IDS)
def test_s_equals_t_returns_z_for_any_x(sch):
    """Property 1, including t = s = 0 and garbage (inf / nan) x_hat; aDDIM too."""
    g = torch.Generator().manual_seed(3)
    B, d = 64, 100
    t = torch.rand(B, generator=g, dtype=F64)
    t[:4] = torch.tensor([0.0, 1.0, 1e-9, 0.5])
    z = torch.randn(B, d, generator=g, dtype=F64)
    for x_hat in (
        torch.randn(B, d, generator=g, dtype=F64) * 1e6,
        torch.full((B, d), math.inf, dtype=F64),
        torch.full((B, d), math.nan, dtype=F64),
    ):
        assert torch.equal(ddim_step(sch, x_hat, z, t, t), z)
        assert torch.equal(addim_step(sch, x_hat, z, t, t, torch.rand(B, generator=g, dtype=F64)), z)


def test_s_zero_returns_x_hat_and_inv_returns_z0():
    """Property 2 (plain cosine: alpha_0 = 1, sigma_0 = 0 exactly) and invDDIM_{t->0}(z_0, z_t) = z_0."""
    g = torch.Generator().manual_seed(4)
    B, d = 128, 100
    t = 1 - torch.rand(B, generator=g, dtype=F64)
    t[0] = 1.0
    zero = torch.zeros(B, dtype=F64)
    x_hat, z = torch.randn(B, d, generator=g, dtype=F64), torch.randn(B, d, generator=g, dtype=F64)
    assert torch.equal(ddim_step(COS, x_hat, z, t, zero), x_hat)
    assert torch.equal(inv_ddim(COS, x_hat, z, t, zero), x_hat)
    assert torch.equal(ddim_slope(COS, t, zero), torch.ones(B, dtype=F64))


def test_plain_cosine_slope_closed_form():
    """Property 4: c(t, s) = sin(pi (t - s) / 2) / sin(pi t / 2), and DDIM is affine in x_hat with that slope."""
    g = torch.Generator().manual_seed(5)
    B, d = 256, 50
    t, s = rand_ts(B, g, lo=0.001, gap=0.0)
    c = ddim_slope(COS, t, s)
    torch.testing.assert_close(c, torch.sin(math.pi * (t - s) / 2) / torch.sin(math.pi * t / 2), atol=1e-13, rtol=1e-12)
    x1, x2, z = (torch.randn(B, d, generator=g, dtype=F64) for _ in range(3))
    torch.testing.assert_close(
        ddim_step(COS, x1, z, t, s) - ddim_step(COS, x2, z, t, s), col(c) * (x1 - x2), atol=1e-12, rtol=0
    )


def test_inv_ddim_float32_one_teacher_step():
    """A7: a one-step gap out of 1280 (c ~ 1e-3) keeps float32 targets usable (error ~ eps32 / c), float64 exact."""
    g = torch.Generator().manual_seed(6)
    T = 1280
    idx = torch.arange(2, T + 1)
    t, s = idx.double() / T, (idx - 1).double() / T
    x, eps = torch.rand(T - 1, 64, generator=g, dtype=F64) * 2 - 1, torch.randn(T - 1, 64, generator=g, dtype=F64)
    a_t, sig_t = (col(v) for v in COS.alpha_sigma(t))
    a_s, sig_s = (col(v) for v in COS.alpha_sigma(s))
    z_t, z_s = a_t * x + sig_t * eps, a_s * x + sig_s * eps
    err64 = (inv_ddim(COS, z_s, z_t, t, s) - x).abs().max()
    err32 = (inv_ddim(COS, z_s.float(), z_t.float(), t, s).double() - x).abs().max()
    assert err64 < 1e-9 and err32 < 2e-3


def test_addim_limits():
    """xvar = 0 is DDIM; s = 0 adds sqrt(d xvar)/||eps_hat|| eps_hat (A6); the stretch uses each example's own ||eps_hat||."""
    g = torch.Generator().manual_seed(7)
    B, d = 32, 200
    t, s = rand_ts(B, g)
    x_hat, z = torch.randn(B, d, generator=g, dtype=F64), torch.randn(B, d, generator=g, dtype=F64)
    assert torch.equal(addim_step(COS, x_hat, z, t, s, torch.zeros(B, dtype=F64)), ddim_step(COS, x_hat, z, t, s))
    xvar = torch.rand(B, generator=g, dtype=F64)
    zero = torch.zeros(B, dtype=F64)
    eps_hat = (z - col(COS.alpha(t)) * x_hat) / col(COS.sigma(t))
    want = x_hat + torch.sqrt(d * col(xvar)) / eps_hat.norm(dim=1, keepdim=True) * eps_hat
    torch.testing.assert_close(addim_step(COS, x_hat, z, t, zero, xvar), want, atol=1e-12, rtol=1e-12)
    z2 = z.clone()
    z2[1:] *= 3.0  # other examples change, example 0 must not
    assert torch.equal(addim_step(COS, x_hat, z2, t, s, xvar)[0], addim_step(COS, x_hat, z, t, s, xvar)[0])
    # norm restored: ||z_s||^2 = ||DDIM||^2 + d zvar when x_hat is orthogonal to eps_hat
    x_perp = x_hat - (x_hat * eps_hat).sum(1, keepdim=True) / eps_hat.pow(2).sum(1, keepdim=True) * eps_hat
    z_perp = col(COS.alpha(t)) * x_perp + col(COS.sigma(t)) * eps_hat
    zvar = ddim_slope(COS, t, s) ** 2 * xvar
    lhs = addim_step(COS, x_perp, z_perp, t, s, xvar).pow(2).sum(1)
    torch.testing.assert_close(lhs, ddim_step(COS, x_perp, z_perp, t, s).pow(2).sum(1) + d * zvar, rtol=1e-10, atol=0)


def test_analytic_xvar_is_tenth_of_gaussian_posterior():
    """0.1 / (2 + SNR) = 10% of Var[x | z_t] for x ~ N(0, 0.5), checked against the mixture teacher's exact
    posterior variance for a one-component mixture N(0, 0.5)."""
    t = torch.linspace(0.01, 1.0, 100, dtype=F64)
    a, s = COS.alpha_sigma(t)
    post = 0.5 * s**2 / (a**2 * 0.5 + s**2)  # Gaussian conditioning
    torch.testing.assert_close(analytic_xvar(COS, t), 0.1 * post, atol=1e-15, rtol=1e-12)
    gauss = GaussianMixture(
        torch.zeros(1, 3, dtype=F64), torch.full((1, 3), math.sqrt(0.5), dtype=F64), torch.ones(1, dtype=F64), (3,)
    )
    z = torch.randn(100, 3, dtype=F64)
    pv = MixtureDenoiser(gauss, COS).posterior_var(z, t)
    torch.testing.assert_close(pv, col(post).expand(-1, 3), atol=1e-14, rtol=1e-12)


def test_addim_gaussian_toy():
    """x ~ N(0, 0.5) per dim, t = 0.6 -> s = 0.5, exact posterior mean, xvar = exact posterior variance.
    Var(z_s): DDIM ~0.736 (too small), aDDIM ~0.756, true 0.750 (algorithms.md §3.2). The spec's
    figures are Monte-Carlo estimates; the exact values are 0.7352 and 0.7553 (finite-d expectation)."""
    v0, n, d = 0.5, 4000, 1000
    g = torch.Generator().manual_seed(8)
    tt, ss = torch.full((n,), 0.6, dtype=F64), torch.full((n,), 0.5, dtype=F64)
    a_t, s_t, a_s, s_s = (float(v[0]) for v in (*COS.alpha_sigma(tt), *COS.alpha_sigma(ss)))
    x = torch.randn(n, d, generator=g, dtype=F64) * math.sqrt(v0)
    z_t = a_t * x + s_t * torch.randn(n, d, generator=g, dtype=F64)
    vz = a_t**2 * v0 + s_t**2
    gain, xvar = a_t * v0 / vz, v0 * s_t**2 / vz  # E[x|z] = gain z, Var[x|z] = xvar
    x_hat = gain * z_t
    out = {
        "ddim": ddim_step(COS, x_hat, z_t, tt, ss),
        "addim": addim_step(COS, x_hat, z_t, tt, ss, torch.full((n,), xvar, dtype=F64)),
    }
    # exact expectations: z_s = k(q) z_t with q = mean_d(z_t^2) / vz ~ chi2_d / d
    c, e = float(ddim_slope(COS, tt[:1], ss[:1])), (1 - a_t * gain) / s_t
    true = a_s**2 * v0 + s_s**2
    exact = {
        "ddim": (c * gain + s_s / s_t) ** 2 * vz,
        "addim": vz
        * stats.chi2(d).expect(
            lambda u: (a_s * gain + e * math.sqrt(s_s**2 + c**2 * xvar / (e**2 * vz * u / d))) ** 2 * u / d
        ),
    }
    assert abs(true - 0.750) < 1e-12
    assert abs(exact["ddim"] - 0.736) < 1e-3 and abs(exact["addim"] - 0.756) < 1e-3
    for k, zs in out.items():
        per_ex = zs.pow(2).mean(1)  # E[z_s] = 0: second moment = variance
        se = float(per_ex.std()) / math.sqrt(n)  # Monte-Carlo standard error of the mean
        assert se < 1e-3
        assert abs(float(per_ex.mean()) - exact[k]) < 4 * se, (k, float(per_ex.mean()), exact[k], se)
        assert abs(float(per_ex.mean()) - true) > 8 * se  # both are measurably off the truth...
    assert abs(exact["addim"] - true) < abs(exact["ddim"] - true) / 2  # ...aDDIM restores most of the missing variance
