"""Distribution matching distillation (DMD2, Yin et al. 2024): reverse-KL gradients from a real and a fake score.

Notation of few-step-families.md §3. The generator is a platform student sampled in S steps (MCM's Algorithm 2:
x_hat at the grid points t_k = k / S). Every iteration:

1. generator sample x_g = G(z_{t_k}, t_k) with gradients, where z_{t_k} comes from backward simulation (k - 1
   no-grad student steps from noise; k cycles through 1..S with the iteration, DMD2's `backsim`) or, with
   generator_input: forward, from real data noised to a random grid point (FastGen's cheaper variant);
2. fake_updates steps of the fake score psi (a v-network, its own Adam) on x_g: v-regression at critic times
   phi_D = arctan(e^n), n ~ N(critic_p_mean, critic_p_std), z_D = cos(phi_D) x_g + sin(phi_D) eps;
3. the generator loss at one fresh critic time, real score = the teacher (guided with method.guidance):

       grad = (x_psi - x_T) / (mean_dims |x_g - x_T| + 1e-6),    L_G = 1/2 mean (x_g - sg(x_g - grad))^2

   so the generator moves along x_T - x_psi (towards the teacher's denoising of its own samples, away from the
   fake's): the reverse-KL gradient E[s_fake - s_real] in x_hat form. An iteration is one generator update, so
   the two-time-scale rule (DMD2: 5 fake updates per generator update) is `fake_updates`, and a DMD iteration
   costs about fake_updates + 3 network passes (wall time is logged).

Conventions chosen here (docs/methods.md):
- the fake score starts as a copy of the student when the method is built: the teacher's copy for network
  teachers (the student starts as one), the warm start for the analytic mixture teacher (which has no network).
- the fake score's learning rate is train.learning_rate unless fake_learning_rate is set (DMD2: equal rates).
- the GAN head (DMD2's classifier on the fake score's features, `gan: true`, off by default): a small MLP on psi's
  middle features (a UNet's middle block, spatially averaged; the MLP's last hidden layer), trained with psi in its
  fake updates on noised real data against noised generator samples (logistic loss, weight gan_critic_weight,
  DMD2's guidance_cls_loss_weight); the generator adds gan_weight x the non-saturating term softplus(-D(x_g))
  (DMD2's gen_cls_loss_weight, 3e-3 on ImageNet-64). Both at one fresh critic time per sample, as the DMD loss.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from multistep.diffusion.ddim import bcast, ddim_step
from multistep.diffusion.samplers import full_time, mcm_sample
from multistep.diffusion.schedules import Schedule
from multistep.methods.base import MethodSpec, conditioned, guided, register, split_batch
from multistep.methods.scm import angle_law, t_of_phi


def dmd_gradient(x_g: torch.Tensor, x_T: torch.Tensor, x_psi: torch.Tensor) -> torch.Tensor:
    """(x_psi - x_T) / (mean_dims |x_g - x_T| + 1e-6): descending it moves x_g along x_T - x_psi (DMD eq. 7)."""
    scale = (x_g - x_T).abs().reshape(x_g.shape[0], -1).mean(1)
    return (x_psi - x_T) / bcast(scale + 1e-6, x_g)


def feature_layer(den: nn.Module) -> tuple[nn.Module, bool]:
    """(module, read its input) where the GAN head reads psi's features: our UNet's middle block, a diffusers UNet's
    mid_block, the MLP's last hidden activation (the input of its output layer)."""
    net = den.net
    if isinstance(getattr(net, "mid", None), nn.ModuleList):
        return net.mid[-1], False
    if hasattr(getattr(net, "unet", None), "mid_block"):
        return net.unet.mid_block, False
    if isinstance(getattr(net, "net", None), nn.Sequential):
        return net.net[-1], True
    raise ValueError(f"method.gan: no middle features to read in a {type(net).__name__} fake score (TorchScript?)")


