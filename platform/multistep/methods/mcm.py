"""Multistep Consistency Models: training (CT) and distillation (CD), MCM Algorithm 1 (algorithms.md §4).

S = student_steps = 1 is a consistency model (CD/CT, §6.1); one teacher step per segment is
diffusion (§6.2). Line comments cite the Algorithm 1 pseudocode in algorithms.md §4.3.

Class-conditional teachers (§4.7, A13): batches are (x, y); teacher, reference pass and student all
see the labels y. With classifier-free guidance scale w > 0 the teacher step uses the guided
x_g = x_c + w (x_c - x_u) (x_c: label y, x_u: null class; w = 0 is the plain conditional teacher;
the same combination in x, eps or v since all are affine in the output at fixed z_t), while xvar is
computed from the conditional, unguided x_c. The student itself is never guided at sampling.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from multistep.diffusion.ddim import addim_step, bcast, ddim_step, inv_ddim
from multistep.diffusion.samplers import cm_stochastic_sample, mcm_sample
from multistep.diffusion.schedules import Schedule
from multistep.methods.anneal import AnnealCfg, LogLinearAnneal, teacher_steps
from multistep.methods.base import (
    METHODS,
    Denoiser,
    MethodSpec,
    OptionError,
    conditioned,
    distance,
    per_example_mean,
    register,
    rng_state,
    set_rng_state,
    split_batch,
    weight,
)


@dataclass
class MCM:
    schedule: Schedule
    student_steps: int  # S: number of segments = sampling steps
    teacher: Denoiser | None = None  # None: consistency training on data (CT)
    anneal: str = "loglinear"  # N_teacher(i) schedule name (methods/anneal.py)
    anneal_params: dict = field(default_factory=dict)
    xvar_frac: float = 0.75  # eta: aDDIM teacher step uses xvar = eta ||x_tch - x||^2 / d
    guidance: float = 0.0  # w: CFG scale of the teacher step, x_g = x_c + w (x_c - x_u); 0 = unguided
    teacher_integrator: str = "addim"  # "addim" or "ddim" teacher step
    loss_weight: str = "snr+1"  # w(t): "snr+1" | "max(snr,1)" | "snr"
    distance: str = "pseudo_huber"  # D: "pseudo_huber" | "l2sq"
    huber_eps: float = 1e-4  # epsilon_H of the pseudo-Huber distance
    target_ema: float = 0.0  # 0: reference pass = stopgrad(online) (A3); >0: EMA target net
    target_bias_correction: bool = False  # TRACT-style bias-corrected target EMA (first update copies)
    clip_x: float = 0.0  # >0: clip x_tch and x_ref to [-clip_x, clip_x] in target steps (TRACT); 0 = off
    t_sampling: str = "uniform"  # "uniform" over the grid, or iCT "lognormal" (P_mean -1.1, P_std 2.0)
    cm_sampler_steps: tuple = ()  # S = 1 only: also evaluate with the CM stochastic sampler at these step counts
    target_dtype: torch.dtype = torch.float64  # dtype of z_t, teacher step, DDIM and invDDIM (A7)
    label: str = ""  # name of its curve; default mcd (distillation) or mct (training)
    _target: nn.Module | None = field(default=None, repr=False)
    _target_updates: int = 0

    def __post_init__(self):
        self.label = self.label or ("mcd" if self.teacher is not None else "mct")

    def grid(self, iteration: int, total: int) -> tuple[int, int]:
        """(N_seg, T): N_seg = round(N_teacher(i) / S), T = S N_seg (A1)."""
        n_seg = max(1, round(teacher_steps(self.anneal, self.anneal_params, iteration, total) / self.student_steps))
        return n_seg, self.student_steps * n_seg

    def reference_net(self, student: nn.Module) -> nn.Module:
        if self.target_ema <= 0:
            return student
        if self._target is None:
            self._target = copy.deepcopy(student).requires_grad_(False)
        return self._target

    @torch.no_grad()
    def after_step(self, student: nn.Module, ema: nn.Module | None = None, iteration: int = 0, total: int = 1) -> None:
        if self.target_ema > 0 and self._target is not None:
            self._target_updates += 1
            mu, k = self.target_ema, self._target_updates
            w = (1 - mu) / (1 - mu**k) if self.target_bias_correction else 1 - mu  # bias-corrected: w_1 = 1
            torch._foreach_lerp_(list(self._target.parameters()), list(student.parameters()), w)

    def state_dict(self) -> dict:
        return {"target": None if self._target is None else self._target.state_dict(), "updates": self._target_updates}

    def load_state_dict(self, sd: dict, student: nn.Module) -> None:
        self._target_updates = int(sd["updates"])
        if sd["target"] is not None:
            self.reference_net(student).load_state_dict(sd["target"])

    def _positions(self, S: int, n_seg: int, B: int, g: torch.Generator) -> torch.Tensor:
        """n_rel in {1..N_seg}: uniform (Algorithm 1) or iCT's lognormal weights over the EDM sigma = sigma_t / alpha_t."""
        if self.t_sampling == "uniform":
            return torch.randint(1, n_seg + 1, (B,), generator=g)
        T = S * n_seg
        a, sig = self.schedule.alpha_sigma(torch.arange(0, T + 1, dtype=torch.float64) / T)
        log_sigma = torch.log(sig / a.clamp_min(1e-20)).clamp(-30, 30)
        cdf = torch.special.erf((log_sigma + 1.1) / (2.0**0.5 * 2.0))  # P_mean = -1.1, P_std = 2.0
        w = (cdf[1:] - cdf[:-1]).clamp_min(0).reshape(S, n_seg).sum(
            0
        ) + 1e-12  # mass of interval (idx-1, idx], same for all segments' offsets
        return torch.multinomial(w, B, replacement=True, generator=g) + 1

    def teacher_step(
        self, x: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, y: torch.Tensor | None = None
    ):
        """z_s = aDDIM_{t->s}(x_tch, z_t, xvar); returns (z_s, x_tch, xvar). Call under no_grad."""
        dt = self.target_dtype
        if self.teacher is not None:  # distillation
            x_c = conditioned(self.teacher, y)(z_t, t).to(dt)  # x_tch_cond = f_tch(z_t, t, y)
            xvar = self.xvar_frac * per_example_mean(
                (x_c - x) ** 2
            )  # xvar = eta ||x_tch_cond - x||^2 / d: unguided (A13)
            x_tch = x_c
            if self.guidance:
                x_u = self.teacher(z_t, t).to(dt)  # x_u = f_tch(z_t, t, null class): y = None
                x_tch = x_c + self.guidance * (x_c - x_u)  # x_tch = x_c + w (x_c - x_u), guided
        else:  # training: x_tch = x, xvar = 0
            x_tch, xvar = x, torch.zeros(x.shape[0], dtype=dt, device=x.device)
        if self.clip_x > 0:
            x_tch = x_tch.clamp(-self.clip_x, self.clip_x)
        if self.teacher_integrator == "addim":
            z_s = addim_step(self.schedule, x_tch, z_t, t, s, xvar)  # z_s = aDDIM_{t->s}(x_tch, z_t)
        else:
            z_s = ddim_step(self.schedule, x_tch, z_t, t, s)
        return z_s, x_tch, xvar

    def targets(
        self,
        student: nn.Module,
        x: torch.Tensor,
        iteration: int,
        total: int,
        g: torch.Generator,
        y: torch.Tensor | None = None,
    ):
        """Everything up to the x-space target; returns (z_t, t, x_tgt, n_rel, N_seg). y: class labels or None."""
        sched, S, dt = self.schedule, self.student_steps, self.target_dtype
        B, dev = x.shape[0], x.device
        n_seg, T = self.grid(iteration, total)  # N_seg, T = S N_seg
        x = x.to(dt)
        eps = torch.randn(x.shape, generator=g, dtype=dt, device="cpu").to(dev)  # eps ~ N(0, I)
        k = torch.randint(0, S, (B,), generator=g).to(dev)  # k ~ U{0..S-1}
        n_rel = self._positions(S, n_seg, B, g).to(dev)  # n_rel ~ U{1..N_seg}
        idx = k * n_seg + n_rel  # t on the grid {1/T..1}
        t_step = (k * n_seg).double() / T  # t_step = k / S
        t, s = idx.double() / T, (idx - 1).double() / T  # s = t - 1/T >= t_step
        a_t, sig_t = sched.alpha_sigma(t)
        z_t = bcast(a_t, x) * x + bcast(sig_t, x) * eps  # z_t = alpha_t x + sigma_t eps
        with torch.no_grad():
            z_s, _, _ = self.teacher_step(x, z_t, t, s, y)  # z_s = aDDIM_{t->s}(x_tch, z_t)
            ref = self.reference_net(student)
            x_ref = conditioned(ref, y)(z_s, s).to(dt)  # x_ref = stopgrad f(z_s, s)
            if self.clip_x > 0:
                x_ref = x_ref.clamp(-self.clip_x, self.clip_x)
            z_ref = ddim_step(sched, x_ref, z_s, s, t_step)  # z_ref = DDIM_{s->t_step}; = z_s when s = t_step
            x_tgt = inv_ddim(sched, z_ref, z_t, t, t_step)  # x_tgt = invDDIM_{t->t_step}(z_ref, z_t)
        return z_t, t, x_tgt, n_rel, n_seg

    def loss(self, student: nn.Module, x: torch.Tensor, iteration: int, total: int, g: torch.Generator):
        x, y = split_batch(x)  # x, or (x, y) for a conditional teacher
        # Synchronized dropout (A11): the reference pass replays the RNG state of the online pass.
        rng = rng_state(x.device)  # GPU dropout draws from the CUDA generator: replayed too
        z_t, t, x_tgt, n_rel, n_seg = self.targets(student, x, iteration, total, g, y)
        set_rng_state(rng)
        x_hat = conditioned(student, y)(z_t, t)  # x_hat = f(z_t, t[, y]), never guided
        w = weight(self.loss_weight, self.schedule.snr(t)).to(x_hat.dtype)  # w(t) = SNR(t) + 1
        per_ex = w * distance(self.distance, x_tgt - x_hat, self.huber_eps)  # L = w(t) D(x_tgt - x_hat)
        loss = per_ex.mean()
        return loss, {"loss": loss.detach(), "n_seg": torch.tensor(float(n_seg))}

    def evaluations(
        self, ema: nn.Module, y: torch.Tensor | None = None, seed: int = 0
    ) -> list[tuple[str, int, object]]:
        """(label, steps, sampler) for every point this trial contributes to the curve; y: labels of the noise rows;
        seed: of the CM stochastic sampler's fresh noise."""
        S, sched, ema = self.student_steps, self.schedule, conditioned(ema, y)
        out = [(self.label, S, lambda noise: mcm_sample(ema, sched, noise, S))]  # Algorithm 2
        if S == 1:  # a consistency model: also its multistep stochastic sampler at uniform times (CM Alg. 1)
            for n in self.cm_sampler_steps:
                times = [(n - i) / n for i in range(1, n)]
                out.append(
                    (
                        f"{self.label}_cm_sampler",
                        n,
                        lambda noise, times=times: cm_stochastic_sample(
                            ema, sched, noise, times, torch.Generator(device=noise.device).manual_seed(seed)
                        ),
                    )
                )
        return out


