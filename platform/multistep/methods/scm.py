"""Continuous-time consistency models (sCM, Lu & Song 2024): sCD / sCT, and segment-wise multistep sCM.

Notation of few-step-families.md §0-1. Angle time phi = atan2(sigma_t, alpha_t) turns any VP schedule into
TrigFlow with sigma_d = 1: z = cos(phi) x + sin(phi) eps, and the student's v-prediction is F_theta(z, phi).
The student jumps to the lower edge s of phi's segment (S segments on MCM's time grid t = k / S; S = 1: s = 0,
plain sCM):

    f_theta(z, phi) = cos(phi - s) z - sin(phi - s) F_theta(z, phi)            (f = z at phi = s)

which is MCM's DDIM step to the segment edge (A.3), so the student is sampled by MCM's Algorithm 2 and its curve
is directly comparable with MCD's. Training asks df/dphi = 0 along the teacher's ODE dz/dphi = v_T; with
Delta = phi - s the tangent (sCM Algorithm 1, sigma_d = 1, phi -> Delta) is

    g = -cos^2(Delta) (F^- - v_T) - r (cos(Delta) sin(Delta) z + cos(Delta) sin(Delta) dF^-/dphi)

where dF/dphi is the total derivative along (v_T, 1), computed by one forward-mode JVP (or a float64 central
difference), r ramps 0 -> 1 over the tangent warm-up, and the loss pulls F towards F^- + g / (||g|| + c).

Conventions chosen here (few-step-families.md leaves them open; each is an option below, docs/methods.md):
- norm: `rms` (||g||_2 / sqrt(D), FastGen's default) with the squared error averaged over the D elements; `raw`
  (||g||_2, rCM) with the same averaged error; `clamp`: g clipped to [-1, 1] instead of normalised.
- time law: n ~ N(p_mean, p_std), phi = arctan(e^n) (sigma_EDM = e^n), clipped to the schedule's own
  [phi(t_min), phi(1)]; defaults (-1.0, 1.4) as FastGen's CIFAR-10 sCT.
- tangent warm-up: a fraction of the trial's iterations (sCM: 10k of 400k iterations; our budgets are 3k-30k).
- weighting: prior 1 / tan(phi) and the learned log-variance u(phi) (a zero-initialised linear layer on 16
  positional features of phi, with its own Adam at the trial's learning rate, averaged over data-parallel ranks).
- the JVP runs on the bare network (no autocast, no torch.compile, math attention) in float32; the main forward
  with gradients takes the trial's fast paths. Both see the same dropout mask.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from multistep.diffusion.ddim import bcast
from multistep.diffusion.samplers import mcm_sample
from multistep.diffusion.schedules import Schedule
from multistep.methods.base import (
    MethodSpec,
    conditioned,
    guided,
    register,
    rng_state,
    set_rng_state,
    split_batch,
)

PHI_MARGIN = 1e-4  # phi kept this far inside (phi(t_min), phi(1)): FastGen clamps TrigFlow time to pi/2 - 1e-4


def phi_of_t(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """Angle time phi = atan2(sigma_t, alpha_t) in [0, pi/2] (float64)."""
    a, s = schedule.alpha_sigma(t.double())
    return torch.atan2(s, a)


def t_of_phi(schedule: Schedule, phi: torch.Tensor) -> torch.Tensor:
    """The schedule's t at angle phi: logsnr = -2 log tan(phi)."""
    return schedule.t_from_logsnr(-2 * torch.log(torch.tan(phi.double()))).clamp(0.0, 1.0)


