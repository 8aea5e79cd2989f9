"""DDIM, inverse DDIM and aDDIM (algorithms.md §2-3; MCM eqs. 4, 5, 14).

All functions take per-example times t, s of shape (B,) and broadcast them over the data dims.
Callers pass float32/float64 tensors: target maths never runs in bf16 (algorithms.md A7).
"""

from __future__ import annotations

import torch

from multistep.diffusion.schedules import Schedule

Tensor = torch.Tensor


def bcast(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) so it broadcasts against a batch shaped like `like`."""
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim)).to(like.dtype)


# -- parametrizations (§1.3), at fixed z_t ------------------------------------------------------
def x_from_v(sched: Schedule, z: Tensor, t: Tensor, v: Tensor) -> Tensor:
    a, s = sched.alpha_sigma(t)
    return bcast(a, z) * z - bcast(s, z) * v  # x = alpha z - sigma v


def eps_from_v(sched: Schedule, z: Tensor, t: Tensor, v: Tensor) -> Tensor:
    a, s = sched.alpha_sigma(t)
    return bcast(s, z) * z + bcast(a, z) * v  # eps = sigma z + alpha v


def v_from_x(sched: Schedule, z: Tensor, t: Tensor, x: Tensor) -> Tensor:
    a, s = sched.alpha_sigma(t)
    eps = (z - bcast(a, z) * x) / bcast(s, z)
    return bcast(a, z) * eps - bcast(s, z) * x  # v = alpha eps - sigma x


def eps_from_x(sched: Schedule, z: Tensor, t: Tensor, x: Tensor) -> Tensor:
    a, s = sched.alpha_sigma(t)
    return (z - bcast(a, z) * x) / bcast(s, z)


def x_from_eps(sched: Schedule, z: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    a, s = sched.alpha_sigma(t)
    return (z - bcast(s, z) * eps) / bcast(a, z)


# -- steps ---------------------------------------------------------------------------------------
def ddim_step(sched: Schedule, x_hat: Tensor, z_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """DDIM_{t->s}(x_hat, z_t) = alpha_s x_hat + sigma_s eps_hat (MCM eq. 4).

    Exact properties (§2.1): s = t returns z_t for any x_hat; s = 0 returns x_hat. Rows with s = t
    are passed through unchanged, which also covers t = s = 0 where eps_hat would be 0/0.
    """
    a_t, sig_t = (bcast(v, z_t) for v in sched.alpha_sigma(t))
    a_s, sig_s = (bcast(v, z_t) for v in sched.alpha_sigma(s))
    same = bcast(s == t, z_t).bool()
    eps_hat = (z_t - a_t * x_hat) / torch.where(same, torch.ones_like(sig_t), sig_t)
    return torch.where(same, z_t, a_s * x_hat + sig_s * eps_hat)


def ddim_slope(sched: Schedule, t: Tensor, s: Tensor) -> Tensor:
    """c(t, s) = alpha_s - alpha_t sigma_s / sigma_t, the slope of DDIM_{t->s} in x_hat (> 0 for s < t)."""
    a_t, sig_t = sched.alpha_sigma(t)
    a_s, sig_s = sched.alpha_sigma(s)
    return a_s - a_t * sig_s / sig_t


def inv_ddim(sched: Schedule, z_s: Tensor, z_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """The unique x_hat with DDIM_{t->s}(x_hat, z_t) = z_s (MCM eq. 5); needs s < t.

    The denominator c(t, s) is ~1e-3 for a one-teacher-step gap: call in float32 or float64.
    """
    _, sig_t = sched.alpha_sigma(t)
    _, sig_s = sched.alpha_sigma(s)
    return (z_s - bcast(sig_s / sig_t, z_t) * z_t) / bcast(ddim_slope(sched, t, s), z_t)


def addim_step(sched: Schedule, x_hat: Tensor, z_t: Tensor, t: Tensor, s: Tensor, xvar: Tensor) -> Tensor:
    """aDDIM (MCM eq. 14 / Algorithm 3): DDIM with the eps_hat direction stretched to restore the
    variance that plugging in E[x | z_t] loses.

    xvar: per-dimension posterior variance of x given z_t, shape (B,) (per example) or broadcastable.
      z_s = alpha_s x_hat + sqrt(sigma_s^2 + zvar_s / mean(eps_hat^2)) eps_hat,
      zvar_s = c(t, s)^2 xvar   (c from ddim_slope).
    """
    a_t, sig_t = (bcast(v, z_t) for v in sched.alpha_sigma(t))
    a_s, sig_s = (bcast(v, z_t) for v in sched.alpha_sigma(s))
    same = bcast(s == t, z_t).bool()
    eps_hat = (z_t - a_t * x_hat) / torch.where(same, torch.ones_like(sig_t), sig_t)
    zvar = bcast(ddim_slope(sched, t, s).nan_to_num(0.0), z_t) ** 2 * bcast(torch.as_tensor(xvar), z_t)
    dims = tuple(range(1, z_t.ndim))
    eps_ms = (
        eps_hat.pow(2).mean(dim=dims, keepdim=True).clamp_min(1e-12)
    )  # d / ||eps_hat||^2 = 1/mean; guard ||eps_hat|| > 0 (A6)
    out = a_s * x_hat + torch.sqrt(sig_s**2 + zvar / eps_ms) * eps_hat
    return torch.where(same, z_t, out)


def analytic_xvar(sched: Schedule, t: Tensor) -> Tensor:
    """xvar_t = 0.1 / (2 + SNR(t)) (Algorithm 3 alternative; 10% of the posterior variance of N(0, 0.5) data)."""
    return 0.1 / (2 + sched.snr(t))
