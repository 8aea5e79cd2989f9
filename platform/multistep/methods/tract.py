"""TRACT (Berthelot et al. 2023; apple/ml-tract tc_distill.py), algorithms.md §6.3, §7, A15.

TRACT is MCM distillation on a fixed grid, run in phases: phase p distils time_schedule[p]-step
sampling into time_schedule[p+1] steps. Within a phase the target is built exactly as in MCM
Algorithm 1 (teacher DDIM step t -> s, self-teacher DDIM step s -> group boundary, inverse DDIM),
so this file only supplies TRACT's settings and its phase logic around an MCM instance:
  - teacher step: plain DDIM, x_hat clipped in target steps (clip_x), float64 targets;
  - self-teacher: bias-corrected EMA of the student with mu_S = 0.5 (not reset between phases);
  - loss: squared l2 summed over dimensions, weight max(SNR, 1);
  - training length split equally over phases; at each phase boundary the teacher becomes the
    inference EMA, whose decay is mu_I = 1e-3 ** (1 / iterations per phase), bias-corrected as ml-tract's
    ModuleEMA (the k-th update has weight (1 - mu) / (1 - mu^k): the first copies the student).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from multistep.diffusion.samplers import mcm_sample
from multistep.diffusion.schedules import Schedule
from multistep.methods.base import Denoiser, MethodSpec, conditioned, register
from multistep.methods.mcm import MCM


@dataclass
class TRACT:
    schedule: Schedule
    teacher: Denoiser  # the diffusion teacher of phase 0
    time_schedule: tuple[int, ...]  # e.g. (64, 8, 1): phases 64 -> 8 -> 1
    self_teacher_ema: float = 0.5  # mu_S
    ema_residual: float = 1e-3  # inference EMA mu_I = residual ** (1 / iterations per phase)
    clip_x: float = 0.0  # clip x_hat in target steps (1.0 for data in [-1, 1]; 0 = off)
    loss_weight: str = "max(snr,1)"
    distance: str = "l2sq_sum"
    label: str = "tract"
    eval_ema_bias_correction: bool = True  # the inference EMA is bias-corrected (ml-tract ModuleEMA, §7.4)
    phase: int = -1
    inner: MCM | None = field(default=None, repr=False)

    @property
    def phases(self) -> int:
        return len(self.time_schedule) - 1

    @property
    def student_steps(self) -> int:
        return self.time_schedule[-1]

    def phase_of(self, iteration: int, total: int) -> int:
        return min(iteration * self.phases // max(total, 1), self.phases - 1)

    def eval_ema_decay(self, total: int) -> float:
        return self.ema_residual ** (1.0 / max(total // self.phases, 1))

    def _enter(self, phase: int, teacher: Denoiser) -> None:
        old_target = self.inner._target if self.inner is not None else None
        old_updates = self.inner._target_updates if self.inner is not None else 0
        self.inner = MCM(
            schedule=self.schedule,
            student_steps=self.time_schedule[phase + 1],
            teacher=teacher,
            anneal="constant",
            anneal_params={"n": self.time_schedule[phase]},
            xvar_frac=0.0,
            teacher_integrator="ddim",
            loss_weight=self.loss_weight,
            distance=self.distance,
            target_ema=self.self_teacher_ema,
            target_bias_correction=True,
            clip_x=self.clip_x,
        )
        self.inner._target, self.inner._target_updates = old_target, old_updates  # self-teacher EMA is not reset
        self.phase = phase

    def loss(self, student: nn.Module, x: torch.Tensor, iteration: int, total: int, g: torch.Generator):
        if self.inner is None:
            self._enter(self.phase_of(iteration, total), self.teacher)
        loss, logs = self.inner.loss(student, x, iteration, total, g)
        return loss, {**logs, "phase": torch.tensor(float(self.phase))}

    def after_step(self, student: nn.Module, ema: nn.Module, iteration: int, total: int) -> None:
        self.inner.after_step(student)
        nxt = self.phase_of(iteration, total)  # `iteration` steps are done; the next one belongs to phase nxt
        if iteration < total and nxt != self.phase:
            self._enter(nxt, copy.deepcopy(ema).requires_grad_(False).eval())  # teacher <- inference EMA

    def state_dict(self) -> dict:
        teacher = self.inner.teacher if self.inner is not None and self.phase > 0 else None
        return {
            "phase": self.phase,
            "teacher": None if teacher is None else teacher.state_dict(),
            "inner": None if self.inner is None else self.inner.state_dict(),
        }

    def load_state_dict(self, sd: dict, student: nn.Module) -> None:
        if sd["inner"] is None:
            return
        teacher = self.teacher
        if sd["teacher"] is not None:
            teacher = copy.deepcopy(student).requires_grad_(False).eval()
            teacher.load_state_dict(sd["teacher"])
        self._enter(int(sd["phase"]), teacher)
        self.inner.load_state_dict(sd["inner"], student)

    def evaluations(
        self, ema: nn.Module, y: torch.Tensor | None = None, seed: int = 0
    ):  # deterministic sampler: no seed
        S, sched, ema = (
            self.student_steps,
            self.schedule,
            conditioned(ema, y),
        )  # y: labels of the noise rows (conditional)
        return [(self.label, S, lambda noise: mcm_sample(ema, sched, noise, S))]


# ---- Registry entry: the `method:` keys of name: tract, its builder and its label ----


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    time_schedule: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="phases ts[p] -> ts[p+1] steps; default [64, 8S, S] (or [64, S] when 8S >= 64)"
    )
    self_teacher_ema: Annotated[float, Field(ge=0, lt=1)] = Field(0.5, description="mu_S (bias-corrected)")


def check(m) -> None:
    if m.name != "tract":
        return
    if m.time_schedule is None:
        S = m.student_steps
        m.time_schedule = [64, 8 * S, S] if 8 * S < 64 else [max(64, 2 * S), S]
    ts = m.time_schedule
    if len(ts) < 2 or any(a <= b or a % b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"time_schedule must decrease and each entry must divide the one before, got {ts}")
    if ts[-1] != m.student_steps:
        raise ValueError(f"time_schedule must end at student_steps = {m.student_steps}, got {ts}")
    if m.mode != "distill":
        raise ValueError("tract only distils (mode: distill)")


def build(cfg, c) -> TRACT:
    m = cfg.method
    return TRACT(
        c.schedule,
        c.teacher,
        tuple(m.time_schedule or ()),
        m.self_teacher_ema,
        clip_x=m.clip_x,
        loss_weight=m.loss_weight or "max(snr,1)",
        distance=m.distance or "l2sq_sum",
    )


register(MethodSpec("tract", Options, build, lambda m: "tract", check))
