"""Per-sweep shared material, computed once and cached on disk by content hash:
the evaluation reference (data sample, fixed noise, teacher ODE solutions), the teacher's own
metric-versus-steps curve, and the warm-start weights every student starts from."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from multistep.config import TrialCfg
from multistep.metrics.evaluate import EvalRef, make_eval_ref, teacher_curve
from multistep.train.build import build
from multistep.train.loop import warm_start


def content_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(path: Path, compute):
    if path.is_file():
        return torch.load(path, weights_only=True)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(value, tmp)
    os.replace(tmp, path)
    return value


def prepare(cfg: TrialCfg, cache_dir: Path, log=print) -> dict:
    c = build(cfg)
    base = {"data": cfg.data.model_dump(), "teacher": cfg.teacher.model_dump()}
    ev = cfg.eval
    ref_key = content_hash({**base, "samples": ev.samples, "ode_steps": ev.ode_steps, "seed": ev.seed})

    def make_ref():
        log(f"computing evaluation reference ({ev.samples} samples, {ev.ode_steps}-step teacher ODE)")
        r = make_eval_ref(c.data, c.teacher, c.schedule, ev.samples, ev.ode_steps, ev.seed)
        return {"data": torch.from_numpy(r.data), "noise": r.noise, "ode": torch.from_numpy(r.ode),
                "floor": r.floor, "hash": ref_key}

    ref_t = _cached(cache_dir / f"evalref-{ref_key}.pt", make_ref)
    ref = EvalRef(ref_t["data"].numpy(), ref_t["noise"], ref_t["ode"].numpy(), ref_t["floor"])

    curve_key = content_hash({"ref": ref_key, "steps": ev.teacher_steps})

    def make_curve():
        log(f"computing the teacher curve (DDIM and aDDIM at {ev.teacher_steps} steps)")
        return {"rows": teacher_curve(c.teacher, c.schedule, c.data, ref, ev.teacher_steps)}

    curve = _cached(cache_dir / f"teachercurve-{curve_key}.pt", make_curve)["rows"]

    s = cfg.student
    init_key = content_hash({**base, "student": s.model_dump(), "seed": cfg.train.seed})

    def make_init():
        log(f"warm-starting the student: {s.init_iterations} iterations of v-loss regression onto the teacher")
        sample = lambda g: c.data.sample(cfg.train.batch_size, g)  # noqa: E731
        return warm_start(c.student.net, c.schedule, c.teacher, sample, s.init_iterations, s.init_learning_rate, cfg.train.seed)

    init = _cached(cache_dir / f"init-{init_key}.pt", make_init) if s.init_iterations > 0 else None
    ref_dict = {"data": ref.data.astype(np.float64), "noise": ref.noise.numpy(), "ode": ref.ode, "floor": ref.floor}
    return {"eval_ref": ref_dict, "eval_ref_hash": ref_key, "teacher_rows": curve, "init": init}
