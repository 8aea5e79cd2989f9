"""rCM (Zheng et al. 2025): sCM's objective plus the DMD loss, forward and reverse divergence on one student.

few-step-families.md §3 ("rCM"): the student is an sCM student (methods/scm.py, S segments, sampled by MCM's
Algorithm 2); after sCM's tangent warm-up every iteration also takes fake_updates steps of a fake score on the
student's own samples (backward simulation through its S steps) and adds the DMD generator loss (methods/dmd.py):

    L = L_sCM + dmd_weight L_DMD

rCM weighs 100 L_sCM (summed over the D elements) against 1 L_DMD; the sCM loss here averages over elements, so
the same balance is dmd_weight = 1 / (100 D), the default (dmd_weight: None). Before the warm-up ends neither the
fake score nor the DMD term runs (their logs read 0). The fake score, its Adam and its step count travel in the
trial checkpoint beside sCM's u(phi).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from multistep.methods.base import MethodSpec, register, split_batch
from multistep.methods.dmd import FakeScore, dmd_loss, fake_score, generator_sample
from multistep.methods.scm import SCM, scm_options

ZERO = {"dmd_loss": 0.0, "fake_loss": 0.0, "dmd_grad_rms": 0.0}  # the DMD logs before the warm-up ends


@dataclass
class RCM(SCM):
    fake: FakeScore | None = None
    fake_updates: int = 5
    dmd_weight: float | None = None  # None: 1 / (100 D), rCM's balance
    gan_weight: float = 0.0  # the generator's GAN term inside L_DMD (when fake.head is set)

    def __post_init__(self):
        self.label = self.label or "rcm"

    def loss(self, student: nn.Module, x: torch.Tensor, iteration: int, total: int, g: torch.Generator):
        loss, logs = super().loss(student, x, iteration, total, g)
        if iteration + 1 < self.tangent_warmup * total:  # sCM alone while its tangent warms up
            zero = ZERO | ({"gan_loss": 0.0} if self.fake.head is not None else {})
            return loss, logs | {k: torch.tensor(v, dtype=torch.float64) for k, v in zero.items()}
        x, y = split_batch(x)
        x_g = generator_sample(student, self.schedule, x, y, self.student_steps, iteration, "backward", g)
        fake_losses = [self.fake.update(x_g, y, g, x) for _ in range(self.fake_updates)]
        l_dmd, dmd_logs = dmd_loss(self.teacher, self.fake, self.guidance, x_g, y, g, self.gan_weight)
        w = self.dmd_weight if self.dmd_weight is not None else 1.0 / (100 * x[0].numel())
        total_loss = loss + w * l_dmd
        extra = {"dmd_loss": l_dmd.detach(), "fake_loss": torch.stack(fake_losses).mean()}
        return total_loss, logs | {"loss": total_loss.detach()} | extra | dmd_logs

    def state_dict(self) -> dict:
        return super().state_dict() | {"fake": self.fake.state_dict()}

    def load_state_dict(self, sd: dict, student: nn.Module) -> None:
        super().load_state_dict(sd, student)
        self.fake.load_state_dict(sd["fake"])


# ---- Registry entry: name: rcm (sCM's options, DMD's fake-score options, and its own weight) ----


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dmd_weight: Annotated[float, Field(ge=0)] | None = Field(
        None, description="rcm: weight of L_DMD (default 1 / (100 D), rCM's)"
    )


def check(m) -> None:
    from multistep.methods.base import OptionError

    if m.name == "rcm" and m.mode != "distill":
        raise OptionError("mode", "rcm distils a teacher (its DMD term's real score): mode: distill")


def label(m) -> str:
    """rcm; with the GAN head rcm_gan; guided: + _cfg<w>."""
    return "rcm" + ("_gan" if m.gan else "") + (f"_cfg{m.guidance:g}" if m.guidance > 0 else "")


def build(cfg, c) -> RCM:
    m = cfg.method
    return RCM(
        **scm_options(cfg, c),
        fake=fake_score(cfg, c),
        fake_updates=m.fake_updates,
        dmd_weight=m.dmd_weight,
        gan_weight=m.gan_weight,
    )


register(MethodSpec("rcm", Options, build, label, check, guided=True))
