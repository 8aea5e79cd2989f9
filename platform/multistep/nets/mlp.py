"""A small MLP denoiser for vector data: v-prediction, sinusoidal time features."""

from __future__ import annotations

import contextlib
import math
import os
import weakref

import torch
from torch import nn

from multistep.diffusion.ddim import x_from_v
from multistep.diffusion.schedules import Schedule


def time_features(t: torch.Tensor, dim: int, scale: float = 1000.0, dtype=torch.float32) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (DDPM style on 1000 t), shape (B, dim), computed in `dtype`."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=dtype) / half)
    arg = scale * t.to(dtype)[:, None] * freqs[None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


def octave_features(t: torch.Tensor, dim: int, dtype=torch.float32) -> torch.Tensor:
    """sin and cos of 2^k pi t for k < dim / 2: octaves of the time itself, shape (B, dim), computed in `dtype`."""
    arg = math.pi * t.to(dtype)[:, None] * 2.0 ** torch.arange(dim // 2, device=t.device, dtype=dtype)[None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


def check_time_features(kind: str) -> str:
    """A network's time_features setting, or ValueError (checked when the network is built, not at its first forward)."""
    if kind not in ("sinusoid", "octave"):
        raise ValueError(f"unknown time_features {kind!r} (sinusoid or octave)")
    return kind


def features(t: torch.Tensor, dim: int, kind: str, dtype=torch.float32) -> torch.Tensor:
    """The network's time input: "sinusoid" (DDPM-style features of 1000 t) or "octave" (sin, cos of 2^k pi t), in
    `dtype` (the network's: float32, or float64 for sCM's finite-difference JVP)."""
    if check_time_features(kind) == "octave":
        return octave_features(t, dim, dtype)
    return time_features(t, dim, dtype=dtype)


def jump_features(t: torch.Tensor, target: torch.Tensor | None, dim: int, kind: str, dtype) -> torch.Tensor:
    """The target-time input's features: those of the jump t - target (target None: no jump, target = t)."""
    return features(t - (t if target is None else target), dim, kind, dtype)


def target_projection(time_dim: int, width: int, like: nn.Module | None = None) -> nn.Linear:
    """A flow-map student's second time input (few-step-families.md §2): features of the jump t - target, projected
    to `width` by a zero-initialised layer (on `like`'s device and dtype), so the network is at first the same for
    every target. Added where the first time enters: the MLP's first hidden layer, the UNet's time embedding."""
    proj = nn.Linear(time_dim, width)
    nn.init.zeros_(proj.weight)
    nn.init.zeros_(proj.bias)
    if like is not None:
        w = next(like.parameters())
        proj = proj.to(device=w.device, dtype=w.dtype)
    return proj


class MLP(nn.Module):
    """v_theta(z, t): concat(z, time features) -> depth x [Linear, SiLU(, Dropout)] -> Linear.

    time_features: "sinusoid" (DDPM-style features of 1000 t) or "octave" (sin, cos of 2^k pi t).
    target_input: a flow-map student v_theta(z, t, target) (target_projection); target None means target = t."""

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 3,
        time_dim: int = 64,
        dropout: float = 0.0,
        time_features: str = "sinusoid",
        target_input: bool = False,
    ):
        super().__init__()
        self.time_dim, self.time_features = time_dim, check_time_features(time_features)
        layers: list[nn.Module] = []
        width = dim + time_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)
        self.target_proj = None
        if target_input:
            self.add_target_input()

    def add_target_input(self) -> None:
        """Become a flow-map student: the zero-initialised second time input (the same outputs until it trains)."""
        self.target_proj = target_projection(self.time_dim, self.net[0].out_features, like=self)

    def forward(self, z: torch.Tensor, t: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.cat([z.reshape(z.shape[0], -1), features(t, self.time_dim, self.time_features, z.dtype)], dim=1)
        if self.target_proj is None:
            return self.net(h).reshape(z.shape)
        jump = jump_features(t, target, self.time_dim, self.time_features, z.dtype)
        h = self.net[0](h) + self.target_proj(jump)
        return self.net[1:](h).reshape(z.shape)


class VDenoiser(nn.Module):
    """Wraps a v-prediction network as f(z, t) -> x_hat = alpha_t z - sigma_t v_theta(z, t) (MCM §4.4).

    The network runs in its own dtype (bf16 under autocast on GPU); the conversion to x_hat is done
    in the dtype of z (float32 or float64), never bf16.
    """

    def __init__(self, net: nn.Module, schedule: Schedule):
        super().__init__()
        self.net, self.schedule = net, schedule
        # e.g. torch.bfloat16: the network forward only under autocast (A7)
        self.autocast_dtype: torch.dtype | None = None
        self.channels_last = False  # 4-D inputs in channels_last memory format (weights: the caller)
        self.compiled = False  # run the network through torch.compile (compiled once per net)

    def v(
        self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """v_theta(z, t) in float32, the network run under the fast paths (autocast, channels_last, compile)."""
        # y: class labels for a class-conditional net (UNet with num_classes); None = unconditional / the null class
        # target: a flow-map student's target time s (its jump t -> s); None for every other network
        zf = z.float()
        if self.channels_last and zf.dim() == 4:
            zf = zf.contiguous(memory_format=torch.channels_last)
        net = compiled(self.net) if self.compiled else self.net
        with torch.autocast(z.device.type, self.autocast_dtype) if self.autocast_dtype else contextlib.nullcontext():
            args, kw = (() if y is None else (y,)), ({} if target is None else {"target": target})
            v = net(zf, t, *args, **kw)
        return v.float()

    @property
    def flow_map(self) -> bool:
        """A flow-map student (methods/flowmap.py): its network takes the target time of each jump."""
        return getattr(self.net, "target_proj", None) is not None

    time_dtype = None  # the network's time input: the sampler's t as it comes (float64)
    num_classes = None  # see nets/adapter.py; a class-conditional platform net carries its own (net.num_classes)
    clip_sample = 0.0

    def affine(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(a_in, time_in, c_z, c_o) at times t: the network sees (z, t), x_hat = alpha z - sigma v (as forward)."""
        a, s = self.schedule.alpha_sigma(t)
        return torch.ones_like(t), t, a, -s

    def forward(
        self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        # target maths in z's dtype, never bf16; a flow-map student's x_hat is the one whose DDIM step t -> target
        # is its jump f(z, t, target) (few-step-families.md A.1)
        return x_from_v(self.schedule, z, t, self.v(z, t, y, target).to(z.dtype))


_COMPILED: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


def compiled(net: nn.Module) -> nn.Module:
    """torch.compile(net), made once per network object. Kept outside the module, so a deep copy (the EMA, a
    target network, a phase teacher) compiles its own weights instead of calling the original's graph.
    $MULTISTEP_COMPILE_BACKEND picks torch.compile's backend (default inductor; the GPU kit's CPU rehearsal uses
    aot_eager: the same graph capture and autograd split, without inductor's minutes of C++ codegen)."""
    if net not in _COMPILED:
        _COMPILED[net] = torch.compile(net, backend=os.environ.get("MULTISTEP_COMPILE_BACKEND", "inductor"))
    return _COMPILED[net]
