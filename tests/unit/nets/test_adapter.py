"""Teachers trained elsewhere (nets/adapter.py, nets/imported.py): the exact mixture teacher re-expressed as a network
of each parameterisation (eps, v, x0 on a DDPM beta schedule; edm; flow; eps on a continuous VP schedule), saved as
TorchScript and loaded like a user's file, gives the analytic teacher's denoiser and DDIM curve to float tolerance;
a wrong declaration fails the plausibility check; diffusers' beta schedules are reproduced."""

import math

import pytest
import torch
from torch import nn

from multistep.config import TeacherCfg
from multistep.data.gmm import GaussianMixture
from multistep.diffusion.samplers import ddim_sample
from multistep.diffusion.schedules import make_schedule
from multistep.nets import imported
from multistep.nets.adapter import Time, ddpm_betas
from multistep.nets.analytic import MixtureDenoiser
from multistep.teachers import teacher_kind

pytestmark = pytest.mark.usefixtures("one_thread")
GMM = GaussianMixture.random((6,), 4, 0.6, 0.15, seed=3)
F64 = torch.float64


def logsnr_of_timestep(tk: Time, tau: torch.Tensor) -> torch.Tensor:
    """Inverse of Time.timestep: lambda at a fractional DDPM timestep, linear between integer steps."""
    lk = tk.logsnr_k
    i = tau.floor().long().clamp(0, len(lk) - 2)
    w = tau - i
    return lk[i] + w * (lk[i + 1] - lk[i])


class AsNetwork(nn.Module):
    """The exact mixture denoiser speaking a foreign network's language: inputs (x_in, time_in) of `kind`, output in
    `parameterization`. Inverts the adapter's input map with its own maths, so agreement tests the adapter."""

    def __init__(self, kind: str, parameterization: str, time: Time):
        super().__init__()
        self.sched = make_schedule("cosine")
        self.exact = MixtureDenoiser(GMM, self.sched)
        self.kind, self.p, self.tk = kind, parameterization, time

    def forward(self, x_in, time_in):
        x_in, time_in = x_in.double(), time_in.double()
        if self.kind == "ddpm":
            lam, z = logsnr_of_timestep(self.tk, time_in), x_in
        elif self.kind == "vp":
            lam, z = self.tk.schedule.logsnr(time_in / self.tk.time_scale), x_in
        elif self.kind == "edm":  # x = z / alpha
            lam = -2 * torch.log(time_in)
            z = x_in * torch.sigmoid(lam).sqrt()[:, None]
        else:  # flow: x_s = z (1 - s) / alpha
            s = time_in / self.tk.time_scale
            lam = 2 * torch.log((1 - s) / s)
            z = x_in * (torch.sigmoid(lam).sqrt() / (1 - s))[:, None]
        a, sg = torch.sigmoid(lam).sqrt()[:, None], torch.sigmoid(-lam).sqrt()[:, None]
        x = self.exact(z, self.sched.t_from_logsnr(lam))
        eps = (z - a * x) / sg
        out = {"eps": eps, "v": a * eps - sg * x, "x0": x, "edm": x, "flow": eps - x}[self.p]
        return out.float()


CASES = [  # (teacher YAML fields, input kind, parameterisation)
    ({"parameterization": "eps", "ddpm": {"beta_schedule": "linear"}}, "ddpm", "eps"),
    ({"parameterization": "v", "ddpm": {"beta_schedule": "squaredcos_cap_v2"}}, "ddpm", "v"),
    ({"parameterization": "x0", "ddpm": {"beta_schedule": "scaled_linear", "beta_end": 0.012}}, "ddpm", "x0"),
    ({"parameterization": "edm", "edm": {"sigma_max": 80}}, "edm", "edm"),
    ({"parameterization": "flow", "time_scale": 1000}, "flow", "flow"),
    ({"parameterization": "eps", "schedule": {"name": "clipped_cosine", "params": {"logsnr_min": -12}}}, "vp", "eps"),
]


def open_teacher(t: TeacherCfg):
    """(denoiser, declaration) of an imported teacher, as its teacher kind opens it."""
    return teacher_kind(t).open(t)


