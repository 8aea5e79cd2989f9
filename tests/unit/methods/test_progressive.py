"""Progressive distillation (methods/progressive.py): phase changes and the target against a hand-computed case."""

import pytest
import torch
from torch import nn

from multistep.data.gmm import GaussianMixture
from multistep.diffusion.schedules import make_schedule
from multistep.methods.progressive import Progressive
from multistep.nets.analytic import MixtureDenoiser
from multistep.nets.mlp import MLP, VDenoiser
from multistep.train.loop import Hooks, fit, new_state

F64 = torch.float64
COS = make_schedule("cosine")
GMM = GaussianMixture.random((4,), 3, 0.6, 0.1, seed=0)

pytestmark = pytest.mark.usefixtures("one_thread")


class Constant(nn.Module):
    """f(z, t) = c + p: the denoiser of a point mass at c; p is a (trainable) offset."""

    def __init__(self, c: torch.Tensor, offset: float = 0.0):
        super().__init__()
        self.c, self.p = c, nn.Parameter(torch.tensor(offset, dtype=F64))

    def forward(self, z, t):
        return (self.c + self.p).expand_as(z).to(z.dtype)


def test_the_target_of_a_point_mass_teacher_is_the_point_and_the_loss_is_hand_computed():
    """Two DDIM half-steps of a teacher that always says x = c, then inverse DDIM, give back exactly c; so for a
    student c + d the loss is mean_i w(t_i) d^2 with t_i = (i + 1) / N drawn as the method draws it."""
    c = torch.tensor([0.3, -0.7, 1.1, 0.2], dtype=F64)
    pd = Progressive(COS, Constant(c), start_steps=8, student_steps=2)
    x = GMM.sample(64, torch.Generator().manual_seed(1), dtype=F64)
    loss0, _ = pd.loss(Constant(c), x, 0, 10, torch.Generator().manual_seed(2))
    assert float(loss0.detach()) == pytest.approx(0.0, abs=1e-20)
    d = 0.05
    loss, logs = pd.loss(Constant(c, d), x, 0, 10, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)  # the method's draws, in its order: eps, then the step index
    torch.randn(x.shape, generator=g, dtype=F64)
    i = torch.randint(0, 4, (64,), generator=g)  # phase 0: N = start_steps / 2 = 4 steps
    t = (i + 1).double() / 4
    expected = (COS.snr(t).clamp_min(1.0) * d**2).mean()  # max(snr, 1) * mean_d(d^2)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-10)
    assert float(logs["phase"]) == 0.0


def test_phases_halve_the_steps_and_each_phase_teaches_the_next():
    """start 16 -> student 2: phases of 8, 4, 2 steps, each a third of training; at a boundary the phase's student
    (PD keeps no EMA: eval_ema_decay 0) is snapshotted and becomes the frozen teacher of the next phase."""
    teacher = MixtureDenoiser(GMM, COS)
    pd = Progressive(COS, teacher, start_steps=16, student_steps=2)
    assert pd.phases == 3 and [pd.steps_of(p) for p in range(3)] == [8, 4, 2] and pd.eval_ema_decay(30) == 0.0
    torch.manual_seed(0)
    state = new_state(VDenoiser(MLP(GMM.dim, 32, 2, 16), COS), 1e-3, 0, pd)
    seen = {}

    def log(it, means):
        seen[it] = (means["phase"], pd._teacher)

    fit(state, pd, lambda g: GMM.sample(32, g), 30, 1.0, 0.0, 1, 10**6, Hooks(log=log))
    assert [seen[it][0] for it in (1, 9, 10, 11, 19, 20, 21, 30)] == [0, 0, 0, 1, 1, 1, 2, 2]  # logged after the step
    assert seen[9][1] is None and seen[10][1] is not None  # phase 0 learns from the diffusion teacher only
    assert seen[10][1] is seen[19][1] and seen[20][1] is not seen[10][1]  # one frozen teacher per phase
    assert sorted(pd.snapshots) == [2, 4, 8]
    frozen = seen[20][1]  # the phase-1 student, as it was at iteration 20, never trained afterwards
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(torch.equal(frozen.state_dict()[k], v) for k, v in pd.snapshots[4].items())
    assert not all(torch.equal(pd.snapshots[4][k], v) for k, v in pd.snapshots[2].items())
    assert [(label, steps) for label, steps, _ in pd.evaluations(state.ema)] == [("pd", 2), ("pd", 4), ("pd", 8)]
