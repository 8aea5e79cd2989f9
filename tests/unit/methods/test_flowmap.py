"""Flow maps (methods/flowmap.py): exact at the Gaussian closed form for every (phi, s), compositions, the reductions
(s = 0 is sCM bit for bit, the untrained student samples as the warm start's DDIM), the target-time input, the
sampler (gamma = 0 and 1 against the samplers it generalises) and a short training run on a mixture teacher."""

import math

import pytest
import torch

from multistep.diffusion.samplers import cm_stochastic_sample, ddim_sample, flowmap_sample, mcm_sample
from multistep.diffusion.schedules import make_schedule
from multistep.methods import flowmap
from multistep.methods.flowmap import FlowMap, compose_gap, jump
from multistep.methods.scm import SCM, dphi_dt, exact_flow_map_F, phi_of_t, t_of_phi, tangent, total_derivative
from multistep.nets.mlp import MLP, VDenoiser
from multistep.nets.unet import UNet

C2 = 0.3  # Gaussian data x ~ N(0, C2 I)


def _gaussian_teacher(sched):
    """The exact denoiser of N(0, C2 I): x_hat = alpha C2 z / (alpha^2 C2 + sigma^2)."""

    def f(z, t, y=None):
        a, s = (u.double().reshape(-1, *[1] * (z.dim() - 1)) for u in sched.alpha_sigma(t.double()))
        return a * C2 * z.double() / (a**2 * C2 + s**2)

    return f


class ExactNet(torch.nn.Module):
    """F*(z, phi(t), phi(target)) of N(0, C2 I) (A.2) as a network: what the flow-map loss must leave alone."""

    def __init__(self, sched, sign: float = 1.0):
        super().__init__()
        self.sched, self.sign = sched, sign
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # a parameter: the method finds the device through it
        self.target_proj = torch.nn.Identity()  # marks a flow-map network (VDenoiser.flow_map)

    def forward(self, z, t, target=None):
        phi, s = phi_of_t(self.sched, t), phi_of_t(self.sched, t if target is None else target)
        same = (phi - s).abs() < 1e-12  # F*(z, phi, phi) is the velocity itself (the limit of A.2)
        S = C2 * torch.cos(phi) ** 2 + torch.sin(phi) ** 2
        v = (torch.sin(phi) * torch.cos(phi) * (1 - C2) / S).reshape(-1, 1) * z.double()
        F = exact_flow_map_F(z.double(), phi, torch.where(same, phi - 1e-3, s), C2)
        return (self.sign * torch.where(same.reshape(-1, 1), v, F)).to(z.dtype) + self.dummy


@pytest.mark.parametrize("name", ["cosine", "shifted_cosine"])
def test_tangent_vanishes_at_the_exact_flow_map_for_every_target(name):
    """s drawn anywhere below phi (not only at segment edges): g = 0 to 1e-8 (float64, forward-mode JVP), the chain
    factor d phi / d t or phi in place of phi - s each break it."""
    sched = make_schedule(name, **({"image_d": 64, "noise_d": 32} if name != "cosine" else {}))
    g = torch.Generator().manual_seed(0)
    t = torch.rand(128, generator=g, dtype=torch.float64) * 0.98 + 0.02
    phi = phi_of_t(sched, t)
    s = phi * torch.rand(128, generator=g, dtype=torch.float64) * 0.95  # 0 <= s < phi
    z = torch.randn(128, 5, generator=g, dtype=torch.float64)
    S = C2 * torch.cos(phi) ** 2 + torch.sin(phi) ** 2
    v_T = (torch.sin(phi) * torch.cos(phi) * (1 - C2) / S)[:, None] * z
    delta = phi - s
    cs = torch.cos(delta) * torch.sin(delta)
    fn = lambda zz, tt: exact_flow_map_F(zz, phi_of_t(sched, tt), s, C2)  # s held along the ODE
    J = total_derivative(fn, z, t, cs[:, None] * v_T, cs / dphi_dt(sched, t))
    assert tangent(fn(z, t), J, z, v_T, delta, r=1.0).abs().max() < 1e-8
    no_chain = total_derivative(fn, z, t, cs[:, None] * v_T, cs)
    assert tangent(fn(z, t), no_chain, z, v_T, delta, r=1.0).abs().max() > 1e-3
    assert tangent(fn(z, t), J, z, v_T, phi, r=1.0).abs().max() > 1e-3


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_method_leaves_the_exact_map_alone_and_moves_a_wrong_one(sign):
    """Through FlowMap.loss itself (its (phi, s) law, target input and float64 finite-difference JVP): the exact
    map's tangent is ~0 and its composition gap ~0; the map with F's sign flipped gets a large tangent."""
    sched = make_schedule("cosine")
    student = VDenoiser(ExactNet(sched, sign), sched)
    m = FlowMap(sched, 4, teacher=_gaussian_teacher(sched), jvp="finite_difference", time_derivative_every=0)
    x = torch.randn(256, 5, generator=torch.Generator().manual_seed(1)) * math.sqrt(C2)
    _, logs = m.loss(student, x, 999, 1000, torch.Generator().manual_seed(2))
    if sign > 0:
        assert logs["g_rms"] < 1e-5 and logs["composition_gap"] < 1e-5, logs
    else:
        assert logs["g_rms"] > 0.1 and logs["composition_gap"] > 0.1, logs


