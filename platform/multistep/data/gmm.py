"""Seeded Gaussian mixtures x ~ sum_k w_k N(mu_k, Sigma_k) in any shape (vectors or images).

Sigma_k = diag(s_k^2) + Q_k diag(lambda_k) Q_k^T: per-dimension variances plus, optionally, `rank`
correlated directions per component (Q_k: d x r, orthonormal columns; lambda_k: the extra variance along
each). A low rank keeps the exact denoiser O(B K d r) (Woodbury, nets/analytic.py) for d in the thousands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from multistep.data import kinds


@dataclass(frozen=True)
class GaussianMixture:
    means: torch.Tensor  # (K, d) float64
    stds: torch.Tensor  # (K, d) float64, per-dimension standard deviations
    weights: torch.Tensor  # (K,) float64, sums to 1
    shape: tuple[int, ...]  # shape of one sample, prod(shape) = d
    factors: torch.Tensor = field(default=None)  # (K, d, r) float64, orthonormal columns per component (r = 0: none)
    factor_vars: torch.Tensor = field(default=None)  # (K, r) float64, extra variance along each factor

    def __post_init__(self):
        K, d = self.means.shape
        if self.factors is None:  # frozen dataclass: fill the empty factors through object.__setattr__
            object.__setattr__(self, "factors", torch.zeros(K, d, 0, dtype=torch.float64))
            object.__setattr__(self, "factor_vars", torch.zeros(K, 0, dtype=torch.float64))
        if self.rank and (self.stds != self.stds[:, :1]).any():
            raise ValueError("a mixture with correlated factors needs one isotropic std per component")

    @classmethod
    def random(
        cls,
        shape: tuple[int, ...] = (16,),
        components: int = 10,
        mean_std: float = 0.6,
        component_std: float = 0.1,
        seed: int = 0,
        rank: int = 0,
        rank_std: float = 0.0,
        smooth: int = 1,
    ) -> GaussianMixture:
        """Means ~ N(0, mean_std^2), isotropic std component_std, equal weights; with rank > 0 every component
        also varies with std rank_std along `rank` random orthonormal directions. Images ([C, H, W]) with
        smooth > 1 draw means and directions as random fields at H/smooth x W/smooth, upsampled bilinearly
        (then rescaled to mean_std per pixel): image-like, spatially correlated structure."""
        d = int(np.prod(shape))
        if rank > d:
            raise ValueError(f"rank {rank} exceeds the dimension {d}")
        g = torch.Generator().manual_seed(seed)
        means = _fields(components, shape, smooth, g) * mean_std
        stds = torch.full((components, d), component_std, dtype=torch.float64)
        w = torch.full((components,), 1.0 / components, dtype=torch.float64)
        if not rank:
            return cls(means, stds, w, tuple(shape))
        factors = torch.linalg.qr(_fields(components * rank, shape, smooth, g).reshape(components, rank, d).mT)[0]
        return cls(means, stds, w, tuple(shape), factors, torch.full((components, rank), rank_std**2).double())

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def rank(self) -> int:
        return self.factors.shape[2]

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + self.stds[k] * eps
        if self.rank:  # + Q_k (sqrt(lambda_k) * eta), eta ~ N(0, I_r)
            eta = torch.randn(n, self.rank, generator=generator, dtype=torch.float64) * self.factor_vars[k].sqrt()
            x = x + torch.einsum("ndr,nr->nd", self.factors[k], eta)
        return x.reshape(n, *self.shape).to(dtype)


def _fields(n: int, shape: tuple[int, ...], smooth: int, g: torch.Generator) -> torch.Tensor:
    """n float64 rows of unit-variance noise (n, d); images with smooth > 1: low-resolution noise, upsampled."""
    d = int(np.prod(shape))
    if smooth <= 1 or len(shape) != 3:
        return torch.randn(n, d, generator=g, dtype=torch.float64)
    c, h, w = shape
    low = torch.randn(n, c, max(1, h // smooth), max(1, w // smooth), generator=g, dtype=torch.float64)
    up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).reshape(n, d)
    return up / up.std(dim=1, keepdim=True).clamp_min(1e-12)


# -- the data kind `gmm` (data/kinds.py) ------------------------------------------------------------------------
def _check(d) -> None:
    if d.rank > math.prod(d.shape):
        raise kinds.FieldError("rank", f"exceeds the dimension of shape {d.shape} ({math.prod(d.shape)})")


class GmmOptions(kinds.Options):
    shape: list[Annotated[int, Field(ge=1)]] = Field(
        [16], description="shape of one sample (vectors: [d]; images: [C, H, W])"
    )
    components: Annotated[int, Field(ge=1)] = Field(10, description="number of mixture components")
    mean_std: Annotated[float, Field(gt=0)] = Field(0.6, description="component means ~ N(0, mean_std^2)")
    component_std: Annotated[float, Field(gt=0)] = Field(0.1, description="isotropic std of every component")
    rank: Annotated[int, Field(ge=0)] = Field(
        0,
        description="correlated directions per component, Sigma_k = component_std^2 I + rank_std^2 Q_k Q_k^T (0: isotropic)",
    )
    rank_std: Annotated[float, Field(gt=0)] = Field(
        0.5, description="extra std along each of a component's `rank` directions"
    )
    smooth: Annotated[int, Field(ge=1)] = Field(
        1, description="images: means, directions drawn at H/smooth x W/smooth, upsampled"
    )
    seed: int = Field(0, description="seed of the mixture itself")


GMM = kinds.register(
    kinds.DataKind(
        name="gmm",
        options=GmmOptions,
        shape=lambda d: tuple(d.shape),
        load=lambda d: GaussianMixture.random(
            tuple(d.shape), d.components, d.mean_std, d.component_std, d.seed, d.rank, d.rank_std, d.smooth
        ),
        label=lambda d: f"gmm{d.shape}" + (f"x{d.components}r{d.rank}" if d.rank else ""),
        check=_check,
        fd_space="identity",
        mixture=True,
        labelled=False,
    )
)
