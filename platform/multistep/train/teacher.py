"""Diffusion training of a teacher (plain PyTorch, no Ray/MLflow) and teacher checkpoints.

Loss: v-loss with (SNR + 1) weighting (diffusion/loss.py); class-conditional nets see their labels
replaced by the null class with probability `label_dropout` (classifier-free guidance training).
Adam, gradient clipping, EMA of weights with the usual warm-up decay min(ema, (1 + n) / (10 + n)).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from multistep.diffusion.loss import v_loss
from multistep.diffusion.schedules import Schedule
from multistep.train import checkpoint
from multistep.train.loop import NonFiniteLoss, ema_update, optimizer_step

TEACHER_VERSION = 1


def _split(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    return (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)


def train_teacher(
    net: nn.Module,
    sched: Schedule,
    batches: Iterable,
    iterations: int,
    lr: float = 2e-4,
    ema: float = 0.999,
    seed: int = 0,
    log: Callable[[int, dict], None] | None = None,
    grad_clip: float = 1.0,
    label_dropout: float = 0.1,
    log_every: int = 100,
    replicas=None,
) -> tuple[nn.Module, nn.Module, list[dict]]:
    """Train `net` (v-prediction) for `iterations` steps on `batches` (an iterable of x or (x, y)).

    lr: Adam learning rate; ema: eval-EMA decay; grad_clip: max grad norm (0 disables);
    label_dropout: probability of the null class for conditional nets; log(it, metrics) every
    `log_every` iterations with the interval's mean loss; replicas (train/replicas.py): several ranks train one
    net (gradients and the logged loss averaged over ranks). Returns (net, ema_net, history).
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout inside the net
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    ema_net = copy.deepcopy(net).requires_grad_(False)
    null = getattr(net, "num_classes", None)
    history: list[dict] = []
    it_batches = iter(batches)
    net.train()
    acc, n_acc, t0 = 0.0, 0, time.perf_counter()
    for it in range(1, iterations + 1):
        x, y = _split(next(it_batches))
        if null is not None and y is not None:
            drop = (torch.rand(y.shape[0], generator=g) < label_dropout).to(y.device)
            y = torch.where(drop, torch.full_like(y, null), y)
            fn = lambda z, t, y=y: net(z, t, y)
        else:
            fn = net
        loss = v_loss(fn, sched, x, g)
        optimizer_step(net, opt, loss, grad_clip, replicas)
        ema_update(ema_net, net, min(ema, (1 + it) / (10 + it)))
        acc, n_acc = acc + loss.detach(), n_acc + 1  # summed on device: one sync per log interval
        if it % log_every == 0 or it == iterations:
            mean = (acc / n_acc).double().reshape(1)
            if replicas is not None:  # before the finiteness check, so every rank stops together
                mean = replicas.average(mean)
            m = {"loss": float(mean), "wall_seconds": time.perf_counter() - t0}
            if not math.isfinite(m["loss"]):
                raise NonFiniteLoss(f"non-finite teacher loss in iterations {it - n_acc + 1}..{it}")
            history.append({"iteration": it, **m})
            if log is not None:
                log(it, m)
            acc, n_acc = 0.0, 0
    if replicas is not None:
        replicas.finish()
    for b_ema, b in zip(ema_net.buffers(), net.buffers()):  # buffers (if any) are copied, not averaged
        b_ema.copy_(b)
    return net.eval(), ema_net.eval(), history


# -- checkpoints ----------------------------------------------------------------------------------
def build_net(cfg: dict) -> nn.Module:
    """Network from its config dict: {"kind": "unet", **UNet kwargs} or {"kind": "mlp", **MLP kwargs}."""
    from multistep.nets.mlp import MLP
    from multistep.nets.unet import UNet

    kinds = {"unet": UNet, "mlp": MLP}
    kw = dict(cfg)
    kind = kw.pop("kind", None)
    if kind not in kinds:
        raise ValueError(f"net kind {kind!r}, expected one of {', '.join(kinds)}")
    return kinds[kind](**kw)


def save_teacher(path: str | os.PathLike, net_cfg: dict, ema_state: dict, meta: dict | None = None) -> Path:
    """Write {format, version, net config, EMA weights, meta (e.g. schedule, data)} atomically, with a checksum."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": checkpoint.TEACHER_FORMAT,
        "version": TEACHER_VERSION,
        "net": dict(net_cfg),
        "state": {k: v.detach().cpu() for k, v in ema_state.items()},
        "meta": dict(meta or {}),
    }
    return checkpoint.save(p, blob)  # atomic, with its checksum


def load_teacher(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """(net in eval mode with the EMA weights, frozen; {"net": config, "meta": meta}). Any problem -> ValueError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: teacher checkpoint not found")
    try:
        blob = checkpoint.load(p)  # checksum verified before anything is unpickled
    except checkpoint.CorruptCheckpoint as e:
        raise ValueError(str(e).replace("not a readable checkpoint", "not a readable teacher checkpoint")) from None
    if not isinstance(blob, dict) or blob.get("format") != checkpoint.TEACHER_FORMAT:
        raise ValueError(f"{p}: not a multistep teacher checkpoint")
    if blob.get("version") != TEACHER_VERSION:
        raise ValueError(
            f"{p}: teacher checkpoint version {blob.get('version')!r}, this multistep reads version {TEACHER_VERSION}"
        )
    try:
        net = build_net(blob["net"])
        net.load_state_dict(blob["state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{p}: incompatible teacher checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    return net.eval().requires_grad_(False), {"net": dict(blob["net"]), "meta": dict(blob.get("meta", {}))}
