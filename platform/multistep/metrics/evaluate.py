"""Metric-versus-steps evaluation on fixed noise (the same starting noise for every method and step count)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from multistep.diffusion.samplers import ddim_sample, xvar_table
from multistep.methods.base import conditioned
from multistep.metrics.distances import paired_l2, sliced_wasserstein
from multistep.metrics.frechet import frechet_distance, gaussian_stats
from multistep.metrics.kid import kid, subset_size
from multistep.metrics.reference import Reference


def count_label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def metric_names(
    samples: int, extractor: str = "identity", labelled: bool = False, ode_samples: int | None = None
) -> dict[str, str]:
    """Logged names carry the extractor and the sample count, so a cheap proxy never meets a full evaluation;
    `fid` / `kid` only with the Inception detector, `fd_<extractor>` / `kid_<extractor>` otherwise. With the
    classifier and class-conditional samples also `cls_err`: the fraction of samples the classifier does not
    assign to the label they were conditioned on (what guidance should lower). The paired ODE error is measured on
    the first `ode_samples` rows (default: all)."""
    c = count_label(samples)
    co = count_label(samples if ode_samples is None else ode_samples)
    fd, kd = ("fid", "kid") if extractor == "inception" else (f"fd_{extractor}", f"kid_{extractor}")
    names = {"fd": f"{fd}_{c}", "kid": f"{kd}_{c}", "swd": f"swd_{c}", "ode": f"ode_l2_{co}"}
    return names | ({"cls_err": f"cls_err_{c}"} if labelled and extractor == "classifier" else {})


@dataclass
class EvalRef:
    """Reference material for one sweep, computed once by the driver and shared by every trial."""

    data: np.ndarray  # (n, d) samples of the data distribution
    noise: torch.Tensor  # (n, *shape) float32 starting noise, fixed per sample index
    ode: (
        np.ndarray | None
    )  # (k, d) teacher's many-step DDIM solution from the first k rows of `noise` (conditioned on `labels`); None: no ode metric
    floor: dict  # metrics of a second independent data sample: the two-sample noise floor
    labels: torch.Tensor | None = None  # (n,) int64 class label per noise row (class-conditional teachers), else None
    feats: np.ndarray | None = None  # (n, D) float64 extractor features of `data`; None: the flattened data itself
    reference: Reference | None = None  # eval.reference: FD against its mu, sigma; KID against its features or none

    def to_dict(self) -> dict:
        return {
            "reference": None if self.reference is None else self.reference.to_dict(),
            "data": self.data,
            "noise": self.noise.numpy(),
            "ode": self.ode,
            "floor": self.floor,
            "labels": None if self.labels is None else self.labels.numpy(),
            "feats": self.feats,
        }

    @classmethod
    def from_dict(cls, d: dict) -> EvalRef:
        y, f, r = d.get("labels"), d.get("feats"), d.get("reference")
        return cls(
            np.array(d["data"]),
            torch.as_tensor(np.array(d["noise"])),
            None if d["ode"] is None else np.array(d["ode"]),
            dict(d["floor"]),
            None if y is None else torch.as_tensor(np.array(y), dtype=torch.long),
            None if f is None else np.array(f, dtype=np.float64),
            None if r is None else Reference.from_dict(r),
        )

    def names(self, extractor: str, labelled: bool = False) -> dict[str, str]:
        """metric_names of an evaluation against this reference."""
        return metric_names(len(self.data), extractor, labelled, None if self.ode is None else len(self.ode))

    @property
    def sample_shape(self) -> tuple:
        return tuple(self.noise.shape[1:])

    def with_noise_seed(self, r: int, seed: int = 0) -> EvalRef:
        """Repeat r of an evaluation (eval.repeats): r = 0 is this reference; others draw their noise with
        seed + 1000 r and have no paired ODE rows (those belong to the reference's own noise)."""
        if r == 0:
            return self
        g = torch.Generator().manual_seed(seed + 1000 * r)
        noise = torch.randn(self.noise.shape, generator=g, dtype=self.noise.dtype)
        return EvalRef(self.data, noise, None, self.floor, self.labels, self.feats, self.reference)

    @property
    def rows(self) -> int:
        """How many rows a proxy can take from head()."""
        return len(self.data)

    @property
    def ref_feats(self) -> np.ndarray:
        return self.data if self.feats is None else self.feats

    def head(self, n: int) -> EvalRef:
        """The first n rows (data, noise, ODE solutions, labels, features), without a floor: the proxy's reference."""
        return EvalRef(
            self.data[:n],
            self.noise[:n],
            None if self.ode is None else self.ode[:n],
            {},
            None if self.labels is None else self.labels[:n],
            None if self.feats is None else self.feats[:n],
            self.reference,
        )


def sample_points(evaluations, noise: torch.Tensor, labels: torch.Tensor | None, batch_size: int, device="cpu") -> list:
    """Every point of a method's curve, sampled from the fixed noise in chunks of `batch_size` rows on `device`
    (each chunk conditioned on its own rows' labels): [(label, steps, samples on the CPU, nfe per sample)].
    evaluations(y, seed) -> [(label, steps, sampler)] is the method's `evaluations` bound to its EMA network; each
    chunk's stochastic samplers are seeded with the chunk's first row index (no two chunks share their noise)."""
    out: dict = {}
    with torch.no_grad():
        for i in range(0, len(noise), batch_size):
            y = None if labels is None else labels[i : i + batch_size].to(device)
            for label, steps, sampler in evaluations(y, i):
                x, nfe = sampler(noise[i : i + batch_size].to(device))
                out.setdefault((label, steps), ([], nfe))[0].append(x.cpu())
    return [(label, steps, torch.cat(xs), nfe) for (label, steps), (xs, nfe) in out.items()]


def _flat(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return x.reshape(len(x), -1).astype(np.float64)


def mean_with_se(name: str, values: np.ndarray) -> dict[str, float]:
    """{name: the mean of per-row values, "<name>_se": its standard error sqrt(var / n) (for 0/1 hits: the
    binomial sqrt(p (1 - p) / n))}."""
    v, n = np.asarray(values, np.float64), max(len(values), 1)
    return {name: float(v.mean()), f"{name}_se": float(v.std() / np.sqrt(n))}


def clip_names(samples: int) -> dict[str, str]:
    return {"clip": f"clip_score_{count_label(samples)}"}


@dataclass
class LabelChecks:
    """How conditional samples are checked against the label of their noise row: `cls_err`, a classifier's class of
    each sample against its label's class (the label, or for caption data the class of its caption, label_classes:
    7 for "a handwritten seven"), and `clip_score`, a CLIP model's text alignment of each sample with its caption
    (metrics/clip.py)."""

    predict: object = None  # features -> classes (ClassifierExtractor.predict), or None
    label_classes: list[int] | None = None
    align: object = None  # (samples, labels) -> per-row CLIP scores, or None

    def names(self, samples: int) -> dict[str, str]:
        """The names these checks add to metric_names (cls_err is metric_names' own)."""
        return clip_names(samples) if self.align is not None else {}

    def per_row(self, samples, feats, labels: torch.Tensor, names: dict[str, str]) -> dict[str, np.ndarray]:
        """{logged name: one value per row} of the checks `names` asks for."""
        out = {}
        if self.predict is not None and "cls_err" in names:
            y = labels.cpu().numpy()
            truth = y if self.label_classes is None else np.asarray(self.label_classes)[y]
            out[names["cls_err"]] = (self.predict(feats) != truth).astype(np.float64)
        if self.align is not None and "clip" in names:
            out[names["clip"]] = np.asarray(self.align(samples, labels.cpu()), np.float64)
        return out


def evaluate(
    samples, ref: EvalRef, names: dict[str, str], feats=None, kid_subsets: int = 0, checks: LabelChecks | None = None
) -> dict[str, float]:
    """Frechet distance (and, with kid_subsets > 0, KID with its standard error "<kid>_se") between the features
    of the samples (`feats`; None: the flattened samples) and the reference's; sliced W2 and the paired error to
    the teacher's ODE solutions in sample space; with ref.labels, the LabelChecks `names` asks for (cls_err, the
    fraction of samples not classified as their label's class; clip_score), each with its standard error."""
    s = _flat(samples)
    f, fr, r = (s if feats is None else np.asarray(feats, np.float64)), ref.ref_feats, ref.reference
    if r is not None and f.shape[1] != r.dim:
        raise ValueError(f"eval.reference: its statistics have dimension {r.dim}, these features {f.shape[1]}")
    stats = gaussian_stats(fr) if r is None else (r.mu, r.sigma)  # the data's own, or the reference file's
    out = {
        names["fd"]: frechet_distance(*gaussian_stats(f), *stats),
        names["swd"]: sliced_wasserstein(s, ref.data),
    }
    if r is not None:
        fr = r.features  # KID against the reference's features; a stats-only reference has none (KID skipped)
    if ref.ode is not None:
        out[names["ode"]] = paired_l2(s[: len(ref.ode)], ref.ode)  # the first rows: those with an ODE solution
    if checks is not None and ref.labels is not None:
        for name, values in checks.per_row(samples, f, ref.labels, names).items():
            out |= mean_with_se(name, values)
    if kid_subsets and fr is not None:
        m = subset_size(len(f), len(fr), kid_subsets)  # disjoint subsets: independent estimates
        value, se = kid(f, fr, num_subsets=kid_subsets, subset_size=m)
        out |= {names["kid"]: value, f"{names['kid']}_se": se}
    return out


def bootstrap_se(
    samples, ref: EvalRef, names: dict[str, str], n_boot: int, seed: int = 0, feats=None
) -> dict[str, float]:
    """Bootstrap standard error of the FD, sliced W2 and ODE error of `evaluate`, keyed "<metric>_se": the std over
    `n_boot` resamples (with replacement, seeded) of the generated rows (with their features and paired ODE rows)
    and of the reference rows. The evaluation-noise yardstick of a regression check (docs/regression.md).
    (KID brings its own standard error, from its subsets.)"""
    s = _flat(samples)
    f = s if feats is None else np.asarray(feats, np.float64)
    rng = np.random.default_rng(seed)
    reps: dict[str, list[float]] = {}
    k_ode = 0 if ref.ode is None else len(ref.ode)
    for _ in range(n_boot):
        i, j = rng.integers(0, len(s), len(s)), rng.integers(0, len(ref.data), len(ref.data))
        boot_ref = EvalRef(ref.data[j], ref.noise, None, {}, None, ref.ref_feats[j], ref.reference)
        for k, v in evaluate(s[i], boot_ref, names, f[i]).items():
            reps.setdefault(k, []).append(v)
        if k_ode:  # the paired rows resampled as pairs
            io = rng.integers(0, k_ode, k_ode)
            reps.setdefault(names["ode"], []).append(paired_l2(s[:k_ode][io], ref.ode[io]))
    return {f"{k}_se": float(np.std(v, ddof=1)) for k, v in reps.items()}


def data_samples(data_dist, samples: int, seed: int) -> tuple[torch.Generator, torch.Tensor, torch.Tensor]:
    """(the generator, drawn on next for the noise; the data sample; a second, independent one for the floor), each
    `samples` rows, float64, flattened: the draws every in-memory evaluation starts from."""
    g = torch.Generator().manual_seed(seed)
    data = _flat(data_dist.sample(samples, g, dtype=torch.float64))
    return g, data, _flat(data_dist.sample(samples, g, dtype=torch.float64))


def cycled(prompts: torch.Tensor, rows: int) -> torch.Tensor:
    """Row i's label: prompts[i mod len(prompts)] (eval.prompts: every prompt in turn, each row its own noise)."""
    return prompts.long()[torch.arange(rows) % len(prompts)]


def make_eval_ref(
    data_dist,
    teacher,
    sched,
    samples: int,
    ode_steps: int,
    seed: int,
    extractor: str = "identity",
    labelled: bool = False,
    features=None,
    kid_subsets: int = 0,
    ode_samples: int | None = None,
    reference: Reference | None = None,
    prompts: torch.Tensor | None = None,
) -> EvalRef:
    """Data sample, fixed noise and the teacher's `ode_steps`-step DDIM from it; `extractor` names the metrics
    ("identity" for vectors, "pixel" for images: Frechet distances of the flattened samples; "classifier",
    "inception": of the features that `features(rows) -> (n, D)` computes, kept as ref.feats).
    labelled (class-conditional teacher, labelled data): each noise row also gets a fixed class label, drawn
    (after the noise, same seed) as the label of a random data row, i.e. from the data's label distribution,
    so conditional samples are compared with the unconditional data; with `prompts` (caption ids of eval.prompts)
    row i gets prompts[i mod len] instead. The ODE is the conditional teacher's, solved for the first
    `ode_samples` rows only (default all; 0: none).
    The floor: the metrics of a second, independent data sample (KID's standard error left out)."""
    g, data, other = data_samples(data_dist, samples, seed)
    noise = torch.randn((samples, *data_dist.shape), generator=g, dtype=torch.float32)
    labels = data_dist.sample_labelled(samples, g)[1] if labelled and prompts is None else None
    labels = cycled(prompts, samples) if prompts is not None else labels
    k = samples if ode_samples is None else min(ode_samples, samples)
    ode = None
    if k:
        y = None if labels is None else labels[:k]
        ode = _flat(ddim_sample(conditioned(teacher, y), sched, noise[:k].double(), ode_steps)[0])
    feats = None if features is None else features(data)
    ref = EvalRef(data, noise, ode, {}, labels, feats, reference)
    names = ref.names(extractor)
    floor = evaluate(other, ref, names, None if features is None else features(other), kid_subsets)
    ref.floor = {k: v for k, v in floor.items() if not k.endswith("_se")} | ({names["ode"]: 0.0} if k else {})
    return ref


def metric_rows(values: dict[str, float], names: dict[str, str]) -> list[dict]:
    """{metric, value} (+ se where "<metric>_se" is among the values) for each metric of `names` that has a value."""
    return [
        {"metric": m, "value": values[m]} | ({"se": values[f"{m}_se"]} if f"{m}_se" in values else {})
        for m in names.values()
        if m in values
    ]


def teacher_curve(
    teacher,
    sched,
    data_dist,
    ref: EvalRef,
    steps: list[int],
    eta: float = 0.75,
    seed: int = 0,
    extractor: str = "identity",
    bootstrap: int = 0,
    features=None,
    kid_subsets: int = 0,
    checks: LabelChecks | None = None,
    keep: int = 0,
) -> tuple[list[dict], dict]:
    """Teacher DDIM and aDDIM (empirical xvar table, eta = 0.75) at each step count: (rows of
    {method, steps, nfe, metric, value} (+ se: KID's own, the bootstrap's for the others when bootstrap > 0),
    {"<method>_<steps>": the features of the first `keep` rows (eval.keep_rows; empty when 0)}).
    With ref.labels the teacher is conditioned on them (unguided), its xvar table on the table rows' own labels."""
    from multistep.metrics.paired import kept_rows

    names = ref.names(extractor, ref.labels is not None) | (checks.names(ref.rows) if checks else {})
    rows, kept = [], {}
    for label, n, x, nfe in teacher_points(teacher, sched, data_dist, ref.noise.double(), steps, ref.labels, eta, seed):
        feats = None if features is None else features(x)
        values = evaluate(x, ref, names, feats, kid_subsets, checks)
        if bootstrap:
            values |= bootstrap_se(x, ref, names, bootstrap, seed, feats)
        rows += [{"method": label, "student_steps": n, "nfe": nfe} | r for r in metric_rows(values, names)]
        if keep:
            kept[f"{label}_{n}"] = kept_rows(x if feats is None else feats, keep)
    return rows, kept


def repeated_teacher_curve(curve, teacher, sched, data_dist, ref, steps, repeats: int, seed: int, keep: int = 0, **kw):
    """`curve` (teacher_curve or streaming.stream_teacher_curve) from the noise seeds of eval.repeats, as a student's
    point (sweep.worker.final_points): each value the mean over the runs that have its row; rows only the first has
    (the paired ODE error), its se and its kept rows stay the first's."""
    runs = [
        curve(teacher, sched, data_dist, ref.with_noise_seed(r, seed), steps, keep=keep if r == 0 else 0, **kw)
        for r in range(repeats)
    ]
    return mean_over_repeats([rows for rows, _ in runs]), runs[0][1]


def mean_over_repeats(runs: list[list[dict]]) -> list[dict]:
    """The rows of runs[0], each value the mean over the runs that have the same (method, student_steps, metric)."""
    values: dict[tuple, list[float]] = {}
    for rows in runs:
        for r in rows:
            values.setdefault((r["method"], r["student_steps"], r["metric"]), []).append(r["value"])
    return [r | {"value": float(np.mean(values[(r["method"], r["student_steps"], r["metric"])]))} for r in runs[0]]


def teacher_samplers(
    teacher, sched, data_dist, steps: list[int], labelled: bool = False, eta: float = 0.75, seed: int = 0
):
    """[(teacher_ddim | teacher_addim, steps, make(y) -> sampler(noise) -> (samples, nfe))]: the teacher's DDIM and
    aDDIM (xvar table from 2048 data rows drawn with `seed`, eta; conditioned on the table rows' own labels when
    labelled) at each step count; make(y) conditions the teacher on the labels y of the noise rows (unguided)."""
    g = torch.Generator().manual_seed(seed)
    if not labelled:
        table_data, table_y = data_dist.sample(2048, g, dtype=torch.float64), None
    else:
        table_data, table_y = data_dist.sample_labelled(2048, g, dtype=torch.float64)
    out = []
    for n in steps:
        for label, xv in (
            ("teacher_ddim", None),
            ("teacher_addim", xvar_table(conditioned(teacher, table_y), sched, table_data, n, eta, g)),
        ):
            out.append(
                (
                    label,
                    n,
                    lambda y, n=n, xv=xv: lambda noise: ddim_sample(conditioned(teacher, y), sched, noise, n, xvar=xv),
                )
            )
    return out


def teacher_points(
    teacher,
    sched,
    data_dist,
    noise: torch.Tensor,
    steps: list[int],
    labels: torch.Tensor | None = None,
    eta: float = 0.75,
    seed: int = 0,
):
    """Yields (teacher_ddim | teacher_addim, steps, samples, nfe): `teacher_samplers` from the fixed `noise`."""
    for label, n, make in teacher_samplers(teacher, sched, data_dist, steps, labels is not None, eta, seed):
        x, nfe = make(labels)(noise)
        yield label, n, x, nfe


def fixed_draws(
    data_dist, samples: int, seed: int, extractor: str = "identity", features=None, kid_subsets: int = 0, reference=None
):
    """The draws behind a teacher's own curve (teacher runs and `multistep eval` share them, so their numbers
    agree): (fixed float64 noise, metric names, dist(samples) -> {fd, swd (, kid, kid_se)} to a data sample,
    the same distances of a second data sample: the floor)."""
    g, data, other = data_samples(data_dist, samples, seed)
    noise = torch.randn((samples, *data_dist.shape), generator=g, dtype=torch.float64)
    names = metric_names(samples, extractor)
    feats = (lambda x: None) if features is None else features
    ref = EvalRef(data, noise, None, {}, None, feats(data), reference)

    def dist(s) -> dict[str, float]:
        return evaluate(s, ref, names, feats(s), kid_subsets)

    return noise, names, dist, {k: v for k, v in dist(other).items() if not k.endswith("_se")}


def ddim_curve(
    teacher, sched, data_dist, samples: int, steps: list[int], seed: int, extractor: str = "identity", device="cpu"
) -> tuple[list[dict], dict]:
    """A trained teacher's own DDIM curve from fixed noise: rows {steps, metric, value} of the Frechet and
    sliced Wasserstein distances to a data sample, and the same distances of a second data sample (the floor)."""
    noise, _, dist, floor = fixed_draws(data_dist, samples, seed, extractor)
    rows = []
    for n in steps:
        x, _ = ddim_sample(teacher, sched, noise.to(device), n)
        rows += [{"steps": n, "metric": k, "value": v} for k, v in dist(x).items()]
    return rows, floor
