"""Streaming evaluation (`eval.stream`): the same metrics as metrics/evaluate.py with memory bounded in N.

Nothing of size N x image is kept or shipped. Every draw is made by chunks of CHUNK rows from generators seeded by
(seed, stream, chunk), so row i of the noise, the data sample, the floor's second sample and the labels can be
regenerated anywhere, in any batch size. What is kept:
  reference   float64 mean and covariance of the data features (or eval.reference's), the data's SWD
              projections (N x 256), the reference features at KID's subset rows, the teacher's ODE solution for
              the first ode_samples rows, the labels (N ints), and an in-memory head of the first rows for proxies;
  per point   running feature sums (StatsAccumulator), the samples' SWD projections, KID's rows, the first
              ode_samples samples, the classifier's misses, the first 64 samples (for a grid).
`StreamPoint.result()` equals `evaluate()` on the same draws held in memory (tests/unit/metrics/test_streaming.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from multistep.metrics.frechet import frechet_distance
from multistep.metrics.kid import kid_of_subsets, kid_subsets, subset_size
from multistep.metrics.reference import Reference
from multistep.metrics.stats import StatsAccumulator

CHUNK = 256  # rows per draw: row i depends only on (seed, stream, i // CHUNK)
PROJECTIONS = 256  # sliced Wasserstein directions (distances.sliced_wasserstein's default)
STREAM_NOISE, STREAM_DATA, STREAM_OTHER, STREAM_LABELS = 0, 1, 2, 3
GRID_ROWS = 64


def _gen(seed: int, stream: int, chunk: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 4 + stream) * 1_000_003 + chunk) % (2**63))


def rows(draw, i0: int, i1: int, chunk: int = CHUNK):
    """Rows [i0, i1) of the stream whose chunk c is draw(c) (CHUNK rows)."""
    parts = [draw(c) for c in range(i0 // chunk, (i1 - 1) // chunk + 1)] if i1 > i0 else []
    if not parts:
        return None
    cat = torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)
    start = (i0 // chunk) * chunk
    return cat[i0 - start : i1 - start]


def noise_rows(seed: int, shape: tuple, i0: int, i1: int) -> torch.Tensor:
    return rows(lambda c: torch.randn((CHUNK, *shape), generator=_gen(seed, STREAM_NOISE, c)), i0, i1)


def data_rows(data_dist, seed: int, stream: int, i0: int, i1: int) -> np.ndarray:
    draw = lambda c: _flat(data_dist.sample(CHUNK, _gen(seed, stream, c), dtype=torch.float64))
    return rows(draw, i0, i1)


def label_rows(data_dist, seed: int, i0: int, i1: int) -> torch.Tensor:
    return rows(lambda c: data_dist.sample_labelled(CHUNK, _gen(seed, STREAM_LABELS, c))[1], i0, i1)


def _flat(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return x.reshape(len(x), -1).astype(np.float64)


def swd_directions(d: int, projections: int = PROJECTIONS, seed: int = 0) -> np.ndarray:
    """The directions of distances.sliced_wasserstein (same seed, same draws)."""
    theta = np.random.default_rng(seed).standard_normal((d, projections))
    return theta / np.linalg.norm(theta, axis=0, keepdims=True)


@dataclass
class StreamRef:
    """The reference of a streaming evaluation; `noise(i0, i1)` regenerates any rows of the fixed noise."""

    n: int
    shape: tuple
    seed: int
    mu: np.ndarray  # (D,) of the data features (or eval.reference's)
    sigma: np.ndarray
    data_proj: np.ndarray  # (n, PROJECTIONS) sorted per column: the data sample's SWD projections
    kid: dict | None  # {"m", "disjoint", "rows_a": [[row, ...] per subset], "ref": [(m, D) per subset]}; None: no KID
    ode: np.ndarray | None  # (k, d) the teacher's ODE solution from noise rows 0 .. k - 1
    labels: torch.Tensor | None  # (n,) labels of the noise rows (class-conditional), else None
    floor: dict
    head_ref: object = None  # an in-memory EvalRef of the first rows (proxies)

    noise_seed: int | None = None  # eval.repeats: the noise of repeat r is drawn with seed + 1000 r

    def noise(self, i0: int, i1: int) -> torch.Tensor:
        return noise_rows(self.seed if self.noise_seed is None else self.noise_seed, self.shape, i0, i1)

    def with_noise_seed(self, r: int, seed: int = 0) -> StreamRef:
        """Repeat r of an evaluation: r = 0 is this reference; others draw their noise with seed + 1000 r and have no
        paired ODE rows."""
        if r == 0:
            return self
        return dataclasses.replace(self, noise_seed=self.seed + 1000 * r, ode=None)

    @property
    def sample_shape(self) -> tuple:
        return self.shape

    @property
    def rows(self) -> int:
        """How many rows a proxy can take from head(): the kept head."""
        return len(self.head_ref.data)

    def head(self, n: int):
        """An in-memory EvalRef of the first n rows (n <= the kept head): the proxy's reference."""
        if n > len(self.head_ref.data):
            raise ValueError(f"the streaming reference keeps {len(self.head_ref.data)} head rows, not {n}")
        return self.head_ref.head(n)

    def to_dict(self) -> dict:
        return {
            "stream": True,
            "n": self.n,
            "shape": list(self.shape),
            "seed": self.seed,
            "mu": self.mu,
            "sigma": self.sigma,
            "data_proj": self.data_proj,
            "kid": self.kid,
            "ode": self.ode,
            "labels": None if self.labels is None else self.labels.numpy(),
            "floor": self.floor,
            "head": self.head_ref.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> StreamRef:
        from multistep.metrics.evaluate import EvalRef

        y = d["labels"]
        return cls(
            int(d["n"]),
            tuple(d["shape"]),
            int(d["seed"]),
            np.asarray(d["mu"]),
            np.asarray(d["sigma"]),
            np.asarray(d["data_proj"]),
            d["kid"],
            None if d["ode"] is None else np.asarray(d["ode"]),
            None if y is None else torch.as_tensor(np.asarray(y), dtype=torch.long),
            dict(d["floor"]),
            EvalRef.from_dict(d["head"]),
        )

    def names(self, extractor: str, labelled: bool = False) -> dict[str, str]:
        from multistep.metrics.evaluate import metric_names

        return metric_names(self.n, extractor, labelled, None if self.ode is None else len(self.ode))


class _Fold:
    """What a streamed sample set keeps per row, filled in place: its SWD projections (n x PROJECTIONS) and the rows
    of KID's subsets (one (m, D) array per subset; a row may stand in several when subsets overlap)."""

    def __init__(self, n: int, subsets: list[list[int]] | None):
        self.n, self.proj, self.theta, self.kid = n, None, None, None
        self.where: dict[int, list[tuple[int, int]]] = {}
        for i, rows_ in enumerate(subsets or []):
            for j, r in enumerate(rows_):
                self.where.setdefault(r, []).append((i, j))
        self.sizes = [len(r) for r in subsets or []]

    def add(self, i0: int, s: np.ndarray, f: np.ndarray) -> None:
        if self.proj is None:
            self.theta, self.proj = swd_directions(s.shape[1]), np.empty((self.n, PROJECTIONS))
        self.proj[i0 : i0 + len(s)] = s @ self.theta
        if self.where and self.kid is None:
            self.kid = [np.empty((m, f.shape[1])) for m in self.sizes]
        for j in range(len(s)):
            for i, pos in self.where.get(i0 + j, ()):
                self.kid[i][pos] = f[j]

    def sorted_proj(self) -> np.ndarray:
        self.proj.sort(axis=0)  # in place: W2 of 1-D projections compares sorted values
        return self.proj


class StreamPoint:
    """One curve point's samples folded in batch by batch (any batch size, rows in order)."""

    def __init__(self, ref: StreamRef, names: dict[str, str], checks=None, keep: int = 0):
        self.ref, self.names, self.checks, self.keep = ref, names, checks, keep
        self.acc, self.ode_norms, self.grid, self.kept = StatsAccumulator(), [], [], []
        self.fold = _Fold(ref.n, None if ref.kid is None else ref.kid["rows_a"])
        self.checked: dict[str, list[np.ndarray]] = {}  # LabelChecks' per-row values, batch by batch
        self.seen = 0

    def update(self, x, feats=None) -> None:
        i0 = self.seen
        s = _flat(x)
        f = s if feats is None else np.asarray(feats, np.float64)
        self.acc.update(f)
        self.fold.add(i0, s, f)
        k = 0 if self.ref.ode is None else len(self.ref.ode)
        if i0 < k:  # the paired distances to the teacher's ODE rows, folded in as they come
            self.ode_norms.append(np.linalg.norm(s[: k - i0] - self.ref.ode[i0 : i0 + len(s)], axis=1))
        if i0 < self.keep:  # the feature rows `multistep claims` resamples (float32)
            self.kept.append(f[: self.keep - i0].astype(np.float32))
        if isinstance(x, torch.Tensor) and sum(len(g) for g in self.grid) < GRID_ROWS:
            self.grid.append(x.detach().cpu()[:GRID_ROWS].clone())
        if self.checks is not None and self.ref.labels is not None:
            for name, v in self.checks.per_row(x, f, self.ref.labels[i0 : i0 + len(s)], self.names).items():
                self.checked.setdefault(name, []).append(v)
        self.seen += len(s)

    def result(self) -> dict[str, float]:
        ref, names = self.ref, self.names
        if self.seen != ref.n:
            raise ValueError(f"a streaming point saw {self.seen} of its {ref.n} rows")
        mu, sigma = self.acc.mean_cov()
        proj = self.fold.sorted_proj()
        out = {
            names["fd"]: frechet_distance(mu, sigma, ref.mu, ref.sigma),
            names["swd"]: float(np.sqrt(((proj - ref.data_proj) ** 2).mean())),
        }
        if ref.ode is not None:
            out[names["ode"]] = float(np.concatenate(self.ode_norms).mean())  # = distances.paired_l2
        if self.checked:
            from multistep.metrics.evaluate import mean_with_se

            for name, parts in self.checked.items():
                out |= mean_with_se(name, np.concatenate(parts))
        if ref.kid is not None:
            value, se = kid_of_subsets(self.fold.kid, ref.kid["ref"], ref.kid["n"], ref.kid["m"], ref.kid["disjoint"])
            out |= {names["kid"]: value, f"{names['kid']}_se": se}
        return out

    def samples_for_grid(self) -> torch.Tensor:
        return torch.cat(self.grid)[:GRID_ROWS]

    def kept_rows(self) -> np.ndarray | None:
        return np.concatenate(self.kept) if self.kept else None


def _kid_plan(n: int, n_ref: int, kid_subsets_: int) -> dict | None:
    """KID's subsets as evaluate() draws them (subset size min(1000, n / S, n_ref / S)), with the reference's rows."""
    if not kid_subsets_:
        return None
    m, idx, disjoint = kid_subsets(n, n_ref, kid_subsets_, subset_size(n, n_ref, kid_subsets_))
    return {
        "m": m,
        "n": min(n, n_ref),
        "disjoint": disjoint,
        "rows_a": [list(map(int, i)) for i, _ in idx],
        "ref_rows": [list(map(int, j)) for _, j in idx],
    }


def make_stream_ref(
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
    batch: int = CHUNK,
    head: int = 1000,
    prompts: torch.Tensor | None = None,
) -> StreamRef:
    """The streaming counterpart of evaluate.make_eval_ref, in batches of `batch` rows."""
    from multistep.diffusion.samplers import ddim_sample
    from multistep.methods.base import conditioned
    from multistep.metrics.evaluate import EvalRef, cycled, metric_names

    n, shape = samples, tuple(data_dist.shape)
    feats_of = (lambda x: x) if features is None else features
    labels = label_rows(data_dist, seed, 0, n) if labelled and prompts is None else None
    labels = cycled(prompts, n) if prompts is not None else labels
    acc = StatsAccumulator()
    stats_only = reference is not None and reference.features is None  # KID is skipped
    n_ref = n if reference is None or stats_only else len(reference.features)
    plan = None if stats_only else _kid_plan(n, n_ref, kid_subsets)
    fold = _Fold(n, None if plan is None or reference is not None else plan["ref_rows"])
    head_rows = {"data": [], "feats": []}
    for i0 in range(0, n, batch):
        x = data_rows(data_dist, seed, STREAM_DATA, i0, min(n, i0 + batch))
        f = np.asarray(feats_of(x), np.float64)
        acc.update(f)
        fold.add(i0, x, f)
        if i0 < head:
            head_rows["data"].append(x[: head - i0].copy())
            head_rows["feats"].append(f[: head - i0].copy())
    mu, sigma = acc.mean_cov() if reference is None else (reference.mu, reference.sigma)
    kid = None
    if plan is not None:
        ref_rows = fold.kid if reference is None else [reference.features[r] for r in plan["ref_rows"]]
        kid = plan | {"ref": ref_rows}
    k = n if ode_samples is None else min(ode_samples, n)
    ode = None
    if k:
        ode = np.empty((k, int(np.prod(shape))))  # filled in place: no second copy of the ODE rows
        for i0 in range(0, k, batch):
            i1 = min(k, i0 + batch)
            y = None if labels is None else labels[i0:i1]
            z = noise_rows(seed, shape, i0, i1).double()
            ode[i0:i1] = _flat(ddim_sample(conditioned(teacher, y), sched, z, ode_steps)[0])
    ref = StreamRef(n, shape, seed, mu, sigma, fold.sorted_proj(), kid, ode, labels, {})
    names = metric_names(n, extractor, False, None if ode is None else k)
    floor = StreamPoint(ref, names)
    for i0 in range(0, n, batch):
        other = data_rows(data_dist, seed, STREAM_OTHER, i0, min(n, i0 + batch))
        floor.update(other, None if features is None else features(other))
    ref.floor = {key: v for key, v in floor.result().items() if not key.endswith("_se")} | (
        {names["ode"]: 0.0} if k else {}
    )
    h = min(head, n)
    ref.head_ref = EvalRef(
        np.concatenate(head_rows["data"])[:h],
        noise_rows(seed, shape, 0, h),
        None if ode is None else ode[:h],
        {},
        None if labels is None else labels[:h],
        None if features is None else np.concatenate(head_rows["feats"])[:h],
        reference,
    )
    return ref


def stream_points(
    evaluations,
    ref: StreamRef,
    names: dict,
    batch_size: int,
    device="cpu",
    features=None,
    checks=None,
    noise_dtype=None,
    keep: int = 0,
) -> list:
    """The streaming counterpart of evaluate.sample_points + evaluate: [(label, steps, StreamPoint, nfe)] of every
    point of a method's curve, sampled from the reference's noise in batches of `batch_size` rows on `device`."""
    points: dict = {}
    with torch.no_grad():
        for i0 in range(0, ref.n, batch_size):
            i1 = min(ref.n, i0 + batch_size)
            noise = ref.noise(i0, i1) if noise_dtype is None else ref.noise(i0, i1).to(noise_dtype)
            y = None if ref.labels is None else ref.labels[i0:i1].to(device)
            for label, steps, sampler in evaluations(y, i0):
                x, nfe = sampler(noise.to(device))
                x = x.cpu()
                if (label, steps) not in points:
                    points[(label, steps)] = (StreamPoint(ref, names, checks, keep), nfe)
                points[(label, steps)][0].update(x, None if features is None else features(x))
    return [(label, steps, p, nfe) for (label, steps), (p, nfe) in points.items()]


def stream_teacher_curve(
    teacher, sched, data_dist, ref: StreamRef, steps: list[int], eta: float = 0.75, seed: int = 0,
    extractor: str = "identity", bootstrap: int = 0, features=None, kid_subsets: int = 0, checks=None,
    batch_size: int = CHUNK, keep: int = 0,
) -> tuple[list[dict], dict]:  # fmt: skip
    """evaluate.teacher_curve, streamed (the teacher from float64 noise, as there; no bootstrap), sampled in batches
    of `batch_size` rows (eval.batch_size: the same figures for any batch, and fewer, larger teacher calls); the
    kept rows as there."""
    from multistep.metrics.evaluate import metric_rows, teacher_samplers

    names = ref.names(extractor, ref.labels is not None) | (checks.names(ref.rows) if checks else {})
    samplers = teacher_samplers(teacher, sched, data_dist, steps, ref.labels is not None, eta, seed)
    evaluations = lambda y, i0: [(label, n, make(y)) for label, n, make in samplers]
    points = stream_points(
        evaluations, ref, names, batch_size, features=features, checks=checks, noise_dtype=torch.float64, keep=keep
    )
    rows = [
        {"method": label, "student_steps": n, "nfe": nfe} | r
        for label, n, point, nfe in points
        for r in metric_rows(point.result(), names)
    ]
    return rows, ({f"{label}_{n}": point.kept_rows() for label, n, point, _ in points} if keep else {})


def load_ref(d: dict):
    """An EvalRef or a StreamRef from its to_dict form."""
    from multistep.metrics.evaluate import EvalRef

    return StreamRef.from_dict(d) if d.get("stream") else EvalRef.from_dict(d)