def test_exact_flow_map_composes_through_the_platform_jump():
    """compose_gap on the closed form is 0 (float64) and the platform's jump (x_hat of target s, DDIM t -> s)
    reproduces f* = z sqrt(S(s) / S(phi))."""
    sched = make_schedule("cosine")

    def f_star(z, t, s):
        S = lambda p: C2 * torch.cos(p) ** 2 + torch.sin(p) ** 2
        return z * torch.sqrt(S(phi_of_t(sched, s)) / S(phi_of_t(sched, t)))[:, None]

    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert compose_gap(f_star, noise) < 1e-12
    exact = VDenoiser(ExactNet(sched), sched)
    t, s = torch.full((64,), 0.9, dtype=torch.float64), torch.full((64,), 0.3, dtype=torch.float64)
    torch.testing.assert_close(jump(exact)(noise, t, s), f_star(noise, t, s), rtol=1e-5, atol=1e-5)


def _pair(seed=0, dim=6):
    """A plain MLP student and its flow-map twin (same weights, plus the zero-initialised target input)."""
    torch.manual_seed(seed)
    sched = make_schedule("cosine")
    plain = VDenoiser(MLP(dim, 32, 2, 16, time_features="octave"), sched)
    twin = VDenoiser(MLP(dim, 32, 2, 16, time_features="octave"), sched)
    twin.net.load_state_dict(plain.net.state_dict())
    twin.net.add_target_input()
    return sched, plain, twin


def test_s_zero_is_scm_bit_for_bit():
    """flow_ratio = s_zero_prob = 1 (every row jumps to 0): loss and every shared gradient equal sCM's (S = 1)."""
    sched, plain, twin = _pair()
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(4))
    teacher = _gaussian_teacher(sched)
    a = SCM(sched, 1, teacher=teacher, time_derivative_every=0)
    b = FlowMap(sched, 1, teacher=teacher, time_derivative_every=0, flow_ratio=1.0, s_zero_prob=1.0)
    la, _ = a.loss(plain, x, 10, 100, torch.Generator().manual_seed(5))
    lb, _ = b.loss(twin, x, 10, 100, torch.Generator().manual_seed(5))
    la.backward()
    lb.backward()
    assert torch.equal(la, lb)
    grads = dict(twin.net.named_parameters())
    assert all(torch.equal(p.grad, grads[k].grad) for k, p in plain.net.named_parameters())
    assert grads["target_proj.weight"].grad.abs().sum() > 0  # the s input gets a gradient: it can learn


