"""The training loop: infrastructure with a few hooks (vdm style). No Ray, no MLflow.

`fit` runs `method.loss` for `total` iterations with Adam, gradient clipping and an eval EMA,
calls `hooks.log` every `log_every` iterations with metrics averaged over the interval (one host
sync per interval, not per step), and `hooks.checkpoint` every `checkpoint_every` iterations.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from multistep.diffusion.loss import v_loss


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class Hooks:
    log: Callable[[int, dict[str, float]], None] = lambda it, m: None
    checkpoint: Callable[[int, dict], None] = lambda it, state: None


@dataclass
class TrainState:
    student: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    iteration: int = 0
    gen: torch.Generator = field(default_factory=torch.Generator)
    wall_seconds: float = 0.0
    method: object = None  # the method's own state (target EMA, phase, phase teachers) travels in checkpoints

    def _weights(self, net: nn.Module) -> dict:
        """net's state dict; of a LoRA student (nets/lora.py) only the adapters (the rest is the teacher's copy)."""
        from multistep.nets.lora import adapter_names, has_lora

        sd = net.state_dict()
        return {k: v for k, v in sd.items() if k in adapter_names(self.student)} if has_lora(self.student) else sd

    def _load_weights(self, net: nn.Module, sd: dict) -> None:
        from multistep.nets.lora import adapter_names, has_lora

        if not has_lora(self.student):
            net.load_state_dict(sd)
            return
        if set(sd) != adapter_names(self.student):
            raise ValueError(f"a LoRA student's checkpoint holds other weights than its {len(sd)} adapters")
        net.load_state_dict(sd, strict=False)

    def state_dict(self) -> dict:
        return {
            "student": self._weights(self.student),
            "ema": self._weights(self.ema),
            "opt": self.opt.state_dict(),
            "iteration": self.iteration,
            "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "wall_seconds": self.wall_seconds,
            "method": self.method.state_dict() if self.method is not None else None,
        }

    def load_state_dict(self, sd: dict) -> None:
        self._load_weights(self.student, sd["student"])
        self._load_weights(self.ema, sd["ema"])
        self.opt.load_state_dict(sd["opt"])
        self.iteration, self.wall_seconds = int(sd["iteration"]), float(sd["wall_seconds"])
        self.gen.set_state(sd["gen"])
        torch.set_rng_state(sd["torch_rng"])
        if self.method is not None and sd.get("method") is not None:
            self.method.load_state_dict(sd["method"], self.student)


def new_state(student: nn.Module, lr: float, seed: int, method=None) -> TrainState:
    opt = torch.optim.Adam(student.parameters(), lr=lr, foreach=True)
    ema = copy.deepcopy(student).requires_grad_(False)
    return TrainState(student, ema, opt, gen=torch.Generator().manual_seed(seed), method=method)


def optimizer_step(
    net: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float = 0.0, replicas=None
):
    """The one training step every loop takes (trials, teacher training, the warm start, `multistep bench`):
    backward, gradients averaged over ranks, clipped to grad_clip (0: not), the optimiser's step. Returns the
    gradient norm before clipping, or None."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if replicas is not None:
        replicas.average_gradients(net)  # every rank now takes the same step
    norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip) if grad_clip > 0 else None
    opt.step()
    return norm


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    e, m = list(ema.parameters()), list(model.parameters())
    torch._foreach_lerp_(e, m, 1.0 - decay)


def fit(
    state: TrainState,
    method,
    sample_batch: Callable[[torch.Generator], torch.Tensor],
    total: int,
    grad_clip: float,
    eval_ema: float,
    log_every: int,
    checkpoint_every: int,
    hooks: Hooks = Hooks(),
    replicas=None,
) -> TrainState:
    """`replicas` (train/replicas.py) when several ranks train one model: gradients and logged means are averaged."""
    student = state.student.train()
    decay = method.eval_ema_decay(total) if hasattr(method, "eval_ema_decay") else eval_ema  # TRACT / PD set their own
    corrected = getattr(method, "eval_ema_bias_correction", False)  # TRACT (algorithms.md §7.4)
    sums: dict[str, torch.Tensor] = {}
    n_acc, t0 = 0, time.perf_counter()
    while state.iteration < total:
        x = sample_batch(state.gen)
        loss, logs = method.loss(student, x, state.iteration, total, state.gen)
        if (norm := optimizer_step(student, state.opt, loss, grad_clip, replicas)) is not None:
            logs["grad_norm"] = norm
        k = state.iteration + 1  # this is the k-th EMA update (a resumed run continues the count)
        ema_update(state.ema, student, 1 - (1 - decay) / (1 - decay**k) if corrected else decay)
        state.iteration += 1
        method.after_step(student, state.ema, state.iteration, total)  # target EMAs, phase changes
        for k, v in logs.items():
            sums[k] = sums.get(k, 0) + v.detach().double()
        n_acc += 1
        if state.iteration % log_every == 0 or state.iteration == total:
            keys = list(sums)  # the method's order: the same on every rank
            vec = torch.stack([sums[k] for k in keys]) / n_acc
            if replicas is not None:  # before the finiteness check, so every rank stops together
                vec = replicas.average(vec)
            means = dict(zip(keys, vec.tolist()))  # one host sync per interval
            if not all(math.isfinite(v) for v in means.values()):
                bad = [k for k, v in means.items() if not math.isfinite(v)]
                raise NonFiniteLoss(
                    f"non-finite {', '.join(bad)} in iterations {state.iteration - n_acc + 1}..{state.iteration}"
                )
            state.wall_seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            hooks.log(state.iteration, means)
            sums, n_acc = {}, 0
        if state.iteration % checkpoint_every == 0 or state.iteration == total:
            hooks.checkpoint(state.iteration, state.state_dict())
    if replicas is not None:
        replicas.finish()
    return state


