"""Progressive distillation (Salimans & Ho 2022), algorithms.md §6.4, §9 (baseline).

Phases halve the number of sampling steps: phase p trains an N_p-step student (N_p = start/2^(p+1))
to match two DDIM half-steps of the frozen phase teacher (the diffusion teacher in phase 0, then the
previous phase's student). The student of every phase is a point on the curve (steps 2^k).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from multistep.diffusion.ddim import bcast, ddim_step, inv_ddim
from multistep.diffusion.samplers import mcm_sample
from multistep.diffusion.schedules import Schedule
from multistep.methods.base import Denoiser, MethodSpec, conditioned, distance, register, split_batch, weight


@dataclass
class Progressive:
    schedule: Schedule
    teacher: Denoiser  # diffusion teacher for the first phase
    start_steps: int = 64  # teacher steps of phase 0; its student has start_steps / 2
    student_steps: int = 1  # steps of the last phase's student
    loss_weight: str = "max(snr,1)"  # 'snr_trunc' of the PD code; "snr+1" = v_mse
    distance: str = "l2sq"
    target_dtype: torch.dtype = torch.float64
    label: str = "pd"
    phase: int = 0
    snapshots: dict = field(default_factory=dict)  # steps -> state dict of that phase's student
    _teacher: Denoiser | None = field(default=None, repr=False)

    @property
    def phases(self) -> int:
        return int(round(math.log2(self.start_steps / self.student_steps)))

    def steps_of(self, phase: int) -> int:
        return self.start_steps // 2 ** (phase + 1)

    def phase_of(self, iteration: int, total: int) -> int:
        return min(iteration * self.phases // max(total, 1), self.phases - 1)

    def eval_ema_decay(self, total: int) -> float:
        return 0.0  # PD keeps no EMA: each phase's student is used as it is

    def loss(self, student: nn.Module, x: torch.Tensor, iteration: int, total: int, g: torch.Generator):
        x, y = split_batch(x)  # (x, y): teacher and student see the labels
        sched, dt, dev = self.schedule, self.target_dtype, x.device
        N, B = self.steps_of(self.phase), x.shape[0]
        teacher, student_y = conditioned(self._teacher or self.teacher, y), conditioned(student, y)
        x = x.to(dt)
        eps = torch.randn(x.shape, generator=g, dtype=dt).to(dev)
        i = torch.randint(0, N, (B,), generator=g).to(dev)  # i ~ U{0..N-1}
        t = (i + 1).double() / N  # u = (i + 1) / N
        mid, s = t - 0.5 / N, t - 1.0 / N
        a_t, sig_t = sched.alpha_sigma(t)
        z_t = bcast(a_t, x) * x + bcast(sig_t, x) * eps
        with torch.no_grad():
            z_mid = ddim_step(sched, teacher(z_t, t).to(dt), z_t, t, mid)  # 1. teacher half-step u -> u - 0.5/N
            z_tgt = ddim_step(sched, teacher(z_mid, mid).to(dt), z_mid, mid, s)  # 2. teacher half-step -> u - 1/N
            x_tgt = inv_ddim(sched, z_tgt, z_t, t, s)  # 3. inverse DDIM (4. = x_hat_2 at s = 0)
        x_hat = student_y(z_t, t)
        w = weight(self.loss_weight, sched.snr(t)).to(x_hat.dtype)
        loss = (w * distance(self.distance, x_tgt - x_hat, 0.0)).mean()
        return loss, {"loss": loss.detach(), "phase": torch.tensor(float(self.phase))}

    def after_step(self, student: nn.Module, ema: nn.Module, iteration: int, total: int) -> None:
        nxt = self.phase_of(iteration, total)
        if iteration == total or nxt != self.phase:  # phase ends: keep its student
            self.snapshots[self.steps_of(self.phase)] = {k: v.detach().clone() for k, v in ema.state_dict().items()}
        if iteration < total and nxt != self.phase:
            self._teacher = copy.deepcopy(ema).requires_grad_(False).eval()  # next teacher = this student
            self.phase = nxt

    def state_dict(self) -> dict:
        return {
            "phase": self.phase,
            "snapshots": {str(k): v for k, v in self.snapshots.items()},
            "teacher": None if self._teacher is None else self._teacher.state_dict(),
        }

    def load_state_dict(self, sd: dict, student: nn.Module) -> None:
        self.phase = int(sd["phase"])
        self.snapshots = {int(k): v for k, v in sd["snapshots"].items()}
        if sd["teacher"] is not None:
            self._teacher = copy.deepcopy(student).requires_grad_(False).eval()
            self._teacher.load_state_dict(sd["teacher"])

    def evaluations(
        self, ema: nn.Module, y: torch.Tensor | None = None, seed: int = 0
    ):  # deterministic sampler: no seed
        out = []  # y: labels of the noise rows (conditional students) or None
        for steps, sd in sorted(self.snapshots.items()):
            model = copy.deepcopy(ema)
            model.load_state_dict(sd)
            out.append(
                (
                    self.label,
                    steps,
                    lambda noise, m=model, n=steps: mcm_sample(conditioned(m, y), self.schedule, noise, n),
                )
            )
        return out


# ---- Registry entry: the `method:` keys of name: progressive, its builder and its label ----


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pd_start_steps: Annotated[int, Field(ge=1)] = Field(64, description="teacher steps of the first phase")


def check(m) -> None:
    if m.name != "progressive":
        return
    r = m.pd_start_steps / m.student_steps
    if r < 2 or r != 2 ** round(math.log2(r)):
        raise ValueError(
            f"pd_start_steps / student_steps must be a power of 2 >= 2, got {m.pd_start_steps}/{m.student_steps}"
        )
    if m.mode != "distill":
        raise ValueError("progressive only distils (mode: distill)")


def build(cfg, c) -> Progressive:
    m = cfg.method
    return Progressive(
        c.schedule,
        c.teacher,
        m.pd_start_steps,
        m.student_steps,
        loss_weight=m.loss_weight or "max(snr,1)",
        distance=m.distance or "l2sq",
    )


register(MethodSpec("progressive", Options, build, lambda m: "pd", check))
