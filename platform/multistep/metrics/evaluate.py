"""Metric-versus-steps evaluation on fixed noise (the same starting noise for every method and step count)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from multistep.diffusion.samplers import ddim_sample, xvar_table
from multistep.metrics.distances import paired_l2, sliced_wasserstein
from multistep.metrics.frechet import frechet_distance, gaussian_stats


def count_label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def metric_names(samples: int, extractor: str = "identity") -> dict[str, str]:
    """Logged names carry the extractor and the sample count, so a cheap proxy never meets a full evaluation."""
    c = count_label(samples)
    return {"fd": f"fd_{extractor}_{c}", "swd": f"swd_{c}", "ode": f"ode_l2_{c}"}


@dataclass
class EvalRef:
    """Reference material for one sweep, computed once by the driver and shared by every trial."""

    data: np.ndarray    # (n, d) samples of the data distribution
    noise: torch.Tensor  # (n, *shape) float32 starting noise, fixed per sample index
    ode: np.ndarray     # (n, d) teacher's many-step DDIM solution from `noise`
    floor: dict         # metrics of a second independent data sample: the two-sample noise floor

    def to_dict(self) -> dict:
        return {"data": self.data, "noise": self.noise.numpy(), "ode": self.ode, "floor": self.floor}

    @classmethod
    def from_dict(cls, d: dict) -> "EvalRef":
        return cls(np.array(d["data"]), torch.tensor(np.array(d["noise"])), np.array(d["ode"]), dict(d["floor"]))


def _flat(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return x.reshape(len(x), -1).astype(np.float64)


def evaluate(samples, ref: EvalRef, names: dict[str, str]) -> dict[str, float]:
    s = _flat(samples)
    mu, cov = gaussian_stats(s)
    mu_r, cov_r = gaussian_stats(ref.data)
    return {names["fd"]: frechet_distance(mu, cov, mu_r, cov_r),
            names["swd"]: sliced_wasserstein(s, ref.data),
            names["ode"]: paired_l2(s, ref.ode)}


def make_eval_ref(data_dist, teacher, sched, samples: int, ode_steps: int, seed: int) -> EvalRef:
    g = torch.Generator().manual_seed(seed)
    data = _flat(data_dist.sample(samples, g, dtype=torch.float64))
    other = _flat(data_dist.sample(samples, g, dtype=torch.float64))
    noise = torch.randn((samples, *data_dist.shape), generator=g, dtype=torch.float32)
    ode, _ = ddim_sample(teacher, sched, noise.double(), ode_steps)
    ref = EvalRef(data, noise, _flat(ode), {})
    names = metric_names(samples)
    floor = evaluate(other, ref, names)
    floor[names["ode"]] = 0.0
    ref.floor = floor
    return ref


def teacher_curve(teacher, sched, data_dist, ref: EvalRef, steps: list[int], eta: float = 0.75, seed: int = 0) -> list[dict]:
    """Teacher DDIM and aDDIM (empirical xvar table, eta = 0.75) at each step count: rows of
    {method, steps, nfe, metric, value}."""
    names = metric_names(len(ref.data))
    rows = []
    g = torch.Generator().manual_seed(seed)
    table_data = data_dist.sample(2048, g, dtype=torch.float64)
    for n in steps:
        for label, xv in (("teacher_ddim", None), ("teacher_addim", xvar_table(teacher, sched, table_data, n, eta, g))):
            x, nfe = ddim_sample(teacher, sched, ref.noise.double(), n, xvar=xv)
            for metric, value in evaluate(x, ref, names).items():
                rows.append({"method": label, "student_steps": n, "nfe": nfe, "metric": metric, "value": value})
    return rows