WARM_START_T = (0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95)  # where the warm start's v-space error is measured


@dataclass
class WarmStart:
    """How a student is warm-started onto its teacher. These defaults are the config's (StudentCfg.init_* reads
    them): the sweep, the GPU kit and the benchmarks warm-start the same way."""

    iterations: int = 3000  # the cap
    lr: float = 1e-3
    seed: int = 0
    optimizer: str = "adam"  # adam | adamw
    schedule: str = "constant"  # constant | cosine (annealed over the cap)
    check_every: int = 250  # iterations between error measurements (0: none, run to the cap)
    patience: int = 2  # measurements without min_improvement before stopping (0: run to the cap)
    min_improvement: float = 0.01  # relative improvement of the mean error that counts


@torch.no_grad()
def v_error(net: nn.Module, sched, teacher, x: torch.Tensor, eps: torch.Tensor) -> dict[float, float]:
    """RMS over rows and dimensions of v_net(z_t, t) - v_teacher(z_t, t) at each t of WARM_START_T, on fixed data
    rows x and noise eps: the warm start's quality where the student will be asked (a sampling FD hides it)."""
    out = {}
    for t in WARM_START_T:
        tt = torch.full((len(x),), t, dtype=x.dtype, device=x.device)
        a, s = (v.reshape(-1, *[1] * (x.dim() - 1)) for v in sched.alpha_sigma(tt))
        z = a * x + s * eps
        v_teacher = (a * z - teacher(z, tt)) / s  # x_hat = alpha z - sigma v
        out[t] = float((net(z.float(), tt.float()).double() - v_teacher.double()).pow(2).mean().sqrt())
    return out


def warm_start(net: nn.Module, sched, teacher, sample_batch, ws: WarmStart) -> tuple[dict, dict]:
    """Train `net` (a v-network) by v-loss regression onto `teacher`: (its state dict, a report).

    The MCM paper initialises every student from the diffusion model; with an analytic teacher this regression
    *is* that diffusion model (computed once per sweep and shared by every trial). Every `check_every` iterations
    the v-space error against the teacher (`v_error`, on 2,048 held-out rows) is measured; after `patience`
    measurements without a relative improvement of `min_improvement` of its mean over t, training stops
    (report["stopped"] = "converged", else "cap"). The report has the error per t at the end and its history.
    """
    g = torch.Generator().manual_seed(ws.seed)
    held = torch.Generator().manual_seed(ws.seed + 1)
    rows = []
    while sum(len(r) for r in rows) < 2048:
        rows.append(sample_batch(held))
    x = torch.cat(rows)[:2048].double()
    eps = torch.randn(x.shape, generator=held, dtype=torch.float64).to(x.device)
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[ws.optimizer]
    opt = opt_cls(net.parameters(), lr=ws.lr)
    sched_lr = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(ws.iterations, 1)) if ws.schedule == "cosine" else None
    )
    history, best, stale, stopped, it = [], float("inf"), 0, "cap", 0
    while it < ws.iterations:
        optimizer_step(net, opt, v_loss(net, sched, sample_batch(g), g, teacher))
        if sched_lr is not None:
            sched_lr.step()
        it += 1
        if ws.check_every and it % ws.check_every == 0:
            err = v_error(net, sched, teacher, x, eps)
            mean = sum(err.values()) / len(err)
            history.append((it, mean))
            stale = 0 if mean < best * (1 - ws.min_improvement) else stale + 1
            best = min(best, mean)
            if ws.patience and stale >= ws.patience:
                stopped = "converged"
                break
    final = v_error(net, sched, teacher, x, eps)
    report = {"iterations": it, "stopped": stopped, "v_rmse": final, "history": history}
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, report
