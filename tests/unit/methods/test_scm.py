"""sCM (methods/scm.py): exact at the closed-form fixed point, the JVP against a float64 central difference, the
reductions (S = 1 is plain sCM, f = z at the segment edges), and two data-parallel ranks staying in step."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import exit_spawned_rank
from multistep.diffusion.ddim import ddim_step
from multistep.diffusion.schedules import make_schedule
from multistep.methods import scm
from multistep.methods.base import rng_state
from multistep.methods.scm import (
    SCM,
    dphi_dt,
    exact_flow_map_F,
    phi_of_t,
    segment_edge,
    t_of_phi,
    tangent,
    total_derivative,
)
from multistep.nets.mlp import MLP, VDenoiser

C2 = 0.3  # Gaussian data x ~ N(0, C2 I)
SCHEDULES = {"cosine": {}, "shifted_cosine": {"image_d": 64, "noise_d": 32}}


def _gaussian_case(schedule, S: int, n: int = 64, d: int = 5, seed: int = 0):
    """Rows over the whole time range with their segment edge, noisy z and the exact teacher velocity (A.2)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    phi, s = phi_of_t(schedule, t), segment_edge(schedule, t, S)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    Sphi = C2 * torch.cos(phi) ** 2 + torch.sin(phi) ** 2
    v_T = (torch.sin(phi) * torch.cos(phi) * (1 - C2) / Sphi)[:, None] * z  # exact v of N(0, C2 I)
    return t, phi, s, z, v_T


def _exact_F(schedule, s):
    """F*(z, phi(t)) with the segment edge s held fixed along the ODE (what the tangent differentiates)."""
    return lambda z, t: exact_flow_map_F(z, phi_of_t(schedule, t), s, C2)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("S", [1, 2, 4, 8])
@pytest.mark.parametrize("mode", ["autograd", "finite_difference"])
def test_tangent_vanishes_at_the_exact_flow_map(name, S, mode):
    """F = F* and v_T = the exact v: g = 0 for every phi and edge (float64). A sign, a sigma_d, the chain factor
    d phi / d t, or phi in place of phi - s each break it (the last two checked below)."""
    sched = make_schedule(name, **SCHEDULES[name])
    t, phi, s, z, v_T = _gaussian_case(sched, S)
    delta, cs = phi - s, torch.cos(phi - s) * torch.sin(phi - s)
    fn = _exact_F(sched, s)
    J = total_derivative(fn, z, t, cs[:, None] * v_T, cs / dphi_dt(sched, t), mode)
    g = tangent(fn(z, t), J, z, v_T, delta, r=1.0)
    assert g.abs().max() < (1e-8 if mode == "autograd" else 1e-6), g.abs().max()
    no_chain = total_derivative(fn, z, t, cs[:, None] * v_T, cs, mode)  # d/dt taken as d/dphi
    assert tangent(fn(z, t), no_chain, z, v_T, delta, r=1.0).abs().max() > 1e-3
    if S > 1:  # phi where phi - s belongs
        g_wrong = tangent(fn(z, t), J, z, v_T, phi, r=1.0)
        assert g_wrong.abs().max() > 1e-3


def test_exact_flow_map_composes_and_keeps_its_boundary():
    """The closed form itself: f*(f*(z, phi, r), r, s) = f*(z, phi, s), and f* = z at phi = s."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(16, 3, generator=g, dtype=torch.float64)
    phi, r, s = (torch.full((16,), v, dtype=torch.float64) for v in (1.3, 0.8, 0.2))

    def f(z, a, b):
        return torch.cos(a - b)[:, None] * z - torch.sin(a - b)[:, None] * exact_flow_map_F(z, a, b, C2)

    torch.testing.assert_close(f(f(z, phi, r), r, s), f(z, phi, s), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f(z, phi, phi + 1e-12), z, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("time_features", ["sinusoid", "octave"])
def test_jvp_equals_the_float64_central_difference_with_dropout(time_features):
    """Along (v_T, 1): the forward-mode JVP and the float64 central difference agree to 1e-5 relative, on the
    platform's own time features and with dropout (the same mask replayed for every evaluation)."""
    torch.manual_seed(0)
    net = MLP(6, 32, 2, 16, dropout=0.2, time_features=time_features).double().train()
    g = torch.Generator().manual_seed(2)
    z, v = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 6, generator=g, dtype=torch.float64)
    t, dt = torch.rand(8, generator=g, dtype=torch.float64) * 0.9 + 0.05, torch.ones(8, dtype=torch.float64)
    rng = rng_state("cpu")
    jvp = total_derivative(net, z, t, v, dt, "autograd", rng=rng)
    fd = total_derivative(net, z, t, v, dt, "finite_difference", rng=rng)
    assert (jvp - fd).norm() / jvp.norm() < 1e-5
    other_mask = total_derivative(net, z, t, v, dt, "autograd")  # a different mask: a different derivative
    assert (jvp - other_mask).norm() / jvp.norm() > 1e-2


