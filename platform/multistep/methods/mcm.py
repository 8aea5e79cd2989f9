"""Multistep Consistency Models: training (CT) and distillation (CD), MCM Algorithm 1 (algorithms.md §4).

S = student_steps = 1 is a consistency model (CD/CT, §6.1); one teacher step per segment is
diffusion (§6.2). Line comments cite the Algorithm 1 pseudocode in algorithms.md §4.3.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from multistep.diffusion.ddim import addim_step, bcast, ddim_step, inv_ddim
from multistep.diffusion.samplers import mcm_sample
from multistep.diffusion.schedules import Schedule
from multistep.methods.anneal import teacher_steps
from multistep.methods.base import Denoiser, distance, per_example_mean, weight


@dataclass
class MCM:
    schedule: Schedule
    student_steps: int                      # S: number of segments = sampling steps
    teacher: Denoiser | None = None         # None: consistency training on data (CT)
    anneal: str = "loglinear"               # N_teacher(i) schedule name (methods/anneal.py)
    anneal_params: dict = field(default_factory=dict)
    xvar_frac: float = 0.75                 # eta: aDDIM teacher step uses xvar = eta ||x_tch - x||^2 / d
    teacher_integrator: str = "addim"       # "addim" or "ddim" teacher step
    loss_weight: str = "snr+1"              # w(t): "snr+1" | "max(snr,1)" | "snr"
    distance: str = "pseudo_huber"          # D: "pseudo_huber" | "l2sq"
    huber_eps: float = 1e-4                 # epsilon_H of the pseudo-Huber distance
    target_ema: float = 0.0                 # 0: reference pass = stopgrad(online) (A3); >0: EMA target net
    target_dtype: torch.dtype = torch.float64  # dtype of z_t, teacher step, DDIM and invDDIM (A7)
    _target: nn.Module | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return "mcd" if self.teacher is not None else "mct"

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
    def after_step(self, student: nn.Module) -> None:
        if self.target_ema > 0 and self._target is not None:
            torch._foreach_lerp_(list(self._target.parameters()), list(student.parameters()), 1 - self.target_ema)

    def targets(self, student: nn.Module, x: torch.Tensor, iteration: int, total: int, g: torch.Generator):
        """Everything up to the x-space target; returns (z_t, t, x_tgt, n_rel, N_seg)."""
        sched, S, dt = self.schedule, self.student_steps, self.target_dtype
        B, dev = x.shape[0], x.device
        n_seg, T = self.grid(iteration, total)                                 # N_seg, T = S N_seg
        x = x.to(dt)
        eps = torch.randn(x.shape, generator=g, dtype=dt, device="cpu").to(dev)  # eps ~ N(0, I)
        k = torch.randint(0, S, (B,), generator=g).to(dev)                     # k ~ U{0..S-1}
        n_rel = torch.randint(1, n_seg + 1, (B,), generator=g).to(dev)        # n_rel ~ U{1..N_seg}
        idx = k * n_seg + n_rel                                                # t on the grid {1/T..1}
        t_step = (k * n_seg).double() / T                                      # t_step = k / S
        t, s = idx.double() / T, (idx - 1).double() / T                         # s = t - 1/T >= t_step
        a_t, sig_t = sched.alpha_sigma(t)
        z_t = bcast(a_t, x) * x + bcast(sig_t, x) * eps                        # z_t = alpha_t x + sigma_t eps
        with torch.no_grad():
            if self.teacher is not None:                                       # distillation
                x_tch = self.teacher(z_t, t).to(dt)                            # x_tch = f_tch(z_t, t)
                xvar = self.xvar_frac * per_example_mean((x_tch - x) ** 2)     # xvar = eta ||x_tch - x||^2 / d
            else:                                                              # training: x_tch = x, xvar = 0
                x_tch, xvar = x, torch.zeros(B, dtype=dt, device=dev)
            if self.teacher_integrator == "addim":
                z_s = addim_step(sched, x_tch, z_t, t, s, xvar)                 # z_s = aDDIM_{t->s}(x_tch, z_t)
            else:
                z_s = ddim_step(sched, x_tch, z_t, t, s)
            ref = self.reference_net(student)
            x_ref = ref(z_s, s).to(dt)                                         # x_ref = stopgrad f(z_s, s)
            z_ref = ddim_step(sched, x_ref, z_s, s, t_step)                    # z_ref = DDIM_{s->t_step}; = z_s when s = t_step
            x_tgt = inv_ddim(sched, z_ref, z_t, t, t_step)                     # x_tgt = invDDIM_{t->t_step}(z_ref, z_t)
        return z_t, t, x_tgt, n_rel, n_seg

    def loss(self, student: nn.Module, x: torch.Tensor, iteration: int, total: int, g: torch.Generator):
        # Synchronized dropout (A11): the reference pass replays the RNG state of the online pass.
        rng = torch.get_rng_state()
        z_t, t, x_tgt, n_rel, n_seg = self.targets(student, x, iteration, total, g)
        torch.set_rng_state(rng)
        x_hat = student(z_t, t)                                                # x_hat = f(z_t, t)
        w = weight(self.loss_weight, self.schedule.snr(t)).to(x_hat.dtype)   # w(t) = SNR(t) + 1
        per_ex = w * distance(self.distance, x_tgt - x_hat, self.huber_eps)    # L = w(t) D(x_tgt - x_hat)
        loss = per_ex.mean()
        return loss, {"loss": loss.detach(), "n_seg": torch.tensor(float(n_seg))}

    def sample(self, student: Denoiser, noise: torch.Tensor):
        return mcm_sample(student, self.schedule, noise, self.student_steps)   # Algorithm 2
