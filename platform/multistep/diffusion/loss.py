"""Diffusion (teacher) training loss: v-loss = (SNR + 1) weighted x-error (algorithms.md §1.3)."""

from __future__ import annotations

import torch
from torch import nn

from multistep.diffusion.ddim import bcast, v_from_x
from multistep.diffusion.schedules import Schedule


def v_loss(net: nn.Module, sched: Schedule, x: torch.Tensor, g: torch.Generator, teacher=None) -> torch.Tensor:
    """E_t ||v_theta(z_t, t) - v||^2 with t ~ U(0, 1]; v = alpha eps - sigma x.

    With `teacher` (an exact or trained denoiser) the regression target is the teacher's x_hat
    instead of the data point: same minimiser, lower variance (used to warm-start students).
    """
    B = x.shape[0]
    t = (1.0 - torch.rand(B, generator=g, dtype=torch.float64)).to(x.device)  # (0, 1]; CPU generator, any device
    eps = torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.device)
    xd = x.double()
    a, s = sched.alpha_sigma(t)
    z = bcast(a, xd) * xd + bcast(s, xd) * eps
    target_x = teacher(z, t).double() if teacher is not None else xd
    v_tgt = v_from_x(sched, z, t, target_x) if teacher is not None else bcast(a, xd) * eps - bcast(s, xd) * xd
    v_hat = net(z.float(), t)
    return (v_hat.double() - v_tgt).pow(2).mean()
