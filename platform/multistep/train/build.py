"""Build a trial's components (schedule, data, teacher, student, method) from its config."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from multistep.config import TrialCfg
from multistep.data.gmm import GaussianMixture
from multistep.diffusion.schedules import Schedule, make_schedule
from multistep.methods.mcm import MCM
from multistep.methods.progressive import Progressive
from multistep.methods.tract import TRACT
from multistep.nets.analytic import MixtureDenoiser
from multistep.nets.mlp import MLP, VDenoiser


@dataclass
class Components:
    schedule: Schedule
    data: GaussianMixture
    teacher: nn.Module
    student: VDenoiser


def build(cfg: TrialCfg) -> Components:
    sched = make_schedule(cfg.teacher.schedule.name, **cfg.teacher.schedule.params)
    d = cfg.data
    gmm = GaussianMixture.random(tuple(d.shape), d.components, d.mean_std, d.component_std, d.seed)
    teacher = MixtureDenoiser(gmm, sched)
    s = cfg.student
    net = MLP(gmm.dim, s.hidden, s.depth, s.time_dim, s.dropout)
    return Components(sched, gmm, teacher, VDenoiser(net, sched))


def make_method(cfg: TrialCfg, c: Components):
    m = cfg.method
    if m.name == "tract":
        return TRACT(c.schedule, c.teacher, tuple(m.time_schedule or ()), m.self_teacher_ema, clip_x=m.clip_x,
                     loss_weight=m.loss_weight or "max(snr,1)", distance=m.distance or "l2sq_sum")
    if m.name == "progressive":
        return Progressive(c.schedule, c.teacher, m.pd_start_steps, m.student_steps,
                           loss_weight=m.loss_weight or "max(snr,1)", distance=m.distance or "l2sq")
    anneal = m.anneal.model_dump()
    name = anneal.pop("name")
    return MCM(
        schedule=c.schedule, student_steps=m.student_steps,
        teacher=c.teacher if m.mode == "distill" else None,
        anneal=name, anneal_params=anneal, xvar_frac=m.xvar_frac, teacher_integrator=m.teacher_integrator,
        loss_weight=m.loss_weight or "snr+1", distance=m.distance or "pseudo_huber", huber_eps=m.huber_eps,
        target_ema=m.target_ema, clip_x=m.clip_x, t_sampling=m.t_sampling, cm_sampler_steps=tuple(m.cm_sampler_steps),
    )


def method_label(cfg: TrialCfg) -> str:
    """Short name in tables and MLflow: mcd / mct (MCM distillation / training; S = 1 is CD / CT), tract, pd."""
    m = cfg.method
    if cfg.label:
        return cfg.label
    return {"tract": "tract", "progressive": "pd"}.get(m.name, "mcd" if m.mode == "distill" else "mct")
