"""Kernel Inception Distance (unbiased MMD^2, polynomial kernel) with its standard error, and a bootstrap CI for FD.

k(x, y) = (x.y / d + 1)^3.  Per subset of m rows from each set (Binkowski et al. 2018; clean-fid,
torch-fidelity):
  MMD^2_u = sum_{i!=j} [k(x_i,x_j) + k(y_i,y_j)] / (m (m-1)) - 2 sum_{i,j} k(x_i,y_j) / m^2,
which is unbiased: its expectation is 0 when both sets come from one distribution.
KID is the mean over subsets. Subsets are disjoint while they fit (num_subsets * m <= n), so their
estimates are independent and SE = std / sqrt(num_subsets). Otherwise they are drawn at random and
overlap; then only about n / m of them are independent, and SE = std / sqrt(min(num_subsets, n / m)).
"""

from __future__ import annotations

import numpy as np

from multistep.metrics.frechet import frechet_distance, gaussian_stats


def _f64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, np.float64)
    return x.reshape(len(x), -1)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between equal-size sets x, y (m, d) under the cubic polynomial kernel."""
    m, d = x.shape
    z = np.concatenate([x, y])
    k = z @ z.T
    k /= d
    k += 1
    k *= k * k  # the (2m, 2m) kernel matrix [[Kxx, Kxy], [Kyx, Kyy]]
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    same = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(same - 2.0 * kxy.sum() / m**2)


def subset_size(n_a: int, n_b: int, num_subsets: int) -> int:
    """The evaluation's KID subset size: disjoint subsets while they fit, at most 1,000 rows, at least 2."""
    return max(2, min(1000, n_a // num_subsets, n_b // num_subsets))


def kid_subsets(n_a: int, n_b: int, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0):
    """(subset size m, [(rows of a, rows of b)] per subset, disjoint?) of `kid`: which rows each estimate uses.
    A streaming evaluation keeps only these rows' features."""
    n = min(n_a, n_b)
    m = min(subset_size, n)
    if m < 2 or num_subsets < 1:
        raise ValueError(f"KID needs subsets of >= 2 rows and >= 1 subset (have n={n}, subsets={num_subsets})")
    rng = np.random.default_rng(seed)
    disjoint = num_subsets * m <= n
    if disjoint:
        pa, pb = rng.permutation(n_a), rng.permutation(n_b)
        idx = [(pa[i * m : (i + 1) * m], pb[i * m : (i + 1) * m]) for i in range(num_subsets)]
    else:
        idx = [(rng.choice(n_a, m, replace=False), rng.choice(n_b, m, replace=False)) for _ in range(num_subsets)]
    return m, idx, disjoint


def kid_of_subsets(subsets_a, subsets_b, n: int, m: int, disjoint: bool) -> tuple[float, float]:
    """(KID, standard error) from the rows of each subset (lists of (m, D) arrays), n = min of the set sizes."""
    vals = np.array([mmd2_unbiased(_f64(x), _f64(y)) for x, y in zip(subsets_a, subsets_b)])
    k = len(vals)
    k_eff = k if disjoint else min(k, n / m)
    se = float(vals.std(ddof=1) / np.sqrt(k_eff)) if k > 1 else float("nan")
    return float(vals.mean()), se


def kid(feats_a, feats_b, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(KID, standard error) between two (n, D) feature sets."""
    a, b = _f64(feats_a), _f64(feats_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    m, idx, disjoint = kid_subsets(len(a), len(b), num_subsets, subset_size, seed)
    return kid_of_subsets([a[i] for i, _ in idx], [b[j] for _, j in idx], min(len(a), len(b)), m, disjoint)


def bootstrap_fd_ci(feats_a, feats_b, n_boot: int = 200, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile (1 - alpha) interval of the Fréchet distance, resampling the rows of both feature sets."""
    a, b = _f64(feats_a), _f64(feats_b)
    if not 0 < alpha < 1 or n_boot < 2:
        raise ValueError(f"need 0 < alpha < 1 and n_boot >= 2 (got alpha={alpha}, n_boot={n_boot})")
    rng = np.random.default_rng(seed)
    fds = np.empty(n_boot)
    for k in range(n_boot):
        ra, rb = a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))]
        fds[k] = frechet_distance(*gaussian_stats(ra), *gaussian_stats(rb))
    low, high = np.quantile(fds, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
