"""Any diffusion network as the platform's denoiser f(z_t, t[, y]) -> x_hat (docs/teachers.md).

The platform works on a VP schedule z_t = alpha_t x + sigma_t eps (diffusion/schedules.py). A teacher trained
elsewhere saw its own inputs; at equal log-SNR lambda = log(alpha^2 / sigma^2) every one of them is a rescaling of
z_t (algorithms.md §1.1), so the adapter maps (z_t, t) to the network's input, calls it, and turns its output into
x_hat. All of that maths runs in float64 (or z's dtype); only the network itself runs under the trial's precision.

  kind of time input (`Time`)     the network is called as              what it returns (`Parameterization`)
  ddpm  (discrete beta schedule)  net(z_t, tau[, y]), fractional tau    eps, v or x0 (diffusers: epsilon,
        with abar(tau) matching lambda, interpolated in log-SNR         v_prediction, sample)
  vp    (a continuous schedule)   net(z_t, t' * time_scale[, y])        eps, v or x0
  edm   (sigma, EDM / EDM2)       net(z_t / alpha, sigma = sigma_t / alpha_t[, y])  D(x; sigma) = x_hat
  flow  (rectified flow)          net(z_t (1 - s) / alpha, s * time_scale[, y])     velocity eps - x
                                  with x_s = (1 - s) x + s eps, s = sigmoid(-lambda / 2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from multistep.diffusion.ddim import bcast as _b
from multistep.diffusion.schedules import DiscreteVP, Schedule
from multistep.nets.mlp import VDenoiser

Tensor = torch.Tensor
PARAMETERIZATIONS = ("eps", "v", "x0", "edm", "flow")  # what the network returns (edm: D(x; sigma); flow: eps - x)


def ddpm_betas(beta_schedule: str, beta_start: float, beta_end: float, steps: int) -> Tensor:
    """The beta_k of a discrete DDPM schedule, as diffusers' DDPMScheduler defines them (float64)."""
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if beta_schedule == "scaled_linear":  # latent diffusion: linear in sqrt(beta)
        return torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":  # improved DDPM's cosine, betas capped at 0.999
        f = lambda i: math.cos((i / steps + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(steps)], dtype=torch.float64)
    raise ValueError(f"unsupported beta_schedule {beta_schedule!r} (linear, scaled_linear, squaredcos_cap_v2)")