def test_untrained_flow_map_samples_as_the_warm_starts_ddim():
    """At initialisation F(z, t, s) = v(z, t) for every s: K jumps are K-step DDIM of the warm start, bit for bit."""
    sched, plain, twin = _pair(dim=4)
    m = FlowMap(sched, 2, teacher=None, eval_steps=(1, 2, 4, 8))
    noise = torch.randn(16, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    points = m.evaluations(twin)
    assert [(lb, K) for lb, K, _ in points] == [("fmt", 1), ("fmt", 2), ("fmt", 4), ("fmt", 8)]
    for _, K, sampler in points:
        assert torch.equal(sampler(noise)[0], ddim_sample(plain, sched, noise, K)[0])


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_the_target_input_does_nothing_at_init_and_reaches_the_output(kind):
    """Zero-initialised: outputs equal for every target; it has a gradient; one optimiser step makes the output
    depend on the target."""
    torch.manual_seed(0)
    net = MLP(4, 16, 2, 8) if kind == "mlp" else UNet(1, 8, (1, 2), resolution=8, time_dim=8)
    shape = (6, 4) if kind == "mlp" else (6, 1, 8, 8)
    net.add_target_input()
    z = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    t = torch.full((6,), 0.8)
    a, b = net(z, t, target=torch.full((6,), 0.1)), net(z, t, target=torch.full((6,), 0.6))
    assert torch.equal(a, b)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss = (net(z, t, target=torch.full((6,), 0.1)) - 1).pow(2).mean()
    for _ in range(2 if kind == "unet" else 0):  # zero-initialised output convs: the time path's gradient is 0
        loss.backward()  # until the out conv and the blocks' second convs have left 0
        opt.step()
        opt.zero_grad()
        loss = (net(z, t, target=torch.full((6,), 0.1)) - 1).pow(2).mean()
    loss.backward()
    assert net.target_proj.weight.grad.abs().sum() > 0
    opt.step()
    a, b = net(z, t, target=torch.full((6,), 0.1)), net(z, t, target=torch.full((6,), 0.6))
    assert (a - b).abs().max() > 1e-6


def test_sampler_generalises_mcm_and_the_cm_sampler():
    """f ignoring s: gamma = 0 is MCM's Algorithm 2 bit for bit; gamma = 1 (jump to 0, renoise) is the CM sampler."""
    sched = make_schedule("cosine")
    teacher = _gaussian_teacher(sched)
    f = lambda z, t, s: teacher(z, t)
    noise = torch.randn(32, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    assert torch.equal(flowmap_sample(f, sched, noise, 4)[0], mcm_sample(teacher, sched, noise, 4)[0])
    cm = cm_stochastic_sample(teacher, sched, noise, [0.75, 0.5, 0.25], torch.Generator().manual_seed(9))[0]
    gam = flowmap_sample(f, sched, noise, 4, gamma=1.0, generator=torch.Generator().manual_seed(9))[0]
    torch.testing.assert_close(gam, cm, rtol=1e-10, atol=1e-10)
    half = flowmap_sample(f, sched, noise, 4, gamma=0.5, generator=torch.Generator().manual_seed(9))[0]
    assert (half - gam).abs().max() > 1e-3 and (half - flowmap_sample(f, sched, noise, 4)[0]).abs().max() > 1e-3


def test_target_law():
    """P(s = phi) = 1 - flow_ratio, P(s = 0) = s_zero_prob, the rest strictly between."""
    sched = make_schedule("cosine")
    m = FlowMap(sched, 1, flow_ratio=0.75, s_zero_prob=0.1)
    phi = m.sample_phi(20000, torch.Generator().manual_seed(10), "cpu")
    s = m.jump_target(phi, t_of_phi(sched, phi), torch.Generator().manual_seed(11))
    flow, zero = (s == phi).double().mean(), (s == 0).double().mean()
    assert abs(flow - 0.25) < 0.015 and abs(zero - 0.1) < 0.01
    assert ((s >= 0) & (s <= phi)).all()


def test_training_on_a_mixture_teacher_closes_the_composition_gap():
    """A warm-started 2-D student on the exact mixture teacher: its composition gap falls during training, and the
    logs carry it next to sCM's; the method's state round-trips."""
    from multistep.data.gmm import GaussianMixture
    from multistep.nets.analytic import MixtureDenoiser
    from multistep.train.loop import WarmStart, fit, new_state, warm_start

    sched = make_schedule("cosine")
    gmm = GaussianMixture.random((2,), 4, 0.8, 0.1, 0)
    teacher = MixtureDenoiser(gmm, sched)
    torch.manual_seed(0)
    student = VDenoiser(MLP(2, 64, 3, 8, time_features="octave"), sched)
    sample = lambda g: gmm.sample(256, g)
    warm_start(
        student.net, sched, teacher, sample, WarmStart(1000, 2e-3, 0, schedule="cosine", check_every=0, patience=0)
    )
    m = flowmap.FlowMap(
        sched, 1, teacher=teacher, p_mean=0.5, composition_every=10, time_derivative_every=0, learning_rate=2e-3
    )
    student.net.add_target_input()
    state = new_state(student, 2e-3, 0, method=m)
    logged = []
    hooks = type("H", (), {"log": lambda self, it, v: logged.append(v), "checkpoint": lambda self, it, sd: None})()
    fit(state, m, sample, 1500, 1.0, 0.99, 100, 10000, hooks)
    gaps = [v["composition_gap"] for v in logged]  # measured: 0.63 at the warm start, 0.29 after 1500 steps
    assert gaps[-1] < 0.6 * gaps[0], gaps
    again = flowmap.FlowMap(sched, 1, learning_rate=1e-3)
    again.load_state_dict(state.state_dict()["method"], state.student)
    assert all(torch.equal(a, b) for a, b in zip(again._u.parameters(), m._u.parameters()))


def test_meanflow_weighting_is_the_adaptive_loss():
    """weighting: meanflow, p = 0 is the plain mean error (the logged loss_unweighted); p = 1 maps each row's error
    e to e / (e + c) < 1."""
    sched, plain, twin = _pair()
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(12))
    for p, check in ((0.0, "equal"), (1.0, "below one")):
        m = FlowMap(sched, 1, teacher=_gaussian_teacher(sched), weighting="meanflow", meanflow_p=p)
        loss, logs = m.loss(twin, x, 50, 100, torch.Generator().manual_seed(13))
        if check == "equal":
            torch.testing.assert_close(loss.detach(), logs["loss_unweighted"], rtol=1e-12, atol=0)
        else:
            assert 0 < loss < 1 and loss < logs["loss_unweighted"] / 1e-3
