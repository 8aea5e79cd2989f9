"""Toy 2-D distributions (seeded numpy samplers, float32, shape (n, 2)), each scaled to roughly [-2, 2]^2."""

from __future__ import annotations

import numpy as np


def checkerboard(n: int, seed: int = 0) -> np.ndarray:
    """Uniform on the 8 'black' cells of a 4x4 checkerboard over [-2, 2]^2."""
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(-2, 2, n)
    # column floor(x1) is filled in the rows floor(x2) of the same parity: 8 cells with col + row even
    x2 = rng.uniform(0, 1, n) + 2 * rng.integers(0, 2, n) + (np.floor(x1) % 2) - 2
    return np.stack([x1, x2], 1).astype(np.float32)


def two_moons(n: int, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """sklearn.datasets.make_moons (two interleaved half circles) with Gaussian noise, centred, scaled by 4/3 to x in [-2, 2]."""
    rng = np.random.default_rng(seed)
    upper = rng.random(n) < 0.5
    a = rng.uniform(0, np.pi, n)
    x = np.where(upper, np.cos(a), 1 - np.cos(a))
    y = np.where(upper, np.sin(a), 0.5 - np.sin(a))
    pts = np.stack([x, y], 1) + noise * rng.standard_normal((n, 2))
    return (4 / 3 * (pts - [0.5, 0.25])).astype(np.float32)


def eight_gaussians(n: int, seed: int = 0, radius: float = 2.0, std: float = 0.1) -> np.ndarray:
    """Equal mixture of 8 isotropic Gaussians (std `std`) centred evenly on a circle of `radius`."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 8, n)
    ang = 2 * np.pi * k / 8
    centres = radius * np.stack([np.cos(ang), np.sin(ang)], 1)
    return (centres + std * rng.standard_normal((n, 2))).astype(np.float32)


SAMPLERS = {"checkerboard": checkerboard, "two_moons": two_moons, "eight_gaussians": eight_gaussians}


def sample(name: str, n: int, seed: int = 0) -> np.ndarray:
    """Sampler by config name."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown toy distribution {name!r}; expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](n, seed)
