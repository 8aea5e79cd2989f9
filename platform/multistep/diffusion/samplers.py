"""Samplers as pure functions (algorithms.md §5, §8.6). Each returns (samples, nfe).

A denoiser is any callable f(z, t) -> x_hat with t of shape (B,); networks, the analytic mixture
teacher and distilled students all share this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from multistep.diffusion.ddim import addim_step, analytic_xvar, bcast, ddim_step
from multistep.diffusion.schedules import Schedule

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]


def full_time(z: Tensor, value: float) -> Tensor:
    """t = value for every row of z (float64, on z's device)."""
    return torch.full((z.shape[0],), value, dtype=torch.float64, device=z.device)


@torch.no_grad()
def ddim_sample(
    f: Denoiser, sched: Schedule, noise: Tensor, steps: int, xvar: str | Callable | None = None
) -> tuple[Tensor, int]:
    """Teacher DDIM over `steps` uniform steps; with `xvar` it is aDDIM (Algorithm 3).

    xvar: None (plain DDIM), "analytic" (0.1 / (2 + SNR)), or a callable t -> per-dim variance
    (e.g. a precomputed per-t table, see `xvar_table`).
    """
    z = noise
    for i in range(steps, 0, -1):  # t = 1, 1 - 1/N, ..., 1/N
        t, s = full_time(z, i / steps), full_time(z, (i - 1) / steps)
        x_hat = f(z, t)
        if xvar is None:
            z = ddim_step(sched, x_hat, z, t, s)
        else:
            v = analytic_xvar(sched, t) if xvar == "analytic" else xvar(t)
            z = addim_step(sched, x_hat, z, t, s, v)
    return z, steps


@torch.no_grad()
def mcm_sample(f: Denoiser, sched: Schedule, noise: Tensor, student_steps: int) -> tuple[Tensor, int]:
    """MCM Algorithm 2: plain deterministic DDIM over S uniform steps with the student."""
    z = noise  # z_1 ~ N(0, I)
    for k in range(student_steps, 0, -1):  # k = S, ..., 1
        t, s = full_time(z, k / student_steps), full_time(z, (k - 1) / student_steps)
        z = ddim_step(sched, f(z, t), z, t, s)  # z_s = DDIM_{t->s}(f(z_t, t), z_t); last step returns x_hat
    return z, student_steps


@torch.no_grad()
def flowmap_sample(
    f: Callable[[Tensor, Tensor, Tensor], Tensor],
    sched: Schedule,
    noise: Tensor,
    steps: int,
    gamma: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    """A flow-map student f(z, t, s) -> x_hat over `steps` uniform jumps t_k = k / K (few-step-families.md §2).

    gamma = 0: deterministic jumps z <- DDIM_{t->s}(f(z, t, s), z_t), which is f_theta(z, phi_t, phi_s) (A.1); with
    f ignoring s this is MCM's Algorithm 2. gamma > 0 (gamma-sampling, CTM / TCD): jump further, to s' = (1 - gamma) s,
    then renoise to s: z_s = (alpha_s / alpha_s') z_s' + sqrt(sigma_s^2 - (alpha_s sigma_s' / alpha_s')^2) eps;
    gamma = 1 is the CM multistep sampler. One network evaluation per jump."""
    z = noise
    for k in range(steps, 0, -1):
        t, s = full_time(z, k / steps), full_time(z, (k - 1) / steps)
        lower = s * (1.0 - gamma)
        z = ddim_step(sched, f(z, t, lower), z, t, lower)
        if gamma > 0 and k > 1:
            (a_l, sig_l), (a_s, sig_s) = sched.alpha_sigma(lower), sched.alpha_sigma(s)
            ratio = a_s / a_l
            noise_std = torch.sqrt((sig_s**2 - (ratio * sig_l) ** 2).clamp_min(0.0))
            eps = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
            z = bcast(ratio, z).to(z.dtype) * z + bcast(noise_std, z).to(z.dtype) * eps
    return z, steps


@torch.no_grad()
def cm_stochastic_sample(
    f: Denoiser, sched: Schedule, noise: Tensor, times: Sequence[float], generator: torch.Generator | None = None
) -> tuple[Tensor, int]:
    """CM paper Algorithm 1 (multistep consistency sampling), VP form.

    x <- f(z_1, 1); for each tau in `times` (decreasing, in (0, 1)): z = alpha_tau x + sigma_tau eps
    with fresh eps, x <- f(z, tau). Used to evaluate a 1-step-trained CM at 2, 4, 8 steps.
    """
    x = f(noise, full_time(noise, 1.0))
    for tau in times:
        t = full_time(noise, tau)
        a, s = sched.alpha_sigma(t)
        eps = torch.randn(noise.shape, generator=generator, dtype=noise.dtype, device=noise.device)
        z = (
            a.reshape(-1, *[1] * (noise.ndim - 1)).to(noise.dtype) * x
            + s.reshape(-1, *[1] * (noise.ndim - 1)).to(noise.dtype) * eps
        )
        x = f(z, t)
    return x, 1 + len(times)


@torch.no_grad()
def xvar_table(
    f: Denoiser, sched: Schedule, data: Tensor, steps: int, eta: float = 0.75, generator: torch.Generator | None = None
) -> Callable[[Tensor], Tensor]:
    """Empirical aDDIM table (Algorithm 3): xvar_t = eta * E||x - x_hat(z_t)||^2 / d on the grid t = i/steps.

    Returns a function t -> xvar that looks up the nearest grid time.
    """
    grid = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    table = torch.empty(steps, dtype=torch.float64)
    for i, tv in enumerate(grid):
        t = full_time(data, float(tv))
        a, s = sched.alpha_sigma(t)
        eps = torch.randn(data.shape, generator=generator, dtype=data.dtype)
        shape = (-1,) + (1,) * (data.ndim - 1)
        z = a.reshape(shape).to(data.dtype) * data + s.reshape(shape).to(data.dtype) * eps
        table[i] = eta * (data - f(z, t)).double().pow(2).mean()

    def lookup(t: Tensor) -> Tensor:
        idx = (t.double().cpu() * steps).round().long().clamp(1, steps) - 1
        return table[idx].to(t.device)

    return lookup