# ---- Registry entry: the `method:` keys of name: mcm, its builder and its label ----


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    anneal: AnnealCfg = Field(
        LogLinearAnneal(name="loglinear", start=16, end=256, fraction=0.5), description="teacher steps N(i)"
    )
    xvar_frac: Annotated[float, Field(ge=0)] = Field(0.75, description="eta of the aDDIM teacher step")
    guidance: Annotated[float, Field(ge=0)] = Field(
        0.0,
        description="distill: CFG scale w of the teacher step, x_g = x_c + w (x_c - x_u); 0 = none; needs a class-conditional teacher and labels",
    )
    teacher_integrator: Literal["addim", "ddim"] = Field("addim", description="distill: teacher step")
    target_ema: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="0 = stop-gradient of the online net; >0 EMA target"
    )
    t_sampling: Literal["uniform", "lognormal"] = Field(
        "uniform", description="grid positions uniform or iCT lognormal"
    )
    cm_sampler_steps: list[Annotated[int, Field(ge=1)]] = Field(
        [], description="S = 1: also evaluate the CM stochastic sampler at these steps"
    )


def check(m) -> None:
    if m.guidance > 0 and (not METHODS[m.name].guided or m.mode != "distill"):
        guided = ", ".join(sorted(name for name, spec in METHODS.items() if spec.guided))
        raise OptionError("guidance", f"needs mode: distill and a method with a teacher step ({guided})")
    if m.cm_sampler_steps and (m.name != "mcm" or m.student_steps != 1):
        raise ValueError("cm_sampler_steps needs name: mcm and student_steps: 1")


def label(m) -> str:
    """mcd / mct (MCM distillation / training; S = 1 is CD / CT); guided distillation: its own curve, e.g. mcd_cfg1."""
    if m.mode != "distill":
        return "mct"
    return f"mcd_cfg{m.guidance:g}" if m.guidance > 0 else "mcd"


def build(cfg, c) -> MCM:
    m = cfg.method
    anneal = m.anneal.model_dump()
    return MCM(
        schedule=c.schedule,
        student_steps=m.student_steps,
        teacher=c.teacher if m.mode == "distill" else None,
        anneal=anneal.pop("name"),
        anneal_params=anneal,
        xvar_frac=m.xvar_frac,
        guidance=m.guidance,
        teacher_integrator=m.teacher_integrator,
        loss_weight=m.loss_weight or "snr+1",
        distance=m.distance or "pseudo_huber",
        huber_eps=m.huber_eps,
        target_ema=m.target_ema,
        clip_x=m.clip_x,
        t_sampling=m.t_sampling,
        cm_sampler_steps=tuple(m.cm_sampler_steps),
    )


register(MethodSpec("mcm", Options, build, label, check, guided=True))