def features(den: nn.Module, z: torch.Tensor, t: torch.Tensor, y) -> torch.Tensor:
    """psi's middle features at (z, t): one forward pass with a hook on feature_layer, flattened to (B, C)."""
    layer, read_input = feature_layer(den)
    got = []
    if read_input:
        handle = layer.register_forward_pre_hook(lambda _m, inputs: got.append(inputs[0]))
    else:
        handle = layer.register_forward_hook(lambda _m, _i, out: got.append(out))
    try:
        conditioned(den, y)(z, t)
    finally:
        handle.remove()
    f = got[-1].float()
    return f.mean(dim=tuple(range(2, f.dim()))) if f.dim() > 2 else f  # spatial mean of 4-D features


class FeatureHead(nn.Module):
    """DMD2's discriminator head: (B, C) features of the fake score -> one real-vs-generated logit."""

    def __init__(self, channels: int, hidden: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.mlp(f).squeeze(1)


@contextmanager
def frozen(*modules: nn.Module):
    """Parameters without gradients for the block (the generator's GAN term flows through psi and D to x_g only)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@dataclass
class FakeScore:
    """psi: a denoiser trained online on the generator's samples, with its own Adam (averaged over ranks); with a
    GAN head, the head trains in the same steps and the same Adam."""

    net: nn.Module  # a VDenoiser: net.v(z, t, y) is trained, net(z, t, y) is x_hat
    schedule: Schedule
    learning_rate: float
    p_mean: float = 0.0  # critic time law (rCM: sigma ~ LogNormal(0, 1.6))
    p_std: float = 1.6
    head: FeatureHead | None = None  # DMD2's GAN classifier on net's features (None: no GAN term)
    critic_weight: float = 1e-2  # weight of the head's logistic loss in psi's update
    steps: int = 0  # updates taken (checkpointed)
    _opt: torch.optim.Optimizer | None = field(default=None, repr=False)

    def optimizer(self) -> torch.optim.Optimizer:
        if self._opt is None:
            params = [*self.net.parameters(), *(self.head.parameters() if self.head is not None else ())]
            self._opt = torch.optim.Adam(params, lr=self.learning_rate)
        return self._opt

    def noised(self, x: torch.Tensor, g: torch.Generator):
        """(z_D, t_D, eps) at critic times phi_D of the law, float64."""
        phi = angle_law(self.schedule, x.shape[0], g, self.p_mean, self.p_std).to(x.device)
        eps = torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.device)
        z = bcast(torch.cos(phi), x) * x.double() + bcast(torch.sin(phi), x) * eps
        return z, t_of_phi(self.schedule, phi), eps

    def logits(self, x: torch.Tensor, y, g: torch.Generator) -> torch.Tensor:
        """D(x): the head on psi's features of x noised to one critic time per sample (gradients flow to x)."""
        z, t, _ = self.noised(x, g)
        return self.head(features(self.net, z, t, y))

    def critic_loss(self, x_real: torch.Tensor, x_g: torch.Tensor, y, g: torch.Generator) -> torch.Tensor:
        """The head's logistic loss: real data -> 1, generator samples -> 0 (DMD2's classifier loss)."""
        real, fake = self.logits(x_real, y, g), self.logits(x_g.detach(), y, g)
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def update(self, x_g: torch.Tensor, y, g: torch.Generator, x_real: torch.Tensor | None = None) -> torch.Tensor:
        """One v-regression step on the generator's (detached) samples (+ the head's loss on real data against
        them); returns the v-regression loss."""
        z, t, eps = self.noised(x_g.detach(), g)
        a, s = (bcast(u, z) for u in self.schedule.alpha_sigma(t))
        v = a * eps - s * x_g.detach().double()  # v = cos(phi) eps - sin(phi) x_g
        loss = (self.net.v(z, t, y).double() - v).pow(2).mean()
        total = loss + self.critic_weight * self.critic_loss(x_real, x_g, y, g) if self.head is not None else loss
        opt = self.optimizer()
        opt.zero_grad(set_to_none=True)
        total.backward()
        from multistep.train.replicas import Replicas, world_size

        if world_size() > 1:  # every rank's fake score (and head) takes the same step
            Replicas().average_gradients(self.net)
            if self.head is not None:
                Replicas().average_gradients(self.head)
        opt.step()
        self.steps += 1
        return loss.detach()

    def state_dict(self) -> dict:
        sd = {"net": self.net.state_dict(), "opt": self.optimizer().state_dict(), "steps": self.steps}
        return sd | ({"head": self.head.state_dict()} if self.head is not None else {})

    def load_state_dict(self, sd: dict) -> None:
        self.net.load_state_dict(sd["net"])
        if self.head is not None:
            self.head.load_state_dict(sd["head"])
        self.optimizer().load_state_dict(sd["opt"])
        self.steps = int(sd["steps"])


def generator_sample(student, schedule, x, y, S: int, iteration: int, how: str, g: torch.Generator):
    """x_g = G(z_{t_k}, t_k) with gradients; z_{t_k} by backward simulation (k - 1 no-grad steps from noise, k
    cycling 1..S) or by noising real data x to a random grid point t_k (how = "forward")."""
    B, dev = x.shape[0], x.device
    if how == "backward":
        k = iteration % S + 1  # the generator's k-th step
        z = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dev)  # z_1
        with torch.no_grad():
            for j in range(S, S - k + 1, -1):
                t, s = full_time(z, j / S), full_time(z, (j - 1) / S)
                z = ddim_step(schedule, conditioned(student, y)(z, t).double(), z, t, s)
        t_k = full_time(z, (S - k + 1) / S)
    else:
        j = torch.randint(1, S + 1, (B,), generator=g).to(dev)
        t_k = j.double() / S
        a, s = schedule.alpha_sigma(t_k)
        eps = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dev)
        z = bcast(a, x) * x.double() + bcast(s, x) * eps
    return conditioned(student, y)(z, t_k).double()