@dataclass(frozen=True)
class Time:
    """How the network reads the noise level: one subclass per kind (ddpm: timesteps, vp: continuous t, edm: sigma,
    flow: s), registered by its `kind` in TIME_KINDS; `Time.of(kind, **fields)` builds one (export's multistep.json
    stores the kind and every field)."""

    kind: ClassVar[str]
    logsnr_k: Tensor | None = None  # ddpm: lambda at each integer timestep k = 0 .. T-1 (decreasing)
    schedule: Schedule | None = None  # vp: the schedule the network was trained with
    sigma_min: float = 0.002  # edm
    sigma_max: float = 80.0  # edm
    time_scale: float = 1.0  # vp, flow: the network receives its time times this

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        TIME_KINDS[cls.kind] = cls

    @staticmethod
    def of(kind: str, **fields) -> Time:
        if kind not in TIME_KINDS:
            raise ValueError(f"unknown time kind {kind!r} (one of {', '.join(TIME_KINDS)})")
        return TIME_KINDS[kind](**fields)

    @staticmethod
    def ddpm(betas: Tensor) -> Time:
        abar = torch.cumprod(1 - betas.double(), 0)
        return DdpmTime(logsnr_k=torch.log(abar) - torch.log1p(-abar))

    def logsnr_range(self) -> tuple[float, float]:
        """(lowest, highest) log-SNR the network was trained on: the student's schedule stays inside the lowest."""
        return -20.0, 20.0

    def network_input(self, lam: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """(a_in, time_in) at log-SNR lam: the network is called on (a_in z_t, time_in)."""
        raise NotImplementedError

    def flow_s(self, lam: Tensor) -> Tensor:
        """s of a flow network's x_s = (1 - s) x + s eps (1 for the other kinds), for its velocity output."""
        return torch.ones_like(lam)

    def own_schedule(self) -> Schedule | None:
        """The network's own discrete schedule, which the student follows unless told otherwise (ddpm)."""
        return None


TIME_KINDS: dict[str, type[Time]] = {}


@dataclass(frozen=True)
class DdpmTime(Time):
    kind: ClassVar[str] = "ddpm"

    def logsnr_range(self) -> tuple[float, float]:
        return float(self.logsnr_k[-1]), float(self.logsnr_k[0])

    def network_input(self, lam: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(lam), self.timestep(lam)  # VP at equal log-SNR: the same z

    def own_schedule(self) -> Schedule:
        return DiscreteVP(logsnr_k=tuple(self.logsnr_k.tolist()))

    def timestep(self, lam: Tensor) -> Tensor:
        """The fractional timestep tau with lambda(tau) = lam, linear in log-SNR between integer steps (clamped)."""
        lk = self.logsnr_k.to(lam.device)
        asc, k = lk.flip(0), torch.arange(len(lk) - 1, -1, -1, dtype=lam.dtype, device=lam.device)
        lam = lam.clamp(float(asc[0]), float(asc[-1]))
        i = torch.searchsorted(asc, lam.contiguous()).clamp(1, len(asc) - 1)
        w = (lam - asc[i - 1]) / (asc[i] - asc[i - 1])
        return k[i - 1] + w * (k[i] - k[i - 1])


@dataclass(frozen=True)
class VpTime(Time):
    kind: ClassVar[str] = "vp"

    def logsnr_range(self) -> tuple[float, float]:
        one = torch.ones((), dtype=torch.float64)
        return max(float(self.schedule.logsnr(one)), -20.0), min(float(self.schedule.logsnr(0 * one)), 20.0)

    def network_input(self, lam: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        # the network's own continuous time of this log-SNR, on the same z
        return torch.ones_like(lam), self.schedule.t_from_logsnr(lam).clamp(0, 1) * self.time_scale


@dataclass(frozen=True)
class EdmTime(Time):
    kind: ClassVar[str] = "edm"

    def logsnr_range(self) -> tuple[float, float]:
        return -2 * math.log(self.sigma_max), -2 * math.log(self.sigma_min)

    def network_input(self, lam: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        # x = z / alpha = data + (sigma / alpha) eps
        return 1 / alpha, torch.exp(-lam / 2).clamp(self.sigma_min, self.sigma_max)


@dataclass(frozen=True)
class FlowTime(Time):
    kind: ClassVar[str] = "flow"  # s in (0, 1): the log-SNR range is the base's (the ends are data and pure noise)

    def network_input(self, lam: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        # x_s = (1 - s) x + s eps at equal SNR ((1 - s) / s)^2 = alpha^2 / sigma^2
        sf = self.flow_s(lam)
        return (1 - sf) / alpha, sf * self.time_scale

    def flow_s(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-lam / 2)


class Adapted(VDenoiser):
    """A network trained elsewhere, as f(z_t, t[, y]) -> x_hat on the platform's `schedule`.

    The network runs through VDenoiser's fast paths (autocast, channels_last, compile; `self.v` is the raw call);
    labels y equal to `num_classes` (the platform's null class) are passed as `null_label`."""

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        time: Time,
        parameterization: str,
        num_classes: int | None = None,
        null_label: int | None = None,
        clip_sample: float = 0.0,
    ):
        super().__init__(net, schedule)
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r} (one of {', '.join(PARAMETERIZATIONS)})")
        self.time, self.parameterization = time, parameterization
        self.num_classes, self.null_label, self.clip_sample = num_classes, null_label, clip_sample

    def labels(self, y: Tensor | None, n: int, device) -> Tensor | None:
        """The network's labels: y with the platform's null class (num_classes) as null_label; no labels for a
        conditional network = its null label (an unconditional sample)."""
        if self.num_classes is None or (y is None and self.null_label is None):
            return None
        if y is None:
            return torch.full((n,), self.null_label, dtype=torch.long, device=device)
        if self.null_label is None:
            return y
        return torch.where(y == self.num_classes, torch.full_like(y, self.null_label), y)

    time_dtype = torch.float32  # the network's time input (VDenoiser passes the sampler's float64 t)

    def affine(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(a_in, time_in, c_z, c_o) at times t (B,): the network is called on (a_in z, time_in), and
        x_hat = c_z z + c_o out. At a fixed t the whole adapter is this affine map around the network."""
        a, s = self.schedule.alpha_sigma(t)
        lam, one = self.schedule.logsnr(t), torch.ones_like(t)
        a_in, time_in = self.time.network_input(lam, a)
        c = {  # x_hat = c_z z + c_o out
            "eps": (1 / a, -s / a),  # x = (z - sigma eps) / alpha
            "v": (a, -s),  # x = alpha z - sigma v
            "flow": (a_in, -self.time.flow_s(lam)),  # x = x_s - s v with v = eps - x
        }.get(self.parameterization, (0 * one, one))  # x0, edm: the output is the data estimate
        return a_in, time_in, c[0], c[1]

    def forward(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        dt = z.dtype if z.dtype == torch.float64 else torch.float32  # the target maths: never bf16
        zz = z.to(dt)
        a_in, time_in, c_z, c_o = self.affine(t.to(dt))
        out = self.v(_b(a_in, zz) * zz, time_in.to(self.time_dtype), self.labels(y, len(z), z.device)).to(dt)
        x_hat = _b(c_z, zz) * zz + _b(c_o, zz) * out  # the network in its own precision, the rest in float32/64
        if self.clip_sample:
            x_hat = x_hat.clamp(-self.clip_sample, self.clip_sample)
        return x_hat.to(z.dtype)