def scripted_teacher(tmp_path, fields: dict, kind: str, p: str) -> TeacherCfg:
    probe = TeacherCfg.model_validate({"kind": "torchscript", "path": __file__, **fields})
    time = imported.time_of(probe, imported.declaration(probe))
    net = AsNetwork(kind, p, time)
    frac = torch.tensor([0.2, 0.4, 0.6, 0.8])  # distinct times: the mixture's general (per-row t) branch is traced
    example = (torch.randn(4, 6), frac * {"ddpm": 1000, "edm": 10, "flow": 1000}.get(kind, 1))
    path = tmp_path / f"{kind}-{p}.pt"
    torch.jit.save(torch.jit.trace(net, example, check_trace=False), str(path))
    return TeacherCfg.model_validate({"kind": "torchscript", "path": str(path), **fields})


@pytest.mark.parametrize("fields,kind,p", CASES, ids=[f"{c[1]}-{c[2]}" for c in CASES])
def test_an_imported_teacher_in_any_parameterisation_is_the_exact_teacher(tmp_path, fields, kind, p):
    f, decl = open_teacher(scripted_teacher(tmp_path, fields, kind, p))
    exact = MixtureDenoiser(GMM, f.schedule)  # the analytic teacher on the same (student) schedule
    g = torch.Generator().manual_seed(0)
    x = GMM.sample(512, g, dtype=F64)
    t = torch.rand(512, generator=g, dtype=F64) * 0.98 + 0.01
    a, s = f.schedule.alpha_sigma(t)
    z = a[:, None] * x + s[:, None] * torch.randn(x.shape, generator=g, dtype=F64)
    err = (f(z, t) - exact(z, t)).abs().max()
    assert err < 2e-4, err  # float32 network, float64 adapter maths
    noise = torch.randn(256, 6, generator=g, dtype=F64)
    for steps in (4, 32):  # the DDIM curve
        got, want = ddim_sample(f, f.schedule, noise, steps)[0], ddim_sample(exact, f.schedule, noise, steps)[0]
        assert (got - want).abs().max() < 2e-3, (steps, (got - want).abs().max())
    assert imported.plausibility_error(f, x) is None and decl["parameterization"] == p


def test_the_student_schedule_stays_in_the_range_the_teacher_covers(tmp_path):
    t = scripted_teacher(tmp_path, CASES[0][0], "ddpm", "eps")
    f, _ = open_teacher(t)
    abar_T = torch.cumprod(1 - ddpm_betas("linear", 1e-4, 0.02, 1000), 0)[-1]
    lowest = float(f.schedule.logsnr(torch.ones((), dtype=F64)))
    assert lowest == pytest.approx(float(torch.log(abar_T / (1 - abar_T))), abs=1e-9)  # DDPM's abar_T
    with pytest.raises(ValueError, match=r"teacher.logsnr_min: -12 is below the lowest log-SNR the teacher covers"):
        open_teacher(t.model_copy(update={"logsnr_min": -12.0}))
    edm = scripted_teacher(tmp_path, CASES[3][0], "edm", "edm")
    lowest = float(open_teacher(edm)[0].schedule.logsnr(torch.ones((), dtype=F64)))
    assert lowest == pytest.approx(-2 * math.log(80), abs=1e-9)  # EDM's sigma_max


@pytest.mark.parametrize("declared", ["v", "x0", "edm"])
def test_a_wrong_parameterisation_fails_the_plausibility_check(tmp_path, declared):
    t = scripted_teacher(tmp_path, CASES[0][0], "ddpm", "eps")  # the network returns eps
    f, _ = open_teacher(t.model_copy(update={"parameterization": declared}))
    err = imported.plausibility_error(f, GMM.sample(256, torch.Generator().manual_seed(1), dtype=F64))
    assert err is not None and err.startswith(f"its output does not look like {declared}")


