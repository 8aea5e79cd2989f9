"""Fréchet distance between Gaussians, exact and float64, without scipy.linalg.sqrtm.

FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr( (S1 S2)^{1/2} )

Factor S1 = B B^T by Cholesky (B is d x r, r = rank S1). S1 S2 = B B^T S2 has the same non-zero eigenvalues
as B^T S2 B, which is symmetric positive semi-definite; one symmetric eigenvalue solve gives them real and
non-negative, so tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i): no complex numbers, no NaN, and no Schur form of
a non-symmetric matrix (what makes sqrtm slow and, on singular products, only ~sqrt(eps) accurate).
A numerically full-rank S1 takes plain Cholesky (LAPACK ?potrf); a rank-deficient one the pivoted
decomposition (?pstrf), which stops at its rank, so rank-deficient covariances are exact, not regularised.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import blas, lapack


def _rank_tolerance(sigma) -> float:
    """Pivots at or below this are zero: ?pstrf's default, d * eps * max diag."""
    return len(sigma) * np.finfo(np.float64).eps * float(np.max(np.diag(sigma)))


def _cholesky_factor(sigma1, sigma2) -> tuple[np.ndarray, np.ndarray, int]:
    """(L, S2', r): S1' = L L^T with L lower triangular, Fortran-ordered, zero past column r = rank S1, and S2'
    the matching S2 (permuted like S1 where pivoting was needed), also Fortran-ordered and free to overwrite."""
    tol = _rank_tolerance(sigma1)
    c, info = lapack.dpotrf(sigma1, lower=1, clean=1)  # S1 = L L^T; c is a fresh Fortran array
    if info == 0 and np.diag(c).min() ** 2 > tol:  # every pivot above pstrf's threshold: full rank
        return c, np.array(sigma2, order="F"), len(sigma1)
    c, piv, r, info = lapack.dpstrf(sigma1, lower=1)  # P^T S1 P = L L^T, stopped at rank r
    if info < 0:
        raise ValueError(f"dpstrf: illegal argument {-info}")
    lo = np.triu(c.T).T  # tril(c), Fortran-ordered for BLAS without a second copy
    lo[:, r:] = 0.0
    p = piv - 1
    return lo, np.asfortranarray(sigma2[np.ix_(p, p)]), r


def trace_sqrt_product(sigma1, sigma2) -> float:
    """tr((S1 S2)^{1/2}) for symmetric PSD S1, S2 (float64).

    S1 = L L^T (see _cholesky_factor), then M = L^T S2 L by two triangular products (half a gemm's work each);
    M's non-zero block is M[:r, :r], whose eigenvalues are those of S1 S2.
    """
    if not np.any(np.diag(sigma1) > 0):
        return 0.0
    lo, s2, r = _cholesky_factor(sigma1, sigma2)
    x = blas.dtrmm(1.0, lo, s2, side=1, lower=1, overwrite_b=1)  # S2 L
    m = blas.dtrmm(1.0, lo, x, side=0, lower=1, trans_a=1, overwrite_b=1)[:r, :r]  # L^T S2 L
    # Eigenvalues only, through torch's LAPACK (MKL on x86 wheels: about 2x faster than OpenBLAS's dsyevd here);
    # ?syevd reads one triangle, so M needs no symmetrising copy.
    lam = torch.linalg.eigvalsh(torch.from_numpy(m), UPLO="L").numpy()
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


def trace_sqrt_product_torch(sigma1: torch.Tensor, sigma2: torch.Tensor) -> float:
    """tr((S1 S2)^{1/2}) with torch in float64 on the tensors' device (a GPU: cuSOLVER), as `trace_sqrt_product`.

    S1 = L L^T by Cholesky when S1 is numerically full rank, else S1 = (Q l^{1/2})(Q l^{1/2})^T by eigh (no pivoted
    Cholesky in torch); either way the eigenvalues of B^T S2 B are those of S1 S2, real and >= 0.
    """
    s1, s2 = sigma1.double(), sigma2.double()
    lo, info = torch.linalg.cholesky_ex(s1)
    tol = len(s1) * np.finfo(np.float64).eps * float(s1.diagonal().max())  # _rank_tolerance's threshold
    if int(info) != 0 or float(torch.diagonal(lo).min()) ** 2 <= tol:
        lam, q = torch.linalg.eigh(s1)
        lo = q * lam.clamp_min(0).sqrt()
    lam = torch.linalg.eigvalsh(lo.T @ s2 @ lo)
    return float(lam.clamp_min(0).sqrt().sum())


def frechet_distance_torch(mu1, sigma1, mu2, sigma2, device="cuda") -> float:
    """`frechet_distance` computed on `device` with torch in float64 (the GPU path of the GPU check)."""
    t = [torch.as_tensor(np.asarray(a, np.float64), device=device) for a in (mu1, sigma1, mu2, sigma2)]
    m1, s1, m2, s2 = t[0].reshape(-1), t[1], t[2].reshape(-1), t[3]
    if m1.shape != m2.shape or s1.shape != s2.shape or s1.shape != (m1.numel(), m1.numel()):
        raise ValueError(
            f"shape mismatch: mu {tuple(m1.shape)} vs {tuple(m2.shape)}, sigma {tuple(s1.shape)} vs {tuple(s2.shape)}"
        )
    if not all(bool(torch.isfinite(a).all()) for a in (m1, s1, m2, s2)):
        raise ValueError("frechet_distance: non-finite mean or covariance")
    if torch.equal(m1, m2) and torch.equal(s1, s2):
        return 0.0
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    fd = float(((m1 - m2) ** 2).sum() + s1.trace() + s2.trace()) - 2.0 * trace_sqrt_product_torch(s1, s2)
    return max(fd, 0.0)


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of an (n, d) feature array, in float64."""
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])
