"""DMD and rCM (methods/dmd.py, methods/rcm.py): the reverse-KL gradient in closed form on Gaussian data (0 when
the generator's law is the teacher's, pointing the right way when it is not), the sign decides whether FD falls or
explodes on a mixture, backward simulation, and a resumed trial continuing bit for bit with its fake score."""

import copy

import pytest
import torch

from multistep.data.gmm import GaussianMixture
from multistep.diffusion.samplers import mcm_sample
from multistep.diffusion.schedules import make_schedule
from multistep.methods import dmd
from multistep.methods.dmd import DMD, FakeScore, FeatureHead, dmd_loss, features, generator_sample
from multistep.methods.rcm import RCM
from multistep.metrics.frechet import frechet_distance, gaussian_stats
from multistep.nets.analytic import MixtureDenoiser
from multistep.nets.mlp import MLP, VDenoiser
from multistep.train.loop import Hooks, WarmStart, fit, new_state, warm_start

C2 = 0.3


def gaussian_denoiser(sched, var: float):
    """The exact x_hat of N(0, var I): alpha var z / (alpha^2 var + sigma^2)."""

    def f(z, t, y=None):
        a, s = (u.double().reshape(-1, 1) for u in sched.alpha_sigma(t.double()))
        return a * var * z.double() / (a**2 * var + s**2)

    return f


@pytest.mark.parametrize("scale, direction", [(1.0, 0), (1.5, -1), (0.6, 1)])
def test_generator_gradient_is_zero_at_the_teacher_and_pulls_towards_it(scale, direction):
    """x_g ~ N(0, scale^2 C2), the fake score its exact denoiser, the real one N(0, C2)'s: the loss's gradient on
    x_g is 0 when scale = 1, and one descent step shrinks (scale > 1) or widens (scale < 1) the samples."""
    sched = make_schedule("cosine")
    fake = FakeScore(None, sched, 1e-3)
    fake.net = gaussian_denoiser(sched, scale**2 * C2)
    x_g = (scale * C2**0.5 * torch.randn(4096, 3, generator=torch.Generator().manual_seed(0))).double()
    x_g.requires_grad_(True)
    loss, _ = dmd_loss(gaussian_denoiser(sched, C2), fake, 0.0, x_g, None, torch.Generator().manual_seed(1))
    loss.backward()
    step = -x_g.grad  # the descent direction
    if direction == 0:
        assert x_g.grad.abs().max() == 0
    else:
        radial = (step * x_g.detach()).sum() / (step.norm() * x_g.detach().norm())  # cos(descent, x_g)
        assert radial * direction > 0.3, radial  # measured 0.44 (the critic noise makes it less than 1)


def _mixture_student(seed=0):
    sched = make_schedule("cosine")
    gmm = GaussianMixture.random((2,), 4, 0.8, 0.1, 0)
    teacher = MixtureDenoiser(gmm, sched)
    torch.manual_seed(seed)
    student = VDenoiser(MLP(2, 64, 3, 8, time_features="octave"), sched)
    warm_start(
        student.net,
        sched,
        teacher,
        lambda g: gmm.sample(256, g),
        WarmStart(400, 2e-3, 0, schedule="cosine", check_every=0, patience=0),
    )
    return sched, gmm, teacher, student


@pytest.mark.parametrize("sign", [1, -1])
def test_the_sign_of_the_dmd_gradient_decides_whether_fd_falls(sign, monkeypatch):
    """300 one-step DMD iterations on a 2-D mixture teacher: FD to the data falls from the warm start's 1.42
    (measured: 0.03); with the gradient's sign flipped it rises (measured: past 10^5)."""
    if sign < 0:
        original = dmd.dmd_gradient
        monkeypatch.setattr(dmd, "dmd_gradient", lambda *a: -original(*a))
    sched, gmm, teacher, student = _mixture_student()
    m = DMD(sched, 1, teacher, FakeScore(copy.deepcopy(student), sched, 1e-3))
    before, after = _fd_before_and_after(m, student, sched, gmm)
    assert (after < 0.25 * before) if sign > 0 else (after > 4 * before), (before, after)


def _fd_before_and_after(m, student, sched, gmm, iterations=300) -> tuple[float, float]:
    """FD of the one-step student's samples (2,000 fixed noise rows) against the data, before and after training."""
    state = new_state(student, 1e-3, 0, method=m)
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    data = gaussian_stats(gmm.sample(2000, torch.Generator().manual_seed(2)).double().numpy())

    def fd():
        return frechet_distance(*gaussian_stats(mcm_sample(state.ema, sched, noise, 1)[0].numpy()), *data)

    before = fd()
    fit(state, m, lambda g: gmm.sample(256, g), iterations, 1.0, 0.99, 100, 1000)
    return before, fd()


