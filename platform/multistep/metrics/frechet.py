"""Fréchet distance between Gaussians, exact and float64, without scipy.linalg.sqrtm.

FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr( (S1 S2)^{1/2} )

Factor S1 = B B^T with a pivoted Cholesky decomposition (LAPACK ?pstrf: B is d x r, r = rank S1,
so rank-deficient covariances are exact, not regularised). S1 S2 = B B^T S2 has the same non-zero
eigenvalues as B^T S2 B, which is symmetric positive semi-definite; one symmetric eigenvalue solve
gives them real and non-negative, so tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i): no complex numbers,
no NaN, and no Schur form of a non-symmetric matrix (what makes sqrtm slow and, on singular
products, only ~sqrt(eps) accurate).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import blas, lapack


def trace_sqrt_product(sigma1, sigma2) -> float:
    """tr((S1 S2)^{1/2}) for symmetric PSD S1, S2 (float64).

    Pivoted Cholesky P^T S1 P = L L^T (it stops at rank r once pivots fall below d * eps * max diag; the
    columns past r are zeroed), then M = L^T (P^T S2 P) L by two triangular products (half a gemm's work
    each); M's non-zero block is M[:r, :r], whose eigenvalues are those of S1 S2.
    """
    if not np.any(np.diag(sigma1) > 0):
        return 0.0
    c, piv, r, info = lapack.dpstrf(sigma1, lower=1)
    if info < 0:
        raise ValueError(f"dpstrf: illegal argument {-info}")
    lo = np.triu(c.T).T  # tril(c), Fortran-ordered for BLAS without a second copy
    lo[:, r:] = 0.0
    p = piv - 1
    s2p = np.asfortranarray(sigma2[np.ix_(p, p)])
    x = blas.dtrmm(1.0, lo, s2p, side=1, lower=1, overwrite_b=1)             # (P^T S2 P) L
    m = blas.dtrmm(1.0, lo, x, side=0, lower=1, trans_a=1, overwrite_b=1)[:r, :r]  # L^T (P^T S2 P) L
    # Eigenvalues only, through torch's LAPACK (MKL on x86 wheels: about 2x faster than OpenBLAS's dsyevd here).
    lam = torch.linalg.eigvalsh(torch.from_numpy((m + m.T) / 2)).numpy()
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared 2-Wasserstein distance between N(mu1, sigma1) and N(mu2, sigma2), as a float >= 0."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise ValueError("frechet_distance: non-finite mean or covariance")
    if np.array_equal(mu1, mu2) and np.array_equal(s1, s2):
        return 0.0  # identical inputs: exactly 0, not a round-off residue
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    fd = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    return max(fd, 0.0)


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of an (n, d) feature array, in float64."""
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])