def dmd_loss(teacher, fake: FakeScore, guidance: float, x_g: torch.Tensor, y, g: torch.Generator, gan_weight=0.0):
    """L_G at one fresh critic time (the real score: the teacher, the fake: psi, both without gradients), plus
    gan_weight x the non-saturating GAN term softplus(-D(x_g)) when psi has a head."""
    with torch.no_grad():
        z, t, _ = fake.noised(x_g.detach(), g)
        x_T = guided(teacher, z, t, y, guidance)  # the real score, guided as for every teacher step
        x_psi = conditioned(fake.net, y)(z, t).double()
        grad = dmd_gradient(x_g.detach(), x_T, x_psi)
    loss = 0.5 * (x_g - (x_g - grad).detach()).pow(2).mean()
    logs = {"dmd_grad_rms": grad.pow(2).mean().sqrt()}
    if fake.head is None:
        return loss, logs
    with frozen(fake.net, fake.head):
        gan = F.softplus(-fake.logits(x_g, y, g)).mean()
    return loss + gan_weight * gan, logs | {"gan_loss": gan.detach()}


@dataclass
class DMD:
    schedule: Schedule
    student_steps: int
    teacher: nn.Module
    fake: FakeScore
    fake_updates: int = 5  # fake-score steps per generator step (DMD2's two-time-scale ratio)
    generator_input: str = "backward"  # "backward" simulation | "forward" (noised real data)
    guidance: float = 0.0  # CFG scale of the real score (a class-conditional teacher)
    gan_weight: float = 0.0  # weight of the generator's GAN term (used when fake.head is set)
    label: str = "dmd"

    def loss(self, student: nn.Module, x: torch.Tensor, iteration: int, total: int, g: torch.Generator):
        x, y = split_batch(x)
        x_g = generator_sample(student, self.schedule, x, y, self.student_steps, iteration, self.generator_input, g)
        fake_losses = [self.fake.update(x_g, y, g, x) for _ in range(self.fake_updates)]
        loss, logs = dmd_loss(self.teacher, self.fake, self.guidance, x_g, y, g, self.gan_weight)
        return loss, {"loss": loss.detach(), "fake_loss": torch.stack(fake_losses).mean()} | logs

    def after_step(self, student: nn.Module, ema: nn.Module | None = None, iteration: int = 0, total: int = 1):
        pass

    def state_dict(self) -> dict:
        return {"fake": self.fake.state_dict()}

    def load_state_dict(self, sd: dict, student: nn.Module) -> None:
        self.fake.load_state_dict(sd["fake"])

    def evaluations(self, ema: nn.Module, y: torch.Tensor | None = None, seed: int = 0):
        """The generator's S steps: MCM's Algorithm 2 (deterministic DDIM between its grid points)."""
        S, sched, ema = self.student_steps, self.schedule, conditioned(ema, y)
        return [(self.label, S, lambda noise: mcm_sample(ema, sched, noise, S))]


