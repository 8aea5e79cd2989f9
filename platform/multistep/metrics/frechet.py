"""Fréchet distance between Gaussians, exact and float64, without scipy.linalg.sqrtm.

FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr( (S1^{1/2} S2 S1^{1/2})^{1/2} )

tr((S1 S2)^{1/2}) equals tr((A S2 A)^{1/2}) with A = S1^{1/2} (similar matrices), and A S2 A is
symmetric positive semi-definite, so two symmetric eigendecompositions give it with real,
non-negative eigenvalues: no complex numbers, no NaN, rank-deficient covariances included.
"""

from __future__ import annotations

import numpy as np


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    a = _psd_sqrt(s1)
    m = a @ s2 @ a
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    fd = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(fd, 0.0)


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of an (n, d) feature array, in float64."""
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])
