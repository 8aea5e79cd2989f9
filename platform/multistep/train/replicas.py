"""Data parallelism across Ray Train ranks without the DDP wrapper (gloo on CPU, NCCL on GPU).

Methods call the student several times per step (online pass, stop-gradient reference pass, phase
teachers), which the DDP wrapper handles badly; so each rank runs the plain loop and, after backward,
the gradients are averaged with ONE flat all-reduce (same order on every rank by construction). With
identical starting weights (broadcast from rank 0) every rank then takes the same optimizer step, so
the replicas never drift apart. The loss is a mean over examples, so the averaged gradient of R
equal slices of the global batch is the gradient of the global batch (tests/unit/train/test_replicas.py).
Cost: the all-reduce does not overlap backward as DDP's buckets do (fine for the small trials of a
sweep; measured in docs/performance.md).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class Replicas:
    """The collective operations the training loop needs; every rank must call them in the same order."""

    def __init__(self):
        self.world = world_size()

    def broadcast(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (identical replicas before the first step)."""
        for t in module.state_dict().values():
            dist.broadcast(t, 0)

    def average_gradients(self, module: nn.Module) -> None:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        torch._foreach_copy_(grads, [f.view_as(g) for g, f in zip(grads, flat.split([g.numel() for g in grads]))])

    def average(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over ranks of a tensor of the same shape on every rank (logged metrics)."""
        values = values.clone()
        dist.all_reduce(values)
        return values / self.world

    def finish(self) -> None:
        """Every rank leaves training together. Without it a rank that finishes first can tear the process group
        down (Ray Train's shutdown, destroy_process_group) while its peer's last collective is still in flight,
        and gloo aborts that peer (SIGABRT, "terminate called without an active exception")."""
        dist.barrier()

    def gather(self, obj) -> list:
        """Every rank's `obj` (e.g. its RNG states) on every rank, in rank order."""
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out