def dphi_dt(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """d phi / d t at t (forward-mode AD through the schedule, float64): the JVP runs in the network's own time t."""
    t = t.double()
    return torch.func.jvp(lambda u: phi_of_t(schedule, u), (t,), (torch.ones_like(t),))[1]


def angle_law(schedule: Schedule, n: int, g: torch.Generator, p_mean: float, p_std: float) -> torch.Tensor:
    """n angles phi = arctan(e^u), u ~ N(p_mean, p_std) (sigma_EDM = tan phi log-normal), clipped to the schedule's
    own [phi(0), phi(1)] shrunk by PHI_MARGIN; float64 on the CPU."""
    lo = float(phi_of_t(schedule, torch.tensor([0.0]))) + PHI_MARGIN
    hi = float(phi_of_t(schedule, torch.tensor([1.0]))) - PHI_MARGIN
    u = p_mean + p_std * torch.randn(n, generator=g, dtype=torch.float64)
    return torch.atan(torch.exp(u)).clamp(lo, hi)


def segment_edge(schedule: Schedule, t: torch.Tensor, student_steps: int) -> torch.Tensor:
    """s: the angle of the lower edge of t's segment on MCM's grid t_k = k / S (0 for S = 1)."""
    k = torch.clamp(torch.ceil(t.double() * student_steps) - 1, min=0)  # t in (k/S, (k+1)/S]
    return phi_of_t(schedule, k / student_steps)


def total_derivative(fn, z, t, dz, dt, mode: str = "autograd", fd_eps: float = 1e-6, rng=None) -> torch.Tensor:
    """d/dh fn(z + h dz, t + h dt) at h = 0: one forward-mode JVP, or a float64 central difference with step
    fd_eps * t per row. `rng` (rng_state): replayed before each evaluation, so every one sees one dropout mask."""
    replay = (lambda: set_rng_state(rng)) if rng is not None else (lambda: None)
    if mode == "autograd":
        replay()
        return torch.func.jvp(fn, (z, t), (dz, dt))[1]
    h = fd_eps * t.double().abs().clamp_min(1e-3)
    z64, t64, dz64, dt64 = z.double(), t.double(), dz.double(), dt.double()
    replay()
    up = fn(z64 + bcast(h, z64) * dz64, t64 + h * dt64).double()
    replay()
    down = fn(z64 - bcast(h, z64) * dz64, t64 - h * dt64).double()
    return (up - down) / bcast(2 * h, z64)


def tangent(F_minus, J, z, v_T, delta, r: float) -> torch.Tensor:
    """g = -cos^2(Delta) (F^- - v_T) - r (cos Delta sin Delta z + J), J = cos Delta sin Delta dF^-/dphi."""
    c, s = bcast(torch.cos(delta), z), bcast(torch.sin(delta), z)
    return -(c**2) * (F_minus - v_T) - r * (c * s * z + J)


def exact_flow_map_F(z, phi, s, c2: float):
    """F* of Gaussian data x ~ N(0, c2 I) (appendix A.2): f* = z sqrt(S(s) / S(phi)), S(p) = c2 cos^2 p + sin^2 p,
    F* = (cos(phi - s) z - f*) / sin(phi - s). The fixed point every tangent must vanish at (tests)."""
    S = lambda p: c2 * torch.cos(p) ** 2 + torch.sin(p) ** 2
    d = phi - s
    return (bcast(torch.cos(d), z) * z - z * bcast(torch.sqrt(S(s) / S(phi)), z)) / bcast(torch.sin(d), z)


class LogVariance(nn.Module):
    """u(phi[, ...]): the learned adaptive weighting's log-variance, a zero-initialised linear layer on positional
    features of each angle / (pi/2) (sCM §4.2; a flow map's u(phi, phi - s) takes two)."""

    def __init__(self, dim: int = 16, inputs: int = 1):
        super().__init__()
        self.dim = dim
        self.linear = nn.Linear(dim * inputs, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, *angles: torch.Tensor) -> torch.Tensor:
        k = torch.arange(self.dim // 2, device=angles[0].device, dtype=torch.float32)
        feats = []
        for phi in angles:
            arg = (phi.float() / (math.pi / 2))[:, None] * math.pi * (k[None] + 1)
            feats += [torch.sin(arg), torch.cos(arg)]
        return self.linear(torch.cat(feats, 1))[:, 0]


@dataclass
class SCM:
    schedule: Schedule
    student_steps: int  # S: segments = sampling steps; 1 = plain sCM
    teacher: nn.Module | None = None  # None: consistency training on data (sCT)
    p_mean: float = -1.0
    p_std: float = 1.4
    tangent_warmup: float = 0.1  # fraction of the iterations over which r goes 0 -> 1
    tangent_norm: str = "rms"  # "rms" | "raw" | "clamp"
    tangent_norm_c: float = 0.1
    prior_weighting: bool = True  # w(phi) = 1 / tan(phi)
    adaptive_weighting: bool = True  # learned u(phi)
    jvp: str = "autograd"  # "autograd" | "finite_difference"
    fd_eps: float = 1e-6  # relative to t; float64 leaves room, and 1000 t time features need it small
    time_derivative_every: int = 50  # 0: off; else log ||dF/dphi|| and ||grad_z F . v_T|| every this many steps
    learning_rate: float = 2e-4  # u(phi)'s Adam
    guidance: float = 0.0  # w: CFG scale of the teacher velocity (method.guidance, shared with MCD); 0 = unguided
    r_max: float = 1.0  # the tangent's r after its warm-up (sCM: 1; AYF keeps 1% of the straight-line term: 0.99)
    label: str = ""
    _u: LogVariance | None = field(default=None, repr=False)
    _u_opt: torch.optim.Optimizer | None = field(default=None, repr=False)
    _probe: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.label = self.label or ("scd" if self.teacher is not None else "sct")

    u_inputs = 1  # angles u(...) reads: phi (a flow map: phi and its jump phi - s)

    def log_variance(self, device) -> LogVariance:
        if self._u is None:
            self._u = LogVariance(inputs=self.u_inputs).to(device)
            self._u_opt = torch.optim.Adam(self._u.parameters(), lr=self.learning_rate)
        return self._u

    def sample_phi(self, B: int, g: torch.Generator, device) -> torch.Tensor:
        return angle_law(self.schedule, B, g, self.p_mean, self.p_std).to(device)

    def teacher_velocity(self, x, z, t, eps, y=None) -> torch.Tensor:
        """v_T: the teacher's v = (alpha z - x_hat) / sigma (sCD), or cos(phi) eps - sin(phi) x (sCT); float64.
        With guidance w: x_hat = x_c + w (x_c - x_u) (x_u: the null class), so v_T = v_c + w (v_c - v_u)."""
        a, s = (bcast(u, z) for u in self.schedule.alpha_sigma(t))
        if self.teacher is None:
            return a * eps - s * x
        return (a * z - guided(self.teacher, z, t, y, self.guidance)) / s

    def jump_target(self, phi: torch.Tensor, t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """s: the angle each row's map jumps to; here the lower edge of its segment (a flow map draws it)."""
        return segment_edge(self.schedule, t, self.student_steps)

    def target_input(self, s: torch.Tensor) -> dict:
        """The network's keyword inputs for target angle s: none here (a flow map's: the target time)."""
        return {}

    def loss(self, student: nn.Module, x: torch.Tensor, iteration: int, total: int, g: torch.Generator):
        x, y = split_batch(x)
        B, dev, x = x.shape[0], x.device, x.double()
        phi = self.sample_phi(B, g, dev)
        t = t_of_phi(self.schedule, phi)
        eps = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dev)
        s = self.jump_target(phi, t, g)
        delta, kw = phi - s, self.target_input(s)
        z = bcast(torch.cos(phi), x) * x + bcast(torch.sin(phi), x) * eps  # z = cos(phi) x + sin(phi) eps
        with torch.no_grad():
            v_T = self.teacher_velocity(x, z, t, eps, y)
        args = () if y is None else (y,)
        kw32 = {k: v.float() for k, v in kw.items()}
        bare = lambda zz, tt: student.net(zz, tt, *args, **kw32)
        if getattr(student, "channels_last", False):  # forward-mode AD through GroupNorm refuses channels_last
            # activations (PyTorch's view in its JVP rule): the JVP runs on contiguous copies of the conv weights
            weights = {
                k: p.clone(memory_format=torch.contiguous_format)
                for k, p in student.net.named_parameters()
                if p.dim() == 4
            }
            net = student.net
            bare = lambda zz, tt: torch.func.functional_call(net, weights, (zz, tt, *args), kw32, strict=False)
        cs, dt_dphi = torch.cos(delta) * torch.sin(delta), 1.0 / dphi_dt(self.schedule, t)
        rng = rng_state(dev)  # the JVP and the main forward see the same dropout mask
        with torch.no_grad(), _math_attention():
            z32, v32 = z.float(), v_T.float()
            if self.jvp == "autograd":  # tangent (cos sin v_T, cos sin dt/dphi) in the net's own time t
                J = total_derivative(bare, z32, t.float(), bcast(cs, z32) * v32, (cs * dt_dphi).float(), rng=rng)
            else:
                J = total_derivative(
                    _float64(student.net, y, kw),
                    z,
                    t,
                    bcast(cs, z) * v_T,
                    cs * dt_dphi,
                    "finite_difference",
                    self.fd_eps,
                    rng,
                )
            probe = self._time_derivative(bare, z32, t, v32, dt_dphi, rng, iteration) | self.probes(
                student, x, iteration
            )
        set_rng_state(rng)
        F = student.v(z, t, y, **kw).double()  # the main forward, with gradients and the trial's fast paths
        F_minus = F.detach()
        r = self.r_max * min(1.0, (iteration + 1) / max(1.0, self.tangent_warmup * total))
        g_raw = tangent(F_minus, J.double(), z, v_T, delta, r)
        D = g_raw[0].numel()
        g_norm = g_raw.reshape(B, -1).norm(dim=1)
        if self.tangent_norm == "clamp":
            g_t = g_raw.clamp(-1.0, 1.0)
        else:
            scale = g_norm / math.sqrt(D) if self.tangent_norm == "rms" else g_norm
            g_t = g_raw / bcast(scale + self.tangent_norm_c, g_raw)
        err = (F - F_minus - g_t).reshape(B, -1).pow(2).mean(1)  # ||F - F^- - g||^2 / D
        loss, weights = self.weighted(err, phi, delta, dev)
        logs = {
            "loss": loss.detach(),
            "loss_unweighted": err.detach().mean(),
            "g_rms": (g_norm / math.sqrt(D)).mean(),
            "jvp_rms": J.double().reshape(B, -1).pow(2).mean(1).sqrt().mean(),
            "tangent_warmup": torch.tensor(r, dtype=torch.float64),
        }
        return loss, logs | weights | probe

    def weighted(self, err: torch.Tensor, phi: torch.Tensor, delta: torch.Tensor, dev) -> tuple[torch.Tensor, dict]:
        """sCM's weighted loss: mean of w(phi) exp(-u) err + u, w = 1 / tan(phi) (prior), u the learned log-variance."""
        w = 1.0 / torch.tan(phi) if self.prior_weighting else torch.ones_like(phi)
        angles = (phi, delta)[: self.u_inputs]
        u = self.log_variance(dev)(*angles).double() if self.adaptive_weighting else torch.zeros_like(phi)
        return (w * torch.exp(-u) * err + u).mean(), {"u_mean": u.detach().mean()}

    def probes(self, student: nn.Module, x: torch.Tensor, iteration: int) -> dict:
        """Extra no-grad measurements logged with the loss (a flow map: its composition gap)."""
        return {}

    def _time_derivative(self, bare, z32, t, v32, dt_dphi, rng, iteration: int) -> dict:
        """||dF/dphi|| (time alone) against ||grad_z F . v_T||: the high-frequency time features' share of the
        JVP (sCM Fig. 4), measured every `time_derivative_every` steps; logged as the last value measured."""
        if not self.time_derivative_every:
            return {}
        if iteration % self.time_derivative_every == 0 or not self._probe:
            inv = dt_dphi.float()
            d_time = total_derivative(bare, z32, t.float(), torch.zeros_like(z32), inv, rng=rng)
            d_z = total_derivative(bare, z32, t.float(), v32, torch.zeros_like(inv), rng=rng)
            rms = lambda a: a.double().reshape(a.shape[0], -1).pow(2).mean(1).sqrt().mean()
            self._probe = {"dF_dphi_rms": rms(d_time), "gradzF_v_rms": rms(d_z)}
        return dict(self._probe)

    @torch.no_grad()
    def after_step(self, student: nn.Module, ema: nn.Module | None = None, iteration: int = 0, total: int = 1) -> None:
        if self._u is None or not self.adaptive_weighting:
            return
        from multistep.train.replicas import Replicas, world_size

        if world_size() > 1:
            Replicas().average_gradients(self._u)  # every rank's u(phi) takes the same step
        self._u_opt.step()
        self._u_opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        if self._u is None:
            return {"u": None}
        return {"u": self._u.state_dict(), "u_opt": self._u_opt.state_dict()}

    def load_state_dict(self, sd: dict, student: nn.Module) -> None:
        if sd.get("u") is not None:
            self.log_variance(next(student.parameters()).device).load_state_dict(sd["u"])
            self._u_opt.load_state_dict(sd["u_opt"])

    def evaluations(self, ema: nn.Module, y: torch.Tensor | None = None, seed: int = 0):
        """MCM's Algorithm 2: deterministic DDIM jumps to the segment edges (the student's own map)."""
        S, sched, ema = self.student_steps, self.schedule, conditioned(ema, y)
        return [(self.label, S, lambda noise: mcm_sample(ema, sched, noise, S))]


@contextlib.contextmanager
def _math_attention():
    """Forward-mode AD has no flash / memory-efficient attention kernels: the math one during the JVP."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def _float64(net: nn.Module, y, kw: dict):
    """net(z, t) with float64 copies of its parameters (the finite-difference JVP); kw: its keyword inputs."""
    params = {k: v.double() for k, v in net.named_parameters()} | {
        k: v.double() if v.is_floating_point() else v for k, v in net.named_buffers()
    }
    args = () if y is None else (y,)
    return lambda z, t: torch.func.functional_call(net, params, (z, t, *args), kw)


# ---- Registry entry: the `method:` keys of name: scm, its builder and its label ----


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    p_mean: float = Field(-1.0, description="scm: time law n ~ N(p_mean, p_std), phi = arctan(e^n)")
    p_std: Annotated[float, Field(gt=0)] = 1.4
    tangent_warmup: Annotated[float, Field(ge=0, le=1)] = Field(
        0.1, description="scm: fraction of the iterations over which r: 0 -> 1"
    )
    tangent_norm: Literal["rms", "raw", "clamp"] = Field(
        "rms", description="scm: g / (||g||_rms + c), g / (||g||_2 + c), or clip"
    )
    tangent_norm_c: Annotated[float, Field(gt=0)] = 0.1
    prior_weighting: bool = Field(True, description="scm: w(phi) = 1 / tan(phi)")
    adaptive_weighting: bool = Field(True, description="scm: learned log-variance u(phi)")
    jvp: Literal["autograd", "finite_difference"] = Field(
        "autograd", description="scm: forward-mode JVP (float32) or float64 FD"
    )
    fd_eps: Annotated[float, Field(gt=0)] = Field(
        1e-6, description="scm: float64 finite-difference step, relative to t"
    )
    time_derivative_every: Annotated[int, Field(ge=0)] = Field(
        50, description="scm: measure ||dF/dphi|| vs ||grad_z F v|| (0: off)"
    )


def label(m) -> str:
    """scd / sct (sCM distillation / training; S > 1: segment-wise multistep sCM); guided: e.g. scd_cfg1."""
    if m.mode != "distill":
        return "sct"
    return f"scd_cfg{m.guidance:g}" if m.guidance > 0 else "scd"


def scm_options(cfg, c) -> dict:
    """SCM's constructor arguments from a trial config (flowmap and rcm build on them)."""
    m = cfg.method
    return {
        "schedule": c.schedule,
        "student_steps": m.student_steps,
        "teacher": c.teacher if m.mode == "distill" else None,
        "p_mean": m.p_mean,
        "p_std": m.p_std,
        "tangent_warmup": m.tangent_warmup,
        "tangent_norm": m.tangent_norm,
        "tangent_norm_c": m.tangent_norm_c,
        "prior_weighting": m.prior_weighting,
        "adaptive_weighting": m.adaptive_weighting,
        "jvp": m.jvp,
        "fd_eps": m.fd_eps,
        "time_derivative_every": m.time_derivative_every,
        "learning_rate": cfg.train.learning_rate,
        "guidance": m.guidance,
    }


def build(cfg, c) -> SCM:
    return SCM(**scm_options(cfg, c))


register(MethodSpec("scm", Options, build, label, guided=True))