def test_the_boundary_holds_exactly_and_the_sampler_is_the_students_map():
    """MCM's DDIM step to the edge, fed x_hat = cos(phi) z - sin(phi) F, is f = cos(phi - s) z - sin(phi - s) F
    (A.1); at phi = s it returns z exactly."""
    sched = make_schedule("cosine")
    g = torch.Generator().manual_seed(3)
    z, F = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randn(10, 4, generator=g, dtype=torch.float64)
    t = torch.rand(10, generator=g, dtype=torch.float64)
    s_t = torch.floor(t * 4) / 4
    phi, s = phi_of_t(sched, t), phi_of_t(sched, s_t)
    x_hat = torch.cos(phi)[:, None] * z - torch.sin(phi)[:, None] * F
    f = torch.cos(phi - s)[:, None] * z - torch.sin(phi - s)[:, None] * F
    torch.testing.assert_close(ddim_step(sched, x_hat, z, t, s_t), f, rtol=1e-12, atol=1e-12)
    f_edge = torch.cos(s - s)[:, None] * z - torch.sin(s - s)[:, None] * F
    assert torch.equal(f_edge, z)


def _student(seed=0, dim=6):
    torch.manual_seed(seed)
    return VDenoiser(MLP(dim, 32, 2, 16, time_features="octave"), make_schedule("cosine"))


def _gaussian_teacher(sched):
    """The exact denoiser of N(0, C2 I): x_hat = alpha C2 z / (alpha^2 C2 + sigma^2)."""

    def f(z, t):
        a, s = (u.double().reshape(-1, 1) for u in sched.alpha_sigma(t.double()))
        return a * C2 * z.double() / (a**2 * C2 + s**2)

    return f


def test_one_segment_is_plain_scm_bit_for_bit(monkeypatch):
    """S = 1: every edge is phi = 0, so the loss and gradients equal plain sCM's (s = 0 written out)."""
    sched = make_schedule("cosine")
    t = torch.linspace(0.001, 1, 101, dtype=torch.float64)
    assert torch.equal(segment_edge(sched, t, 1), torch.zeros_like(t))
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(4))

    def run():
        student = _student()
        m = SCM(sched, 1, teacher=_gaussian_teacher(sched), time_derivative_every=0)
        loss, _ = m.loss(student, x, 10, 100, torch.Generator().manual_seed(5))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in student.parameters()]

    multistep_loss, multistep_grads = run()
    monkeypatch.setattr(scm, "segment_edge", lambda sch, t, S: torch.zeros_like(t, dtype=torch.float64))
    plain_loss, plain_grads = run()
    assert torch.equal(multistep_loss, plain_loss)
    assert all(torch.equal(a, b) for a, b in zip(multistep_grads, plain_grads))


@pytest.mark.parametrize("mode", ["distill", "train"])
def test_a_few_steps_train_log_and_checkpoint(mode):
    """The loss is finite, the logs say what sCM's loss alone does not (||g||, the JVP, u, the time derivative's
    share), u(phi) learns, and its state round-trips through the method's checkpoint."""
    from multistep.train.loop import fit, new_state

    sched = make_schedule("cosine")
    m = SCM(sched, 2, teacher=_gaussian_teacher(sched) if mode == "distill" else None, learning_rate=1e-2)
    state = new_state(_student(), 1e-3, 0, method=m)
    logged = []
    hooks = type("H", (), {"log": lambda self, it, v: logged.append(v), "checkpoint": lambda self, it, sd: None})()
    data = torch.randn(64, 6, generator=torch.Generator().manual_seed(6)) * math.sqrt(C2)
    fit(state, m, lambda g: data[torch.randint(0, 64, (16,), generator=g)], 20, 1.0, 0.99, 10, 100, hooks)
    assert m.label == ("scd" if mode == "distill" else "sct")
    assert {"loss", "loss_unweighted", "g_rms", "jvp_rms", "u_mean", "dF_dphi_rms", "gradzF_v_rms"} <= set(logged[-1])
    assert all(math.isfinite(v) for v in logged[-1].values())
    assert logged[-1]["tangent_warmup"] == 1.0 and m._u.linear.weight.abs().sum() > 0  # u left its zero init
    sd = state.state_dict()["method"]
    again = SCM(sched, 2, learning_rate=1e-2)
    again.load_state_dict(sd, state.student)
    assert all(torch.equal(a, b) for a, b in zip(again._u.parameters(), m._u.parameters()))