def test_backward_simulation_runs_the_students_own_steps():
    """k cycles 1..S: the k-th generator sample is x_hat at t = (S - k + 1) / S after k - 1 of the student's own
    DDIM steps from noise, i.e. its (k-1)-step MCM sample's next x_hat."""
    sched = make_schedule("cosine")
    teacher = gaussian_denoiser(sched, C2)
    x = torch.zeros(8, 3)
    for iteration, k in ((0, 1), (1, 2), (2, 3), (3, 1)):
        got = generator_sample(teacher, sched, x, None, 3, iteration, "backward", torch.Generator().manual_seed(4))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        z = noise
        for j in range(3, 3 - k + 1, -1):  # k - 1 steps of Algorithm 2
            t, s = torch.full((8,), j / 3, dtype=torch.float64), torch.full((8,), (j - 1) / 3, dtype=torch.float64)
            from multistep.diffusion.ddim import ddim_step

            z = ddim_step(sched, teacher(z, t), z, t, s)
        want = teacher(z, torch.full((8,), (3 - k + 1) / 3, dtype=torch.float64))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(mcm_sample(teacher, sched, noise, 1)[0], teacher(noise, torch.ones(8, dtype=torch.float64)))


def _with_head(student, sched, lr=1e-3):
    fake = copy.deepcopy(student)
    return FakeScore(fake, sched, lr, head=FeatureHead(features(fake, torch.zeros(1, 2), torch.ones(1), None).shape[1]))


def test_the_gan_head_separates_real_from_generated_and_pulls_the_generator_towards_real():
    """The head trains in the fake updates (critic weight 1 here): on real samples against the same samples shifted
    by +4 its logistic loss falls below half of chance's log 4 and it calls 3 in 4 of each side right (measured:
    0.57, 0.86 and 0.81; noise at high critic times keeps it from 0); then the generator's GAN term alone, psi and
    the head frozen, moves the shifted samples back towards the data. A sign error in either loss fails."""
    sched, gmm, teacher, student = _mixture_student()
    fake = _with_head(student, sched)
    fake.critic_weight = 1.0
    g = torch.Generator().manual_seed(8)
    shift = torch.tensor([4.0, 0.0])
    for _ in range(300):
        x = gmm.sample(256, g)
        fake.update(x + shift, None, g, x)
    x = gmm.sample(2000, torch.Generator().manual_seed(9))
    with torch.no_grad():
        critic = fake.critic_loss(x, x + shift, None, torch.Generator().manual_seed(10))
        real_right = (fake.logits(x, None, torch.Generator().manual_seed(11)) > 0).double().mean()
        shifted_right = (fake.logits(x + shift, None, torch.Generator().manual_seed(11)) < 0).double().mean()
    assert critic < 0.5 * torch.log(torch.tensor(4.0)), critic
    assert real_right > 0.75 and shifted_right > 0.75, (real_right, shifted_right)

    fake.optimizer().zero_grad(set_to_none=True)

    def grad(gan_weight):
        x_g = (x + shift).double().requires_grad_(True)
        loss, logs = dmd_loss(teacher, fake, 0.0, x_g, None, torch.Generator().manual_seed(12), gan_weight)
        loss.backward()
        return x_g.grad, logs["gan_loss"]

    (with_gan, gan), (without, _) = grad(1.0), grad(0.0)
    step = -(with_gan - without)  # the GAN term's descent direction
    assert gan > 0 and step[:, 0].mean() < 0, (gan, step[:, 0].mean())  # back along -shift
    assert all(p.grad is None for p in [*fake.head.parameters(), *fake.net.parameters()])


def test_dmd_with_the_gan_head_lowers_fd_and_resumes_with_the_heads_state():
    """gan: on, 300 one-step iterations as in the sign test: FD falls below a quarter of the warm start's, and the
    head's weights travel in the checkpoint (a reload into a fresh head reproduces its logits)."""
    sched, gmm, teacher, student = _mixture_student()
    m = DMD(sched, 1, teacher, _with_head(student, sched), gan_weight=3e-3)
    before, after = _fd_before_and_after(m, student, sched, gmm)
    assert after < 0.25 * before, (before, after)
    fresh = _with_head(student, sched)
    fresh.load_state_dict(m.fake.state_dict())
    f = torch.randn(16, fresh.head.mlp[0].in_features)
    assert torch.equal(fresh.head(f), m.fake.head(f)) and fresh.steps == m.fake.steps == 1500


