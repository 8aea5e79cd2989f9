"""Flow-map distillation (Align Your Flow's EMD form, MeanFlow): one student for every step count.

Notation of few-step-families.md §0 and §2. The student takes the target time as a second input (a zero-initialised
projection of the jump t - s, nets/mlp.py target_projection) and jumps from angle phi to any s <= phi:

    f_theta(z, phi, s) = cos(phi - s) z - sin(phi - s) F_theta(z, phi, s)

which is a DDIM step t -> s with the student's own v (A.1), so K-step sampling is K jumps on the uniform grid
t_k = k / K (diffusion/samplers.flowmap_sample) and one trained student gives the whole curve. With s fixed, the
training signal is sCM's (methods/scm.py) with Delta = phi - s: df/dphi = 0 along the teacher's ODE, tangent

    g = -cos^2(Delta) (F^- - v_T) - r (cos(Delta) sin(Delta) z + J),  J = cos Delta sin Delta dF^-/dphi (s held)

so this class is SCM with two hooks changed: where each row jumps (drawn, not the segment edge) and the network's
target-time input. s = phi is flow matching on v_T (g = v_T - F^-), s = 0 a consistency model, and an s tied to
the segment edges with a network that ignores it is MCM (A.3).

Conventions chosen here (each an option below, docs/methods.md):
- the (phi, s) law: phi as sCM's (p_mean, p_std); s = phi with probability 1 - flow_ratio (MeanFlow: ratio of
  r != t 0.25-0.75), s = 0 with probability s_zero_prob (UNVERIFIED: keeps the 1-step jump trained), otherwise
  s uniform in angle below phi (UNVERIFIED: MeanFlow draws both times logit-normal and sorts them).
- the jump's input: the network's time features of t - t(s), in the network's own time units.
- weighting: sCM's (prior 1 / tan(phi), learned u(phi, phi - s)), or MeanFlow's adaptive ||e||^2 / sg(||e||^2 + c)^p.
- r ramps to r_max (sCM 1.0; AYF 0.99).
- evaluation: deterministic jumps at every count in eval_steps (the trial's curve; student_steps is the point
  Tune ranks trials by), and with gamma > 0 also gamma-sampling as a second curve <label>_gamma<gamma>.
- the composition gap || f(f(z, 1, r), r, 0) - f(z, 1, 0) ||_rms on 256 fixed noise rows, r = t 0.5, measured every
  composition_every steps on the online student: 0 for an exact flow map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from multistep.diffusion.ddim import ddim_step
from multistep.diffusion.samplers import flowmap_sample, full_time
from multistep.methods.base import MethodSpec, OptionError, register, targeted
from multistep.methods.scm import SCM, phi_of_t, scm_options, t_of_phi

COMPOSITION_ROWS = 256


def compose_gap(f, noise: torch.Tensor, mid: float = 0.5) -> torch.Tensor:
    """|| f(f(z, 1, mid), mid, 0) - f(z, 1, 0) ||_rms for a flow map f(z, t, s) -> z_s (in the network's time t)."""
    one_, mid_, zero_ = (full_time(noise, v) for v in (1.0, mid, 0.0))
    two = f(f(noise, one_, mid_), mid_, zero_)
    one = f(noise, one_, zero_)
    return (two - one).double().pow(2).mean().sqrt()


def jump(student: nn.Module, y=None):
    """The student's flow map f(z, t, s) -> z_s: a DDIM step t -> s with its x_hat for target s (A.1)."""
    x_hat = targeted(student, y)
    return lambda z, t, s: ddim_step(student.schedule, x_hat(z, t, s).to(z.dtype), z, t, s)


@dataclass
class FlowMap(SCM):
    eval_steps: tuple[int, ...] = (1, 2, 4, 8)
    flow_ratio: float = 0.75  # P(s < phi); the rest are flow-matching rows (s = phi)
    s_zero_prob: float = 0.1  # P(s = 0)
    weighting: str = "scm"  # "scm" (prior and learned u) | "meanflow" (adaptive ||e||^2 / sg(||e||^2 + c)^p)
    meanflow_p: float = 1.0
    meanflow_c: float = 1e-3
    gamma: float = 0.0  # > 0: also evaluate gamma-sampling
    composition_every: int = 100  # 0: off
    _gap: dict = field(default_factory=dict, repr=False)
    _rows: torch.Tensor | None = field(default=None, repr=False)

    u_inputs = 2

    def __post_init__(self):
        self.label = self.label or ("fmd" if self.teacher is not None else "fmt")

    def jump_target(self, phi: torch.Tensor, t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """s per row: phi (flow matching) w.p. 1 - flow_ratio, 0 w.p. s_zero_prob, else uniform in (0, phi)."""
        zero = phi_of_t(self.schedule, torch.zeros_like(phi)).to(phi)
        if self.flow_ratio == 1.0 and self.s_zero_prob == 1.0:  # every row a consistency-model row: sCM, bit for bit
            return zero
        u, pick = torch.rand((2, phi.shape[0]), generator=g, dtype=torch.float64).to(phi.device)
        s = zero + u * (phi - zero)
        s = torch.where(pick < self.s_zero_prob, zero, s)
        return torch.where(pick >= self.flow_ratio, phi, s)

    def target_input(self, s: torch.Tensor) -> dict:
        return {"target": t_of_phi(self.schedule, s)}

    def weighted(self, err, phi, delta, dev):
        if self.weighting == "scm":
            return super().weighted(err, phi, delta, dev)
        adaptive = err / (err.detach() + self.meanflow_c) ** self.meanflow_p  # MeanFlow's adaptive loss weight
        return adaptive.mean(), {}

    @torch.no_grad()
    def probes(self, student: nn.Module, x: torch.Tensor, iteration: int) -> dict:
        if not self.composition_every:
            return {}
        if iteration % self.composition_every == 0 or not self._gap:
            if self._rows is None:  # fixed noise rows at t = 1, the same for the whole trial
                g = torch.Generator().manual_seed(0)
                self._rows = torch.randn((COMPOSITION_ROWS, *x.shape[1:]), generator=g, dtype=torch.float64)
            self._gap = {"composition_gap": compose_gap(jump(student), self._rows.to(x.device))}
        return dict(self._gap)

    def evaluations(self, ema: nn.Module, y: torch.Tensor | None = None, seed: int = 0):
        """Deterministic jumps on the uniform grid at every count in eval_steps (and gamma-sampling with gamma > 0)."""
        sched = self.schedule
        f = targeted(ema, y)  # x_hat whose DDIM step t -> s is the jump
        out = [(self.label, K, lambda noise, K=K: flowmap_sample(f, sched, noise, K)) for K in self.eval_steps]
        if self.gamma > 0:
            out += [
                (
                    f"{self.label}_gamma{self.gamma:g}",
                    K,
                    lambda noise, K=K: flowmap_sample(
                        f, sched, noise, K, self.gamma, torch.Generator(device=noise.device).manual_seed(seed)
                    ),
                )
                for K in self.eval_steps
            ]
        return out


# ---- Registry entry: the `method:` keys of name: flowmap (it shares sCM's time law, tangent and JVP options) ----


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    eval_steps: list[Annotated[int, Field(ge=1)]] = Field(
        [1, 2, 4, 8], description="flowmap: step counts its one trial evaluates"
    )
    flow_ratio: Annotated[float, Field(ge=0, le=1)] = Field(
        0.75, description="flowmap: P(s < phi); the rest train flow matching"
    )
    s_zero_prob: Annotated[float, Field(ge=0, le=1)] = Field(0.1, description="flowmap: P(s = 0), the 1-step jump")
    weighting: Literal["scm", "meanflow"] = Field(
        "scm", description="flowmap: sCM's prior and learned u, or MeanFlow's adaptive"
    )
    meanflow_p: Annotated[float, Field(ge=0)] = Field(
        1.0, description="flowmap, weighting meanflow: ||e||^2 / sg(||e||^2 + c)^p"
    )
    meanflow_c: Annotated[float, Field(gt=0)] = 1e-3
    r_max: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="flowmap: the tangent's r after its warm-up (AYF: 0.99)"
    )
    gamma: Annotated[float, Field(ge=0, le=1)] = Field(0.0, description="flowmap: > 0 also evaluates gamma-sampling")
    composition_every: Annotated[int, Field(ge=0)] = Field(
        100, description="flowmap: composition gap measured every N steps (0: off)"
    )


def check(m) -> None:
    if m.name != "flowmap":
        return
    if m.s_zero_prob > m.flow_ratio:
        raise OptionError("s_zero_prob", f"must be at most flow_ratio ({m.flow_ratio:g}): s = 0 rows are jumps")
    if m.student_steps not in m.eval_steps:
        raise OptionError(
            "student_steps", f"must be one of eval_steps {m.eval_steps} (the point Tune ranks a flow-map trial by)"
        )


def label(m) -> str:
    """fmd / fmt (flow-map distillation / training); guided: e.g. fmd_cfg1."""
    if m.mode != "distill":
        return "fmt"
    return f"fmd_cfg{m.guidance:g}" if m.guidance > 0 else "fmd"


def build(cfg, c) -> FlowMap:
    from multistep.config import ConfigError

    m = cfg.method
    if not hasattr(c.student.net, "add_target_input"):
        raise ConfigError(
            "method.name: flowmap needs a platform student network (mlp or unet) to add the target-time input to"
        )
    if getattr(c.student.net, "target_proj", None) is None:
        c.student.net.add_target_input()  # zero-initialised: the warm start's outputs for every s
    return FlowMap(
        **scm_options(cfg, c),
        r_max=m.r_max,
        eval_steps=tuple(m.eval_steps),
        flow_ratio=m.flow_ratio,
        s_zero_prob=m.s_zero_prob,
        weighting=m.weighting,
        meanflow_p=m.meanflow_p,
        meanflow_c=m.meanflow_c,
        gamma=m.gamma,
        composition_every=m.composition_every,
    )


register(MethodSpec("flowmap", Options, build, label, check, guided=True))
