"""Diversity next to quality: k-NN precision and recall (Kynkaenniemi et al. 2019) and, for mixture data, exact
mode coverage; their paired bootstrap intervals.

Precision: the share of generated rows inside the real manifold (the union of balls around each real row with
radius its distance to its k-th nearest real neighbour); recall: the share of real rows inside the generated
manifold. Both are measured on the first `rows` rows of each set (the k-NN graph is quadratic in the rows).

Mode coverage (mixture data, the samples themselves as features): each generated row is assigned to the component
of highest posterior probability under the data's own mixture; a component's share is the fraction of rows
assigned to it. `modes_missed`: components whose share is below half their weight; `mode_tv`: the total variation
0.5 sum_k |share_k - weight_k| (0: the mixture's own proportions).

Intervals: the hierarchical bootstrap of metrics/paired.py (training seeds, generated rows paired by noise row,
reference rows), with each set's k-NN manifold held fixed (computed once on the full rows): a resample re-weights
which rows count, not which balls exist, since duplicated rows would shrink k-NN radii to 0. Coverage needs no such
approximation (shares are means of per-row assignments).
"""

from __future__ import annotations

import numpy as np
import torch

from multistep.metrics.paired import Difference, Estimate, _bootstrap

K_NEAREST = 3  # Kynkaenniemi et al.'s default
CHUNK = 2048  # rows per distance block


def _rows(x) -> torch.Tensor:
    x = x.detach().cpu() if hasattr(x, "detach") else torch.from_numpy(np.array(x))  # a copy: the rows may be read-only
    return x.reshape(len(x), -1).double()


def knn_radii(x, k: int = K_NEAREST) -> np.ndarray:
    """Each row's distance to its k-th nearest other row (float64)."""
    x = _rows(x)
    out = torch.empty(len(x), dtype=torch.float64)
    for i in range(0, len(x), CHUNK):
        d = torch.cdist(x[i : i + CHUNK], x)
        out[i : i + CHUNK] = d.kthvalue(k + 1, dim=1).values  # the 1st is the row itself (distance 0)
    return out.numpy()


def covered(points, centres, radii: np.ndarray) -> np.ndarray:
    """For each point: is it inside some ball (centre_j, radius_j)? (bool)"""
    p, c, r = _rows(points), _rows(centres), torch.from_numpy(radii)
    hit = torch.zeros(len(p), dtype=torch.bool)
    for i in range(0, len(p), CHUNK):
        hit[i : i + CHUNK] = (torch.cdist(p[i : i + CHUNK], c) <= r[None]).any(1)
    return hit.numpy()


def manifold_hits(fake, real, k: int = K_NEAREST) -> tuple[np.ndarray, np.ndarray]:
    """(precision hits: one per generated row, recall hits: one per real row) as floats 0 / 1."""
    prec = covered(fake, real, knn_radii(real, k))
    rec = covered(real, fake, knn_radii(fake, k))
    return prec.astype(np.float64), rec.astype(np.float64)


def mixture_assign(gmm, x) -> np.ndarray:
    """The component of highest posterior probability of each row under the mixture itself (int)."""
    from multistep.diffusion.schedules import make_schedule
    from multistep.nets.analytic import MixtureDenoiser

    sched = make_schedule("cosine")
    x = _rows(x)
    t = torch.zeros(len(x), dtype=torch.float64)  # z_0 = x (alpha 1, sigma ~ 0): the data's own densities
    r = MixtureDenoiser(gmm, sched)._posterior(x, t)[0]
    return r.argmax(1).numpy()


