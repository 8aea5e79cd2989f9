"""Variance-preserving noise schedules (algorithms.md §1.1-1.2).

z_t = alpha_t x + sigma_t eps with alpha_t^2 = sigmoid(logsnr_t), sigma_t^2 = sigmoid(-logsnr_t).
Every schedule is defined by its logSNR curve lambda(t) on t in [0, 1] (decreasing in t) and its
inverse. Plain cosine keeps alpha_0 = 1, sigma_0 = 0 and alpha_1 = 0 exactly, which the samplers
rely on (DDIM to s = 0 returns x_hat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Schedule:
    """Base: cosine family. Subclasses override `logsnr` / `t_from_logsnr`."""

    name: str = "cosine"

    def logsnr(self, t: Tensor) -> Tensor:
        # lambda(t) = -2 log tan(pi t / 2)
        return -2.0 * torch.log(torch.tan(math.pi * t / 2))

    def t_from_logsnr(self, lam: Tensor) -> Tensor:
        return 2.0 / math.pi * torch.atan(torch.exp(-lam / 2))

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        # Plain cosine in closed form, exact at both ends (alpha_0 = 1, sigma_0 = 0, alpha_1 = cos(pi/2)).
        return torch.cos(math.pi * t / 2), torch.sin(math.pi * t / 2)

    def alpha(self, t: Tensor) -> Tensor:
        return self.alpha_sigma(t)[0]

    def sigma(self, t: Tensor) -> Tensor:
        return self.alpha_sigma(t)[1]

    def snr(self, t: Tensor) -> Tensor:
        a, s = self.alpha_sigma(t)
        return a**2 / s**2

    def t_from_alpha(self, alpha: Tensor) -> Tensor:
        return self.t_from_logsnr(torch.log(alpha**2) - torch.log1p(-(alpha**2)))


@dataclass(frozen=True)
class LogSNRSchedule(Schedule):
    """A schedule given only by lambda(t); alpha, sigma come from the sigmoid identities."""

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        lam = self.logsnr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


@dataclass(frozen=True)
class ClippedCosine(LogSNRSchedule):
    """PD/TRACT: lambda(t) = -2 log tan(a t + b), logSNR kept in [logsnr_min, logsnr_max]."""

    name: str = "clipped_cosine"
    logsnr_min: float = -20.0
    logsnr_max: float = 20.0

    def _ab(self) -> tuple[float, float]:
        b = math.atan(math.exp(-self.logsnr_max / 2))
        return math.atan(math.exp(-self.logsnr_min / 2)) - b, b

    def logsnr(self, t: Tensor) -> Tensor:
        a, b = self._ab()
        return -2.0 * torch.log(torch.tan(a * t + b))

    def t_from_logsnr(self, lam: Tensor) -> Tensor:
        a, b = self._ab()
        return (torch.atan(torch.exp(-lam / 2)) - b) / a


@dataclass(frozen=True)
class ShiftedCosine(LogSNRSchedule):
    """simple diffusion: lambda(t) = lambda_cos(t) + 2 log(noise_d / image_d), clipped to +-clip."""

    name: str = "shifted_cosine"
    image_d: float = 64.0
    noise_d: float = 32.0
    clip: float = 15.0

    def logsnr(self, t: Tensor) -> Tensor:
        lam = Schedule.logsnr(self, t) + 2 * math.log(self.noise_d / self.image_d)
        return lam.clamp(-self.clip, self.clip)

    def t_from_logsnr(self, lam: Tensor) -> Tensor:
        return Schedule.t_from_logsnr(self, lam - 2 * math.log(self.noise_d / self.image_d))


@dataclass(frozen=True)
class InterpolatedCosine(LogSNRSchedule):
    """simple diffusion: lambda(t) = t * lambda_shift(t; noise_low) + (1 - t) * lambda_shift(t; noise_high).

    Direction of the interpolation and the +-15 clip are UNVERIFIED (algorithms.md §1.2); with
    noise_high = image_d this equals lambda_cos(t) + 2 t log(noise_low / image_d).
    """

    name: str = "interpolated_cosine"
    image_d: float = 64.0
    noise_low: float = 32.0
    noise_high: float = 64.0
    clip: float = 15.0

    def logsnr(self, t: Tensor) -> Tensor:
        # = t lambda_shift(lo) + (1 - t) lambda_shift(hi), written so lambda_cos(0) = +inf never meets 0 * inf = nan
        shift = t * 2 * math.log(self.noise_low / self.image_d) + (1 - t) * 2 * math.log(self.noise_high / self.image_d)
        return (Schedule.logsnr(self, t) + shift).clamp(-self.clip, self.clip)

    def t_from_logsnr(self, lam: Tensor) -> Tensor:
        # Monotone in t: invert by bisection (float64, 60 halvings is exact to machine precision).
        lo = torch.zeros_like(lam, dtype=torch.float64)
        hi = torch.ones_like(lam, dtype=torch.float64)
        for _ in range(60):
            mid = (lo + hi) / 2
            above = self.logsnr(mid) > lam  # logsnr decreases in t: target lies to the right
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return ((lo + hi) / 2).to(lam.dtype)


@dataclass(frozen=True)
class DiscreteVP(LogSNRSchedule):
    """A discrete DDPM schedule (log-SNR lambda_k at timesteps k = 0 .. T-1) in continuous time: t = (tau + 1) / T.

    Between integer timesteps lambda is linear in tau; on tau in [-1, 0] abar goes linearly from abar_0 to 1, so
    lambda(0) = +inf (alpha_0 = 1, sigma_0 = 0: DDIM's last step returns x_hat). DDIM with N steps here visits
    tau = T - 1, T - 1 - T/N, ..., T/N - 1 and then the data: diffusers' DDIM with timestep_spacing "trailing".
    """

    name: str = "ddpm"
    logsnr_k: tuple[float, ...] = ()  # lambda at timestep k, decreasing

    def _table(self, like: Tensor) -> Tensor:
        return torch.tensor(self.logsnr_k, dtype=torch.float64, device=like.device)

    def logsnr(self, t: Tensor) -> Tensor:
        lk = self._table(t)
        tau = t.double() * len(lk) - 1
        i = tau.floor().long().clamp(0, len(lk) - 2)
        inside = lk[i] + (tau - i) * (lk[i + 1] - lk[i])
        abar0 = torch.sigmoid(lk[0])
        abar = abar0 + (-tau).clamp(0, 1) * (1 - abar0)  # tau in [-1, 0]: abar_0 -> 1
        below = torch.log(abar) - torch.log1p(-abar)
        return torch.where(tau >= 0, inside, below).to(t.dtype)

    def t_from_logsnr(self, lam: Tensor) -> Tensor:
        lk = self._table(lam)
        asc, lamd = lk.flip(0), lam.double()
        i = torch.searchsorted(asc, lamd.clamp(float(asc[0]), float(asc[-1])).contiguous()).clamp(1, len(asc) - 1)
        w = (lamd - asc[i - 1]) / (asc[i] - asc[i - 1])
        tau_inside = (len(lk) - i) - w  # asc[j] is timestep T - 1 - j
        abar0, abar = torch.sigmoid(lk[0]), torch.sigmoid(lamd)
        tau_below = -((abar - abar0) / (1 - abar0)).clamp(0, 1)
        tau = torch.where(lamd > lk[0], tau_below, tau_inside.clamp(0, len(lk) - 1))
        return ((tau + 1) / len(lk)).to(lam.dtype)


SCHEDULES = {
    "cosine": Schedule,
    "clipped_cosine": ClippedCosine,
    "shifted_cosine": ShiftedCosine,
    "interpolated_cosine": InterpolatedCosine,
}


def make_schedule(name: str = "cosine", **params) -> Schedule:
    """Schedule by config name, e.g. make_schedule('interpolated_cosine', image_d=64)."""
    return SCHEDULES[name](**params)