def test_the_gan_head_reads_a_conditional_unets_middle_block():
    """On a class-conditional UNet the features are the middle block's 8 channels, spatially averaged, and depend on
    the label; one DMD iteration on (x, y) batches with the head gives the student a gradient and trains the head."""
    from multistep.nets.unet import UNet

    sched = make_schedule("cosine")
    torch.manual_seed(0)
    student = VDenoiser(UNet(base_ch=4, ch_mult=(1, 2), time_dim=8, num_classes=3), sched)
    with torch.no_grad():  # zero-initialised output convolutions would hide the label
        for p in student.parameters():
            p.add_(0.2 * torch.randn_like(p))
    z, t = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.full((5,), 0.5, dtype=torch.float64)
    f0, f1 = features(student, z, t, torch.zeros(5, dtype=torch.long)), features(student, z, t, torch.ones(5).long())
    assert f0.shape == (5, 8) and not torch.equal(f0, f1)
    fake = FakeScore(copy.deepcopy(student), sched, 1e-3, head=FeatureHead(8))
    head_before = copy.deepcopy(fake.head.state_dict())
    m = DMD(sched, 2, student, fake, fake_updates=1, gan_weight=3e-3)
    batch = (torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1]))
    loss, logs = m.loss(student, batch, 0, 10, torch.Generator().manual_seed(0))
    loss.backward()
    assert logs["gan_loss"] > 0 and any(p.grad is not None and p.grad.abs().max() > 0 for p in student.parameters())
    assert any(not torch.equal(v, fake.head.state_dict()[k]) for k, v in head_before.items())


@pytest.mark.parametrize("name", ["dmd", "rcm"])
def test_a_trial_config_with_gan_builds_a_head_on_the_students_hidden_width(name):
    """`method: {name: dmd | rcm, gan: true}` builds the head from the data's shape (the MLP's hidden width, 32),
    passes gan_weight through and logs train/gan_loss; without `gan` there is no head."""
    from multistep.config import TrialCfg
    from multistep.train.build import build, make_method

    base = {
        "data": {"kind": "gmm", "shape": [4], "components": 3},
        "student": {"hidden": 32, "depth": 2, "time_dim": 8, "init_iterations": 0},
        "train": {"iterations": 4, "batch_size": 16},
    }
    tc = TrialCfg.model_validate(base | {"method": {"name": name, "gan": True, "gan_weight": 0.5, "tangent_warmup": 0}})
    c = build(tc)
    m = make_method(tc, c)
    assert m.fake.head.mlp[0].in_features == 32 and m.gan_weight == 0.5 and m.fake.critic_weight == 1e-2
    logs = []
    fit(
        new_state(c.student, 1e-3, 0, method=m),
        m,
        lambda g: c.data.sample(16, g),
        4,
        1.0,
        0.9,
        2,
        10,
        Hooks(log=lambda it, x: logs.append(x)),
    )
    assert all(x["gan_loss"] > 0 for x in logs)
    plain = TrialCfg.model_validate(base | {"method": {"name": name}})
    assert make_method(plain, build(plain)).fake.head is None


def _fresh(method_cls):
    sched, gmm, teacher, student = _mixture_student()
    fake = FakeScore(copy.deepcopy(student), sched, 1e-3)
    if method_cls is DMD:
        m = DMD(sched, 2, teacher, fake, fake_updates=2)
    else:
        m = RCM(sched, 2, teacher=teacher, fake=fake, fake_updates=2, tangent_warmup=0.2, time_derivative_every=0)
    return m, new_state(student, 1e-3, 0, method=m), lambda g: gmm.sample(64, g)


@pytest.mark.parametrize("cls", [DMD, RCM], ids=["dmd", "rcm"])
def test_a_resumed_trial_continues_with_the_same_fake_score(cls):
    """Stop after 6 of 10 iterations, reload the state dict into fresh objects, continue: student, EMA, the fake
    score's weights, its Adam and its step count equal the uninterrupted run's bit for bit."""
    ma, a, sample = _fresh(cls)
    saved = {}
    hooks = Hooks(checkpoint=lambda it, sd: saved.setdefault(it, copy.deepcopy(sd)))  # as a trial checkpoints
    fit(a, ma, sample, 10, 1.0, 0.99, 5, 6, hooks)
    mb, b, _ = _fresh(cls)
    b.load_state_dict(saved[6])  # a restarted trial: fresh objects, the checkpoint of iteration 6
    fit(b, mb, sample, 10, 1.0, 0.99, 5, 6)
    for x, y in ((a.student, b.student), (a.ema, b.ema), (ma.fake.net, mb.fake.net)):
        assert all(torch.equal(p, q) for p, q in zip(x.state_dict().values(), y.state_dict().values()))
    assert ma.fake.steps == mb.fake.steps == (20 if cls is DMD else 18)  # rCM: from the end of its warm-up (it 1)
    opt_a, opt_b = ma.fake.optimizer().state_dict()["state"], mb.fake.optimizer().state_dict()["state"]
    assert all(torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"]) for k in opt_a)
