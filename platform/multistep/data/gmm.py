"""Seeded Gaussian mixtures x ~ sum_k w_k N(mu_k, diag(s_k^2)) in any shape (vectors or images)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class GaussianMixture:
    means: torch.Tensor  # (K, d) float64
    stds: torch.Tensor  # (K, d) float64, per-dimension standard deviations
    weights: torch.Tensor  # (K,) float64, sums to 1
    shape: tuple[int, ...]  # shape of one sample, prod(shape) = d

    @classmethod
    def random(
        cls,
        shape: tuple[int, ...] = (16,),
        components: int = 10,
        mean_std: float = 0.6,
        component_std: float = 0.1,
        seed: int = 0,
    ) -> GaussianMixture:
        """Means ~ N(0, mean_std^2), every component isotropic with std component_std, equal weights."""
        d = int(np.prod(shape))
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(components, d, generator=g, dtype=torch.float64) * mean_std
        stds = torch.full((components, d), component_std, dtype=torch.float64)
        return cls(means, stds, torch.full((components,), 1.0 / components, dtype=torch.float64), tuple(shape))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + self.stds[k] * eps
        return x.reshape(n, *self.shape).to(dtype)
