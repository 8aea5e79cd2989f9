"""Sampling figures: img/s of the S-step student sampler (MCM Algorithm 2) for S in 1, 2, 4, 8 against the
teacher at 512 aDDIM steps; speedup versus the goal 0.9 * 512 / S."""

from __future__ import annotations

import statistics
import time

from multistep.bench.training import SAMPLER_STEPS, Setup, image_shape, timed


def bench_sampling(setup: Setup, batch: int, teacher_steps: int, min_rounds: int = 3, min_seconds: float = 2.0) -> dict:
    """The teacher once (hundreds of steps average themselves); the students in interleaved rounds (median per S),
    so a slow spell on a shared machine hits every S alike."""

    import torch

    from multistep.diffusion.samplers import ddim_sample, mcm_sample

    f = setup.student.eval()
    noise = torch.randn((batch, *image_shape(setup.size)), generator=torch.Generator().manual_seed(2)).to(setup.device)
    warm, _ = timed(lambda: mcm_sample(f, setup.sched, noise, 1), setup.device, 1, 0)  # warm-up (and compile)
    out = {"batch": batch, "teacher_steps": teacher_steps, "warmup_s": warm, "student": {}}
    _, t_teacher = timed(lambda: ddim_sample(f, setup.sched, noise, teacher_steps, xvar="analytic"), setup.device, 0, 1)
    out["teacher"] = {"seconds": t_teacher, "img_per_s": batch / t_teacher}
    times: dict[int, list[float]] = {S: [] for S in SAMPLER_STEPS}
    t0 = time.perf_counter()
    while len(times[1]) < min_rounds or time.perf_counter() - t0 < min_seconds:
        for S in SAMPLER_STEPS:
            times[S].append(timed(lambda S=S: mcm_sample(f, setup.sched, noise, S), setup.device, 0, 1)[1])
    for S in SAMPLER_STEPS:
        t = statistics.median(times[S])
        speedup, goal = t_teacher / t, 0.9 * teacher_steps / S
        out["student"][str(S)] = {
            "seconds": t,
            "img_per_s": batch / t,
            "speedup": speedup,
            "goal": goal,
            "speedup_over_goal": speedup / goal,
            "calls": len(times[S]),
        }
    setup.student.train()
    return out
