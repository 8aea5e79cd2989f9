"""The one interface every method implements, so the training loop never knows which it runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]


class Method(Protocol):
    label: str  # short name used in tables and MLflow, e.g. "mcd", "mct"

    def loss(
        self, student: nn.Module, x: Tensor, iteration: int, total: int, g: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss for a data batch x (or (x, y), see split_batch) at `iteration` of `total`, plus detached tensors to log."""
        ...

    def after_step(self, student: nn.Module, ema: nn.Module, iteration: int, total: int) -> None:
        """Called after every optimizer step (target EMAs, phase changes)."""
        ...

    def evaluations(
        self, ema: nn.Module, y: Tensor | None = None, seed: int = 0
    ) -> list[tuple[str, int, Callable[[Tensor], tuple[Tensor, int]]]]:
        """(label, sampling steps, sampler noise -> (samples, nfe)) for every point this run puts on the curve;
        y: fixed class labels, one per row of that noise (conditional students), or None; seed: of the noise a
        stochastic sampler draws (metrics.evaluate.sample_points gives each batch its own: its first row's index)."""
        ...


@dataclass(frozen=True)
class MethodSpec:
    """A method's registry entry: what `method.name: <name>` in a sweep file means. Each methods/<name>.py
    registers one next to its maths; config/schema.py composes the `method:` section from all of them."""

    name: str  # the YAML method.name
    options: type  # pydantic model of the method's own keys of the `method:` section, each with a default
    build: Callable  # (trial config, train.build.Components) -> Method
    label: Callable  # `method:` config -> short name in tables and MLflow (mcd, tract, ...)
    check: Callable = lambda m: None  # rules on its own options, run on every `method:` config (raise OptionError)
    guided: bool = False  # its teacher step takes method.guidance (classifier-free guidance of the teacher)


class OptionError(ValueError):
    """A method's rule broken by one of its options; the config reports it at method.<field>."""

    def __init__(self, field: str, msg: str):
        super().__init__(msg)
        self.field = field


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method to the registry (a method's file calls this once, at import)."""
    taken = {k: s.name for s in METHODS.values() if s.name != spec.name for k in s.options.model_fields}
    if clash := sorted(set(spec.options.model_fields) & set(taken)):
        raise ValueError(f"method {spec.name}: option(s) {clash} already belong to {taken[clash[0]]}")
    METHODS[spec.name] = spec
    return spec


def method_label(cfg) -> str:
    """A trial's short name in tables and MLflow: its `label`, else its method's (mcd, mct, mcd_cfg1, tract, pd)."""
    return cfg.label or METHODS[cfg.method.name].label(cfg.method)


def split_batch(batch) -> tuple[Tensor, Tensor | None]:
    """A training batch is x, or (x, y) with class labels y when the teacher is class-conditional."""
    return (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)


def conditioned(f: Callable, y: Tensor | None) -> Denoiser:
    """f(z, t) conditioned on labels y (one per row of z): z, t -> f(z, t, y); f itself when y is None."""
    return f if y is None else (lambda z, t: f(z, t, y.to(z.device)))


def guided(teacher: Callable, z: Tensor, t: Tensor, y: Tensor | None, w: float) -> Tensor:
    """The teacher's x_hat in float64, with classifier-free guidance w > 0: x_c + w (x_c - x_u), x_u the null class."""
    x_hat = conditioned(teacher, y)(z, t).double()
    return x_hat + w * (x_hat - teacher(z, t).double()) if w else x_hat


def targeted(f: Callable, y: Tensor | None = None) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """A flow-map student's denoiser f(z, t[, y], target) as z, t, s -> x_hat for target time s (conditioned on y)."""
    return lambda z, t, s: f(z, t, y, target=s)


def rng_state(device) -> tuple:
    """The RNG states dropout draws from on `device` (CPU, and the device's CUDA generator on a GPU): replayed so
    that two passes of one network see one dropout mask (MCM's reference pass, sCM's JVP)."""
    cuda = torch.cuda.get_rng_state(device) if torch.device(device).type == "cuda" else None
    return torch.get_rng_state(), cuda, device


def set_rng_state(state: tuple) -> None:
    cpu, cuda, device = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def per_example_mean(a: Tensor) -> Tensor:
    return a.reshape(a.shape[0], -1).mean(1)


# Loss weights w(snr) in x-space (algorithms.md §1.3), by name.
WEIGHTS = {
    "snr+1": lambda snr: snr + 1,  # the v-loss
    "max(snr,1)": lambda snr: snr.clamp_min(1.0),  # truncated SNR
    "snr": lambda snr: snr,  # the eps-loss
}


def _pseudo_huber_ict(ms: Tensor, d: Tensor, eps: float) -> Tensor:
    """iCT: sqrt(||diff||^2 + c^2) - c on the full vector, c = 0.00054 sqrt(d) (eps unused)."""
    c = 0.00054 * d.sqrt()
    return torch.sqrt(ms * d + c**2) - c


# Per-example distances D(x_diff) (algorithms.md A4) from ms = mean_d(diff^2) and d = the dimension, by name.
DISTANCES = {
    # sqrt(mean_d(diff^2) + eps^2) - eps  (~RMS for small eps, ~mean(diff^2)/2 for eps = 1)
    "pseudo_huber": lambda ms, d, eps: torch.sqrt(ms + eps**2) - eps,
    "pseudo_huber_ict": _pseudo_huber_ict,
    "l2sq": lambda ms, d, eps: ms,  # mean_d(diff^2)
    "l2sq_sum": lambda ms, d, eps: ms * d,  # TRACT: squared l2 summed over dimensions
}


def weight(name: str, snr: Tensor) -> Tensor:
    """The loss weight `name` (one of WEIGHTS) at these SNRs."""
    if name not in WEIGHTS:
        raise ValueError(f"unknown weight {name!r}")
    return WEIGHTS[name](snr)


def distance(name: str, diff: Tensor, huber_eps: float) -> Tensor:
    """The per-example distance `name` (one of DISTANCES) of diff (B, ...)."""
    if name not in DISTANCES:
        raise ValueError(f"unknown distance {name!r}")
    ms = per_example_mean(diff.pow(2))
    return DISTANCES[name](ms, ms.new_tensor(diff[0].numel()), huber_eps)
