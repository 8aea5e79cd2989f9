"""TRACT (methods/tract.py): phases around an MCM target, the self-teacher EMA carried across phases, the inference
EMA decay, and the target against a hand-computed case."""

import pytest
import torch

from multistep.diffusion.schedules import make_schedule
from multistep.methods.tract import TRACT
from multistep.nets.analytic import MixtureDenoiser
from multistep.nets.mlp import MLP, VDenoiser
from multistep.train.loop import Hooks, fit, new_state
from unit.methods.test_progressive import F64, GMM, Constant

COS = make_schedule("cosine")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_target_of_a_point_mass_teacher_is_the_point_and_the_loss_is_hand_computed():
    """Teacher and self-teacher both say x = c: the DDIM step, the self-teacher step and inverse DDIM give back c, so
    a student c + d pays mean_i max(snr(t_i), 1) * sum_d(d^2) (TRACT's summed squared l2)."""
    c = torch.tensor([0.3, -0.7, 1.1, 0.2], dtype=F64)
    tract = TRACT(COS, Constant(c), time_schedule=(8, 2))
    x = GMM.sample(64, torch.Generator().manual_seed(1), dtype=F64)
    loss0, _ = tract.loss(Constant(c), x, 0, 10, torch.Generator().manual_seed(2))
    assert float(loss0.detach()) == pytest.approx(0.0, abs=1e-20)
    d = 0.05
    student = Constant(c, d)
    tract = TRACT(COS, Constant(c), time_schedule=(8, 2))
    tract.loss(student, x, 0, 10, torch.Generator().manual_seed(2))  # builds the self-teacher: an EMA copy of c + d
    tract.inner._target.p.data.zero_()  # ... which we reset to say c, as the teacher does
    z_t, t, x_tgt, _, _ = tract.inner.targets(student, x, 0, 10, torch.Generator().manual_seed(2))
    assert torch.allclose(x_tgt, c.expand_as(x_tgt), atol=1e-12)  # the target is the point mass
    loss, _ = tract.loss(student, x, 0, 10, torch.Generator().manual_seed(2))
    expected = (COS.snr(t).clamp_min(1.0) * 4 * d**2).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-9)


def test_phases_switch_the_teacher_to_the_inference_ema_and_keep_the_self_teacher():
    teacher = MixtureDenoiser(GMM, COS)
    tract = TRACT(COS, teacher, time_schedule=(16, 4, 1))
    total = 20
    assert tract.phases == 2 and tract.student_steps == 1
    assert tract.eval_ema_decay(total) == pytest.approx(1e-3 ** (1 / 10))  # mu_I = 1e-3^(1 / iterations per phase)
    torch.manual_seed(0)
    state = new_state(VDenoiser(MLP(GMM.dim, 32, 2, 16), COS), 1e-3, 0, tract)
    seen = {}

    def log(it, means):
        inner = tract.inner
        seen[it] = (
            means["phase"],
            inner.student_steps,
            inner.anneal_params["n"],
            inner.teacher,
            inner._target,
            inner._target_updates,
        )

    fit(state, tract, lambda g: GMM.sample(32, g), total, 1.0, tract.eval_ema_decay(total), 1, 10**6, Hooks(log=log))
    # (phase of the step just taken, then the MCM target the next step uses: S and its fixed teacher steps)
    assert [seen[it][:3] for it in (1, 9, 10, 11, 20)] == [(0, 4, 16), (0, 4, 16), (0, 1, 4), (1, 1, 4), (1, 1, 4)]
    assert seen[9][3] is teacher and seen[10][3] is not teacher  # phase 1 learns from the inference EMA
    assert not any(p.requires_grad for p in seen[10][3].parameters())
    assert seen[10][4] is seen[9][4]  # the self-teacher EMA is not reset between phases ...
    assert seen[20][5] == 20  # ... and its update count (bias correction) runs on


def test_the_inference_ema_is_bias_corrected():
    """ml-tract's ModuleEMA (algorithms.md §7.4): the k-th update has weight (1 - mu) / (1 - mu^k), so the first
    copies the student; a plain EMA would still be 1 - mu of the way from the warm start."""
    tract = TRACT(COS, MixtureDenoiser(GMM, COS), time_schedule=(8, 2))
    torch.manual_seed(0)
    state = new_state(VDenoiser(MLP(GMM.dim, 16, 1, 8), COS), 1e-2, 0, tract)
    total, mu = 4, tract.eval_ema_decay(4)
    students = []
    log = lambda it, m: students.append([p.detach().clone() for p in state.student.parameters()])
    fit(state, tract, lambda g: GMM.sample(32, g), total, 1.0, mu, 1, 10**6, Hooks(log=log))
    expected = [p.clone() for p in students[0]]  # k = 1: a copy
    for k, params in enumerate(students[1:], start=2):
        w = (1 - mu) / (1 - mu**k)
        expected = [e + w * (p - e) for e, p in zip(expected, params)]
    for e, got in zip(expected, state.ema.parameters()):
        assert torch.allclose(got, e, atol=1e-6)
    assert not torch.allclose(expected[0], students[-1][0])  # the EMA is not just the last student
