"""Sample distances that see the modes (sliced Wasserstein) and paired errors to a reference solution."""

from __future__ import annotations

import numpy as np


def sliced_wasserstein(a, b, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance sqrt(E_theta W2^2(theta.a, theta.b)) between two equal-size sample sets."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    n = min(len(a), len(b))
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((a.shape[1], projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    pa, pb = np.sort(a[:n] @ theta, axis=0), np.sort(b[:n] @ theta, axis=0)
    return float(np.sqrt(((pa - pb) ** 2).mean()))


def paired_l2(a, b) -> float:
    """Mean over samples of ||a_i - b_i|| (a and b made from the same starting noise)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return float(np.linalg.norm(a - b, axis=1).mean())
