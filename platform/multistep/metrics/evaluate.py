"""Metric-versus-steps evaluation on fixed noise (the same starting noise for every method and step count)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from multistep.diffusion.samplers import ddim_sample, xvar_table
from multistep.methods.base import conditioned
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
    ode: np.ndarray     # (n, d) teacher's many-step DDIM solution from `noise` (conditioned on `labels`)
    floor: dict         # metrics of a second independent data sample: the two-sample noise floor
    labels: torch.Tensor | None = None  # (n,) int64 class label per noise row (class-conditional teachers), else None

    def to_dict(self) -> dict:
        return {"data": self.data, "noise": self.noise.numpy(), "ode": self.ode, "floor": self.floor,
                "labels": None if self.labels is None else self.labels.numpy()}

    @classmethod
    def from_dict(cls, d: dict) -> "EvalRef":
        y = d.get("labels")
        return cls(np.array(d["data"]), torch.tensor(np.array(d["noise"])), np.array(d["ode"]), dict(d["floor"]),
                   None if y is None else torch.as_tensor(np.array(y), dtype=torch.long))

    def head(self, n: int) -> "EvalRef":
        """The first n rows (data, noise, ODE solutions, labels), without a floor: the proxy evaluation's reference."""
        return EvalRef(self.data[:n], self.noise[:n], self.ode[:n], {}, None if self.labels is None else self.labels[:n])


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


def bootstrap_se(samples, ref: EvalRef, names: dict[str, str], n_boot: int, seed: int = 0) -> dict[str, float]:
    """Bootstrap standard error of each metric of `evaluate`, keyed "<metric>_se": the std over `n_boot`
    resamples (with replacement, seeded) of the generated rows, each with its paired ODE row, and of the
    reference data rows. The evaluation-noise yardstick of a regression check (docs/regression.md)."""
    s = _flat(samples)
    rng = np.random.default_rng(seed)
    reps: dict[str, list[float]] = {k: [] for k in names.values()}
    for _ in range(n_boot):
        i, j = rng.integers(0, len(s), len(s)), rng.integers(0, len(ref.data), len(ref.data))
        for k, v in evaluate(s[i], EvalRef(ref.data[j], ref.noise, ref.ode[i], {}), names).items():
            reps[k].append(v)
    return {f"{k}_se": float(np.std(v, ddof=1)) for k, v in reps.items()}


def make_eval_ref(data_dist, teacher, sched, samples: int, ode_steps: int, seed: int, extractor: str = "identity",
                  labelled: bool = False) -> EvalRef:
    """Data sample, fixed noise and the teacher's `ode_steps`-step DDIM from it; `extractor` names the metrics
    ("identity" for vectors, "pixel" for images: both are Frechet distances of the flattened samples).
    labelled (class-conditional teacher, labelled data): each noise row also gets a fixed class label, drawn
    (after the noise, same seed) as the label of a random data row, i.e. from the data's label distribution,
    so conditional samples are compared with the unconditional data; the ODE is the conditional teacher's."""
    g = torch.Generator().manual_seed(seed)
    data = _flat(data_dist.sample(samples, g, dtype=torch.float64))
    other = _flat(data_dist.sample(samples, g, dtype=torch.float64))
    noise = torch.randn((samples, *data_dist.shape), generator=g, dtype=torch.float32)
    labels = data_dist.sample_labelled(samples, g)[1] if labelled else None
    ode, _ = ddim_sample(conditioned(teacher, labels), sched, noise.double(), ode_steps)
    ref = EvalRef(data, noise, _flat(ode), {}, labels)
    names = metric_names(samples, extractor)
    floor = evaluate(other, ref, names)
    floor[names["ode"]] = 0.0
    ref.floor = floor
    return ref


def teacher_curve(teacher, sched, data_dist, ref: EvalRef, steps: list[int], eta: float = 0.75, seed: int = 0,
                  extractor: str = "identity", bootstrap: int = 0) -> list[dict]:
    """Teacher DDIM and aDDIM (empirical xvar table, eta = 0.75) at each step count: rows of
    {method, steps, nfe, metric, value} (+ se, the bootstrap standard error, when bootstrap > 0).
    With ref.labels the teacher is conditioned on them (unguided), its xvar table on the table rows' own labels."""
    names = metric_names(len(ref.data), extractor)
    rows = []
    g = torch.Generator().manual_seed(seed)
    if ref.labels is None:
        table_data, table_y = data_dist.sample(2048, g, dtype=torch.float64), None
    else:
        table_data, table_y = data_dist.sample_labelled(2048, g, dtype=torch.float64)
    f = conditioned(teacher, ref.labels)
    for n in steps:
        for label, xv in (("teacher_ddim", None), ("teacher_addim", xvar_table(conditioned(teacher, table_y), sched, table_data, n, eta, g))):
            x, nfe = ddim_sample(f, sched, ref.noise.double(), n, xvar=xv)
            se = bootstrap_se(x, ref, names, bootstrap, seed) if bootstrap else {}
            for metric, value in evaluate(x, ref, names).items():
                rows.append({"method": label, "student_steps": n, "nfe": nfe, "metric": metric, "value": value}
                            | ({"se": se[f"{metric}_se"]} if se else {}))
    return rows


def fixed_draws(data_dist, samples: int, seed: int, extractor: str = "identity"):
    """The draws behind a teacher's own curve (teacher runs and `multistep eval` share them, so their numbers
    agree): (fixed float64 noise, metric names, dist(samples) -> {fd, swd} to a data sample, the same distances
    of a second data sample: the floor)."""
    g = torch.Generator().manual_seed(seed)
    data = _flat(data_dist.sample(samples, g, dtype=torch.float64))
    other = _flat(data_dist.sample(samples, g, dtype=torch.float64))
    noise = torch.randn((samples, *data_dist.shape), generator=g, dtype=torch.float64)
    names = metric_names(samples, extractor)
    mu_r, cov_r = gaussian_stats(data)

    def dist(s) -> dict[str, float]:
        s = _flat(s)
        return {names["fd"]: frechet_distance(*gaussian_stats(s), mu_r, cov_r), names["swd"]: sliced_wasserstein(s, data)}

    return noise, names, dist, dist(other)


def ddim_curve(teacher, sched, data_dist, samples: int, steps: list[int], seed: int, extractor: str = "identity",
               device="cpu") -> tuple[list[dict], dict]:
    """A trained teacher's own DDIM curve from fixed noise: rows {steps, metric, value} of the Frechet and
    sliced Wasserstein distances to a data sample, and the same distances of a second data sample (the floor)."""
    noise, _, dist, floor = fixed_draws(data_dist, samples, seed, extractor)
    rows = []
    for n in steps:
        x, _ = ddim_sample(teacher, sched, noise.to(device), n)
        rows += [{"steps": n, "metric": k, "value": v} for k, v in dist(x).items()]
    return rows, floor