def _scm_rank(rank: int, world: int, out: str) -> None:
    from multistep.train.loop import fit, new_state
    from multistep.train.replicas import Replicas

    torch.set_num_threads(1)
    # a FileStore rendezvous: no port picked in advance that another process can take first (EADDRINUSE)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    try:
        sched = make_schedule("cosine")
        student = _student(seed=rank)  # different starting weights: the broadcast must fix them
        replicas = Replicas()
        replicas.broadcast(student)
        m = SCM(sched, 2, teacher=_gaussian_teacher(sched), learning_rate=1e-2, time_derivative_every=0)
        state = new_state(student, 1e-2, seed=rank, method=m)  # each rank its own data and noise
        data = torch.randn(64, 6, generator=torch.Generator().manual_seed(100 + rank))
        fit(state, m, lambda g: data[torch.randint(0, 64, (8,), generator=g)], 2, 1.0, 0.99, 1, 100, replicas=replicas)
        torch.save((student.state_dict(), m._u.state_dict()), f"{out}/scm{rank}.pt")
    finally:
        dist.destroy_process_group()
    exit_spawned_rank()


def test_two_gloo_ranks_take_the_same_scm_step(tmp_path, one_thread):
    """Different data on each rank, the JVP on the bare network: student and u(phi) identical after two steps."""
    mp.spawn(_scm_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    (sd0, u0), (sd1, u1) = (torch.load(tmp_path / f"scm{r}.pt") for r in (0, 1))
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0) and all(torch.equal(u0[k], u1[k]) for k in u0)
    assert any(not torch.equal(sd0[k], _student(seed=0).state_dict()[k]) for k in sd0)  # they did move


def test_guided_teacher_velocity_is_the_guided_combination():
    """method.guidance w for sCD: v_T = v_c + w (v_c - v_u), v_u the teacher without labels (its null class);
    the config accepts it for name: scm and labels the curve scd_cfg<w>."""
    from multistep.config.schema import MethodCfg

    sched = make_schedule("cosine")

    def teacher(z, t, y=None):  # a toy conditional denoiser: labels shift x_hat
        base = _gaussian_teacher(sched)(z, t)
        return base if y is None else base + 0.1 * y.double()[:, None]

    g = torch.Generator().manual_seed(11)
    z, t = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.rand(6, generator=g, dtype=torch.float64)
    y = torch.arange(6)
    plain, guided = SCM(sched, 1, teacher=teacher), SCM(sched, 1, teacher=teacher, guidance=2.0)
    v_c, v_u = plain.teacher_velocity(None, z, t, None, y), plain.teacher_velocity(None, z, t, None, None)
    torch.testing.assert_close(guided.teacher_velocity(None, z, t, None, y), v_c + 2.0 * (v_c - v_u))
    assert not torch.allclose(v_c, v_u)
    assert scm.label(MethodCfg(name="scm", guidance=1.5)) == "scd_cfg1.5"


def test_time_law_and_inverse():
    sched = make_schedule("cosine")
    m = SCM(sched, 1)
    phi = m.sample_phi(10000, torch.Generator().manual_seed(7), "cpu")
    assert phi.min() > 0 and phi.max() < math.pi / 2
    n = torch.log(torch.tan(phi))  # = the normal draw where unclipped
    assert abs(n.mean().item() + 1.0) < 0.05 and abs(n.std().item() - 1.4) < 0.05
    torch.testing.assert_close(phi_of_t(sched, t_of_phi(sched, phi)), phi.double(), rtol=1e-12, atol=1e-12)


def test_a_channels_last_unet_takes_the_same_scm_step():
    """train.channels_last: the JVP through GroupNorm runs (PyTorch's forward-mode rule refuses channels_last
    activations, so it sees contiguous copies of the conv weights) and gives the contiguous student's loss and
    gradients (C_in = 1: a weight whose layout is ambiguous, the case .contiguous() leaves as it is)."""
    from multistep.nets.unet import UNet
    from multistep.train.perf import apply_fast_paths

    sched = make_schedule("cosine")
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(7)) * 0.5

    def step(channels_last: bool):
        torch.manual_seed(0)
        student = VDenoiser(UNet(in_ch=1, base_ch=8, ch_mult=(1, 2), num_res_blocks=1, resolution=8), sched)
        apply_fast_paths([student], "cpu", "fp32", channels_last)
        m = SCM(sched, 2, teacher=lambda z, t, y=None: 0.5 * z, time_derivative_every=0)
        loss, _ = m.loss(student, x, 10, 100, torch.Generator().manual_seed(5))
        loss.backward()
        return loss.detach(), [p.grad.contiguous() for p in student.parameters()]

    (loss, grads), (cl_loss, cl_grads) = step(False), step(True)
    assert torch.allclose(cl_loss, loss, rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(cl_grads, grads))