def test_betas_match_diffusers():
    from diffusers import DDPMScheduler

    for name, kw in [
        ("linear", {}),
        ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
        ("squaredcos_cap_v2", {}),
    ]:
        ours = ddpm_betas(name, kw.get("beta_start", 1e-4), kw.get("beta_end", 0.02), 1000)
        theirs = DDPMScheduler(beta_schedule=name, **kw).betas.double()
        assert (ours - theirs).abs().max() < 1e-6, name


def test_a_torch_export_file_is_a_teacher_and_its_copies_train(tmp_path):
    """`kind: torchscript` also reads a torch.export .pt2 (the exact mixture's x0 net has data-dependent branches,
    so this is a small x0 network); the student copy trains without touching the teacher."""
    import copy

    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 6))

    class X0(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, t):
            return self.net(x) * (1 + 0 * t[:, None])

    path = tmp_path / "x0.pt2"
    batch = torch.export.Dim("batch")  # the platform calls it with any batch size
    program = torch.export.export(X0(), (torch.randn(4, 6), torch.rand(4)), dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(program, str(path))
    t = TeacherCfg(kind="torchscript", path=str(path), parameterization="x0", ddpm={})
    f, _ = open_teacher(t)
    z, tt = torch.randn(8, 6, dtype=F64), torch.rand(8, dtype=F64)
    assert torch.allclose(f(z, tt), X0()(z.float(), tt.float()).double(), atol=1e-6)
    student = copy.deepcopy(f).requires_grad_(True)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    student(z, tt).pow(2).mean().backward()
    opt.step()
    assert not torch.allclose(student(z, tt), f(z, tt)) and torch.allclose(
        f(z, tt), X0()(z.float(), tt.float()).double(), atol=1e-6
    )


def test_a_platform_student_for_an_imported_teacher_is_warm_started_onto_it(tmp_path):
    """student.copy_teacher: false: a platform MLP instead of the teacher's copy, warm-started by v-loss
    regression onto the imported teacher (the cached init the trials load)."""
    from multistep.config import TrialCfg
    from multistep.nets.mlp import VDenoiser
    from multistep.sweep.assets import prepare
    from multistep.train.build import build

    t = scripted_teacher(tmp_path, CASES[0][0], "ddpm", "eps")
    tc = TrialCfg.model_validate(
        {
            "data": {"kind": "gmm", "shape": [6], "components": 4, "mean_std": 0.6, "component_std": 0.15, "seed": 3},
            "teacher": t.model_dump(mode="json"),
            "student": {"copy_teacher": False, "hidden": 32, "depth": 2, "init_iterations": 30},
            "train": {"batch_size": 64},
            "eval": {"samples": 100, "teacher_steps": [2], "ode_steps": 4, "kid_subsets": 0},
        }
    )
    c = build(tc)
    assert isinstance(c.student, VDenoiser) and c.student.net.net[0].in_features == 6 + 16  # 8 octave time features
    init = prepare(tc, tmp_path / "cache")["init"]
    assert init is not None and set(init) == set(c.student.net.state_dict())


def test_sample_command_reads_a_teacher_yaml(tmp_path):
    """`multistep sample SPEC.yaml`: a torchscript teacher with its data section (the sample shape) samples by DDIM."""
    import numpy as np
    import yaml

    from multistep.cli import main

    t = scripted_teacher(tmp_path, CASES[1][0], "ddpm", "v")
    spec = {"teacher": t.model_dump(mode="json"), "data": {"kind": "gmm", "shape": [6]}}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    assert (
        main(
            [
                "sample",
                str(tmp_path / "t.yaml"),
                "--steps",
                "4",
                "--num",
                "16",
                "--seed",
                "3",
                "--out",
                str(tmp_path / "x.npy"),
            ]
        )
        == 0
    )
    f, _ = open_teacher(t)
    want = ddim_sample(f, f.schedule, torch.randn((16, 6), generator=torch.Generator().manual_seed(3), dtype=F64), 4)[0]
    assert np.allclose(np.load(tmp_path / "x.npy"), want.float().numpy(), atol=1e-6)
    del spec["data"]
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    assert main(["sample", str(tmp_path / "t.yaml"), "--steps", "4", "--out", str(tmp_path / "y.npy")]) == 2  # no shape
