"""The one interface every method implements, so the training loop never knows which it runs."""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]


class Method(Protocol):
    label: str  # short name used in tables and MLflow, e.g. "mcd", "mct"

    def loss(self, student: nn.Module, x: Tensor, iteration: int, total: int, g: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss for a data batch x at `iteration` of `total`, plus detached tensors to log."""
        ...

    def sample(self, student: Denoiser, noise: Tensor) -> tuple[Tensor, int]:
        """The sampler that goes with the method: (samples, nfe)."""
        ...


def per_example_mean(a: Tensor) -> Tensor:
    return a.reshape(a.shape[0], -1).mean(1)


def weight(kind: str, snr: Tensor) -> Tensor:
    """Loss weights in x-space (algorithms.md §1.3): snr+1 = v-loss, max(snr,1) = truncated SNR, snr = eps-loss."""
    if kind == "snr+1":
        return snr + 1
    if kind == "max(snr,1)":
        return snr.clamp_min(1.0)
    if kind == "snr":
        return snr
    raise ValueError(f"unknown weight {kind!r}")


def distance(kind: str, diff: Tensor, huber_eps: float) -> Tensor:
    """Per-example distance D(x_diff) (algorithms.md A4).

    pseudo_huber: sqrt(mean_d(diff^2) + eps^2) - eps  (~RMS for small eps, ~mean(diff^2)/2 for eps = 1)
    l2sq:         mean_d(diff^2)
    """
    ms = per_example_mean(diff.pow(2))
    if kind == "pseudo_huber":
        return torch.sqrt(ms + huber_eps**2) - huber_eps
    if kind == "l2sq":
        return ms
    raise ValueError(f"unknown distance {kind!r}")
