"""A small MLP denoiser for vector data: v-prediction, sinusoidal time features."""

from __future__ import annotations

import math

import torch
from torch import nn

from multistep.diffusion.ddim import x_from_v
from multistep.diffusion.schedules import Schedule


def time_features(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (DDPM style on 1000 t), shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    arg = scale * t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class MLP(nn.Module):
    """v_theta(z, t): concat(z, time features) -> depth x [Linear, SiLU(, Dropout)] -> Linear."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, time_dim: int = 64, dropout: float = 0.0):
        super().__init__()
        self.time_dim = time_dim
        layers: list[nn.Module] = []
        width = dim + time_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z.reshape(z.shape[0], -1), time_features(t, self.time_dim)], dim=1)
        return self.net(h).reshape(z.shape)


class VDenoiser(nn.Module):
    """Wraps a v-prediction network as f(z, t) -> x_hat = alpha_t z - sigma_t v_theta(z, t) (MCM §4.4).

    The network runs in its own dtype (bf16 under autocast on GPU); the conversion to x_hat is done
    in the dtype of z (float32 or float64), never bf16.
    """

    def __init__(self, net: nn.Module, schedule: Schedule):
        super().__init__()
        self.net, self.schedule = net, schedule

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        # y: class labels for a class-conditional net (UNet with num_classes); None = unconditional / the null class
        v = (self.net(z.float(), t) if y is None else self.net(z.float(), t, y)).to(z.dtype)
        return x_from_v(self.schedule, z, t, v)