def fake_score(cfg, c) -> FakeScore:
    """psi as a copy of the student at build time (the teacher's copy, or the warm start) with its own Adam, and
    with method.gan a head sized by one forward pass on a zero batch of the data's shape."""
    m = cfg.method
    net = copy.deepcopy(c.student).requires_grad_(True).train()
    lr = m.fake_learning_rate or cfg.train.learning_rate
    head = None
    if m.gan:
        p = next(net.parameters())
        z = torch.zeros(2, *c.data.shape, device=p.device, dtype=p.dtype)
        with torch.no_grad():
            channels = features(net, z, torch.full((2,), 0.5, device=p.device), None).shape[1]
        head = FeatureHead(channels).to(p.device)
    return FakeScore(net, c.schedule, lr, m.critic_p_mean, m.critic_p_std, head, m.gan_critic_weight)


# ---- Registry entry: the `method:` keys of name: dmd, its builder and its label ----


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fake_updates: Annotated[int, Field(ge=1)] = Field(5, description="dmd, rcm: fake-score steps per generator step")
    fake_learning_rate: Annotated[float, Field(gt=0)] | None = Field(
        None, description="dmd, rcm: default train.learning_rate"
    )
    critic_p_mean: float = Field(
        0.0, description="dmd, rcm: critic times phi_D = arctan(e^n), n ~ N(critic_p_mean, critic_p_std)"
    )
    critic_p_std: Annotated[float, Field(gt=0)] = 1.6
    generator_input: Literal["backward", "forward"] = Field(
        "backward", description="dmd: backward simulation or noised real data"
    )
    gan: bool = Field(False, description="dmd, rcm: DMD2's GAN head on the fake score's features (docs/methods.md)")
    gan_weight: Annotated[float, Field(ge=0)] = Field(
        3e-3, description="dmd, rcm: generator's GAN term (DMD2 ImageNet-64: 3e-3)"
    )
    gan_critic_weight: Annotated[float, Field(gt=0)] = Field(
        1e-2, description="dmd, rcm: head's loss in the fake update (DMD2: 1e-2)"
    )


def label(m) -> str:
    """dmd; with the GAN head dmd_gan; guided: + _cfg<w>."""
    return "dmd" + ("_gan" if m.gan else "") + (f"_cfg{m.guidance:g}" if m.guidance > 0 else "")


def check(m) -> None:
    from multistep.methods.base import OptionError

    if m.name == "dmd" and m.mode != "distill":
        raise OptionError("mode", "dmd distils a teacher (its real score): mode: distill")
    if m.gan and m.name not in ("dmd", "rcm"):
        raise OptionError("gan", f"the GAN head sits on a fake score: method dmd or rcm, not {m.name}")


def build(cfg, c) -> DMD:
    m = cfg.method
    return DMD(
        schedule=c.schedule,
        student_steps=m.student_steps,
        teacher=c.teacher,
        fake=fake_score(cfg, c),
        fake_updates=m.fake_updates,
        generator_input=m.generator_input,
        guidance=m.guidance,
        gan_weight=m.gan_weight,
    )


register(MethodSpec("dmd", Options, build, label, check, guided=True))