def coverage(assign: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """{modes_missed, mode_tv} of component assignments against the mixture weights."""
    share = np.bincount(assign, minlength=len(weights)) / max(len(assign), 1)
    return {"modes_missed": float((share < 0.5 * weights).sum()), "mode_tv": float(0.5 * np.abs(share - weights).sum())}


def diversity_names(rows: int, mixture: bool) -> dict[str, str]:
    """Logged names: precision_<rows>, recall_<rows> (+ modes_missed_<rows>, mode_tv_<rows> for mixture data)."""
    from multistep.metrics.evaluate import count_label

    c = count_label(rows)
    names = {"precision": f"precision_{c}", "recall": f"recall_{c}"}
    return names | ({"modes_missed": f"modes_missed_{c}", "mode_tv": f"mode_tv_{c}"} if mixture else {})


def scores_modes(tc) -> bool:
    """Whether a trial config's points get mode coverage: Gaussian-mixture data scored in identity features."""
    from multistep.data import data_kind

    return data_kind(tc.data).mixture and tc.feature_space == "identity"


def diversity_rows(ev) -> int:
    """The rows an evaluation config measures diversity on (0: off)."""
    return min(ev.diversity_rows, ev.samples)


def diversity(fake, real, names: dict[str, str], gmm=None, k: int = K_NEAREST, n_boot: int = 0) -> dict[str, float]:
    """The diversity metrics of generated rows against real rows (the same count), under `names`; with n_boot also
    "<name>_se": their bootstrap standard errors over resampled rows (the manifolds held fixed, as in the intervals)."""
    n = min(len(fake), len(real))
    mix = gmm if "modes_missed" in names else None
    rows = _per_row(fake[:n], real[:n], k, mix)
    w = None if mix is None else mix.weights.numpy()
    every = np.arange(n)
    out = {names[m]: _value(m, rows, every, every, w) for m in metrics_of(mix)}
    if n_boot:
        rng = np.random.default_rng(0)
        draws = [(rng.integers(0, n, n), rng.integers(0, n, n)) for _ in range(n_boot)]
        for m in metrics_of(mix):
            out[f"{names[m]}_se"] = float(np.std([_value(m, rows, i, j, w) for i, j in draws], ddof=1))
    return out


# -- intervals (multistep claims) -------------------------------------------------------------------
def _per_row(x, ref: np.ndarray, k: int, gmm) -> dict[str, np.ndarray]:
    prec, rec = manifold_hits(x, ref, k)
    return {"prec": prec, "rec": rec} | ({"assign": mixture_assign(gmm, x)} if gmm is not None else {})


def _value(metric: str, rows: dict, i: np.ndarray, j: np.ndarray, weights) -> float:
    if metric == "precision":
        return float(rows["prec"][i].mean())
    if metric == "recall":
        return float(rows["rec"][j].mean())
    return coverage(rows["assign"][i], weights)[metric]


def metrics_of(gmm) -> list[str]:
    return ["precision", "recall"] + (["modes_missed", "mode_tv"] if gmm is not None else [])


def diversity_intervals(a: list, ref: np.ndarray, gmm=None, k: int = K_NEAREST, n_boot: int = 200, seed: int = 0):
    """{metric: Estimate} of one point (a: its rows, one array per training seed; all cut to len(ref))."""
    n = len(ref)
    per = [_per_row(x[:n], ref, k, gmm) for x in a]
    w = None if gmm is None else gmm.weights.numpy()
    out = {}
    for m in metrics_of(gmm):
        fn = lambda s, i, j, m=m: _value(m, per[s], i, j, w)
        out[m] = Estimate(*_bootstrap(fn, len(per), n, n, n_boot, seed, 0.95), 0.95)
    return out


def paired_diversity(a: list, b: list, ref: np.ndarray, gmm=None, k: int = K_NEAREST, n_boot: int = 200, seed: int = 0):
    """{metric: Difference} of a minus b: the same seeds, generated rows (paired by noise row) and reference rows
    in every resample."""
    n = len(ref)
    pa, pb = ([_per_row(x[:n], ref, k, gmm) for x in s] for s in (a, b))
    w = None if gmm is None else gmm.weights.numpy()
    out = {}
    for m in metrics_of(gmm):
        fn = lambda s, i, j, m=m: _value(m, pa[s], i, j, w) - _value(m, pb[s], i, j, w)
        out[m] = Difference(*_bootstrap(fn, len(pa), n, n, n_boot, seed, 0.95), 0.95)
    return out
