"""Teachers trained elsewhere, end to end: one real sweep (Ray Tune, SQLite MLflow) distils
a TorchScript file and a class-conditional diffusers folder with guidance, all built tiny by the test; and every bad
teacher is one line naming the file and field, exit 2, found by the pre-flight before Ray or MLflow start."""

import math

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from torch import nn

from conftest import tiny_unet
from multistep.config import ConfigError, load_sweep
from multistep.nets.imported import DiffusersUNet
from multistep.sweep import preflight

diffusers = pytest.importorskip("diffusers")
DIGITS = {"kind": "digits"}
EVAL = {"samples": 200, "teacher_steps": [2], "ode_steps": 8}


def pipeline(path, prediction_type="epsilon", **unet):
    s = diffusers.DDPMScheduler(prediction_type=prediction_type, clip_sample=False)
    diffusers.DDPMPipeline(unet=tiny_unet(**unet), scheduler=s).save_pretrained(str(path))
    return str(path)


def scripted(path, net: nn.Module, example) -> str:
    torch.jit.save(torch.jit.trace(net.eval(), example, check_trace=False), str(path))
    return str(path)


class Mixture6(nn.Module):
    """The exact denoiser of the YAML's 6-D mixture, as a DDPM eps network (a plausible teacher)."""

    def __init__(self):
        super().__init__()
        from multistep.data.gmm import GaussianMixture
        from multistep.diffusion.schedules import make_schedule
        from multistep.nets.adapter import Time, ddpm_betas
        from multistep.nets.analytic import MixtureDenoiser

        self.sched = make_schedule("cosine")
        self.exact = MixtureDenoiser(GaussianMixture.random((6,), 4, 0.6, 0.15, 3), self.sched)
        self.lk = Time.ddpm(ddpm_betas("linear", 1e-4, 0.02, 1000)).logsnr_k
        self.gain = nn.Parameter(torch.ones(()))  # something for a student copy to train

    def forward(self, z, tau):
        z, tau = z.double(), tau.double()
        i = tau.floor().long().clamp(0, 998)
        lam = self.lk[i] + (tau - i) * (self.lk[i + 1] - self.lk[i])
        a, s = torch.sigmoid(lam).sqrt()[:, None], torch.sigmoid(-lam).sqrt()[:, None]
        return ((z - a * self.exact(z, self.sched.t_from_logsnr(lam))) / s).float() * self.gain


def make_net(width: int = 6) -> nn.Module:
    """A builder for `kind: state_dict` (imported by its dotted name from this test module)."""
    return nn.Linear(width, width)


@pytest.mark.slow
def test_a_sweep_distils_diffusers_and_torchscript_teachers(ray_local, tmp_path, monkeypatch):
    """Random tiny UNets are not plausible denoisers, so these teachers set check: false (the check has its own
    tests); the point is the pipeline: load, adapt, copy into the student, train, evaluate, log."""
    from multistep.sweep.driver import run_sweep

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")  # run_sweep sets it; restored after the test
    cond = pipeline(tmp_path / "cond", "v_prediction", num_class_embeds=11)
    ts = scripted(
        tmp_path / "unet.pt", DiffusersUNet(tiny_unet()), (torch.randn(2, 1, 8, 8), torch.tensor([10.0, 900.0]))
    )
    ddpm = {"beta_schedule": "linear"}
    doc = {
        "name": "imported",
        "experiment": "tests-imported",
        "data": DIGITS,
        "teacher": {
            "kind": "torchscript",
            "path": ts,
            "parameterization": "x0",
            "ddpm": {"beta_schedule": "linear"},
            "check": False,
        },
        "method": {"student_steps": 2, "anneal": {"name": "constant", "n": 8}},
        "train": {"iterations": 20, "batch_size": 16, "log_every": 10, "checkpoint_every": 20},
        "eval": EVAL,
        "resources": {"max_concurrent_trials": 2},
        "search": [
            {
                "teacher": {
                    "grid": [
                        {"kind": "torchscript", "path": ts, "parameterization": "x0", "ddpm": ddpm, "check": False}
                    ]
                }
            },
            {
                "teacher": {
                    "grid": [{"kind": "diffusers", "path": cond, "num_classes": 10, "null_label": 10, "check": False}]
                },
                "method.guidance": {"grid": [1.5]},
            },
        ],
    }
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run_sweep(load_sweep(f), uri, str(tmp_path / "rr")) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tests-imported").experiment_id])
    trials = sorted(
        (r for r in runs if r.data.tags.get("multistep.kind") == "trial"),
        key=lambda r: int(r.data.tags["multistep.trial_index"]),
    )
    assert [t.info.status for t in trials] == ["FINISHED"] * 2
    assert [t.data.tags["multistep.method"] for t in trials] == ["mcd", "mcd_cfg1.5"]
    assert [t.data.params["teacher.kind"] for t in trials] == ["torchscript", "diffusers"]
    for t in trials:  # trained (a loss per logging interval) and evaluated at its S
        losses = [m.value for m in client.get_metric_history(t.info.run_id, "train/loss")]
        assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
        (fd,) = client.get_metric_history(t.info.run_id, "fd_pixel_200")
        assert fd.step == 2 and math.isfinite(fd.value) and fd.value > 0
    import numpy as np

    from multistep.cli import main

    for i in (0, 1):  # the TorchScript student, and the guided one with labels: `multistep sample state.pt`
        (state,) = (tmp_path / "rr").glob(f"*/trial-00{i}/checkpoint_*/state.pt")
        np.save(tmp_path / "labels.npy", np.arange(8) % 10)
        labels = ["--labels", str(tmp_path / "labels.npy")] if i == 1 else []
        assert main(["sample", str(state), "--num", "8", *labels, "--out", str(tmp_path / f"x{i}.npy")]) == 0
        x = np.load(tmp_path / f"x{i}.npy")
        assert x.shape == (8, 1, 8, 8) and np.isfinite(x).all()


@pytest.mark.slow
def test_an_imported_teacher_logged_to_mlflow_is_distilled_by_its_run_id(ray_local, tmp_path, monkeypatch):
    from multistep.cli import main
    from multistep.sweep.driver import run_sweep

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.chdir(tmp_path)
    gmm = {"kind": "gmm", "shape": [6], "components": 4, "mean_std": 0.6, "component_std": 0.15, "seed": 3}
    net = scripted(tmp_path / "mix.pt", Mixture6(), (torch.randn(4, 6), torch.tensor([100.0, 400.0, 700.0, 900.0])))
    teacher = {"kind": "torchscript", "path": net, "parameterization": "eps", "ddpm": {"beta_schedule": "linear"}}
    spec = tmp_path / "import.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "experiment": "imports",
                "teacher": teacher,
                "data": gmm,
                "eval": {"samples": 300, "teacher_steps": [1, 4, 16]},
            }
        )
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["teacher", "import", str(spec), "--name", "mixture", "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("imports").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["multistep.teacher_source"] == "torchscript"
    assert run.data.tags["multistep.kind"] == "teacher" and run.data.tags["multistep.teacher_name"] == "mixture"
    fd = client.get_metric_history(run.info.run_id, "fd_identity_300")
    assert [m.step for m in fd] == [1, 4, 16] and fd[0].value > fd[2].value  # the exact teacher: more steps, closer
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"teacher_files", "teacher_import.json"}

    doc = {
        "name": "by-run",
        "experiment": "imports",
        "data": gmm,
        "teacher": {"kind": "mlflow", "run_id": run.info.run_id},
        "method": {"student_steps": 2, "anneal": {"name": "constant", "n": 8}},
        "train": {"iterations": 20, "batch_size": 32, "log_every": 10, "checkpoint_every": 20},
        "eval": EVAL,
    }
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(doc))
    assert run_sweep(load_sweep(f), uri, str(tmp_path / "rr")) == 0
    (trial,) = [r for r in client.search_runs([run.info.experiment_id]) if r.data.tags.get("multistep.kind") == "trial"]
    assert trial.info.status == "FINISHED" and "fd_identity_200" in trial.data.metrics
    assert trial.data.params["teacher.kind"] == "torchscript"  # the trial ran the imported teacher's own files
    assert trial.data.params["teacher.path"].startswith(str(tmp_path / "rr" / "cache" / "teachers" / run.info.run_id))


def _bad_cases(tmp_path):
    gmm = {"kind": "gmm", "shape": [6], "components": 4, "mean_std": 0.6, "component_std": 0.15, "seed": 3}
    good_eps = scripted(
        tmp_path / "mix.pt", Mixture6(), (torch.randn(4, 6), torch.tensor([100.0, 400.0, 700.0, 900.0]))
    )
    ddpm = {"ddpm": {"beta_schedule": "linear"}}
    bare = tmp_path / "bare"
    tiny_unet().save_pretrained(str(bare))
    flow = pipeline(tmp_path / "flow")
    (tmp_path / "flow" / "scheduler" / "scheduler_config.json").write_text('{"prediction_type": "flow"}')
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00 not a TorchScript archive")
    bad_st = tmp_path / "w.safetensors"
    bad_st.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    from safetensors.torch import save_file

    good_st = tmp_path / "lin.safetensors"
    save_file(make_net().state_dict(), str(good_st))
    nan = scripted(tmp_path / "nan.pt", _Nan(), (torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0])))
    rgb = pipeline(tmp_path / "rgb", in_channels=3)
    b = "test_imported_teachers:make_net"
    return [  # (data, teacher, the message's tail)
        (DIGITS, {"kind": "diffusers", "path": str(tmp_path / "nope")}, "teacher.path: .*nope: not a folder"),
        (DIGITS, {"kind": "diffusers", "path": str(bare)}, "has no scheduler config"),
        (DIGITS, {"kind": "diffusers", "path": flow}, "unsupported prediction_type 'flow'"),
        (DIGITS, {"kind": "diffusers", "path": rgb}, r"does not take samples of this data's shape \(1, 8, 8\)"),
        (DIGITS, {"kind": "torchscript", "path": str(junk), "parameterization": "eps", **ddpm}, "not a TorchScript"),
        (DIGITS, {"kind": "torchscript", "path": nan, "parameterization": "eps", **ddpm, "check": False}, "non-finite"),
        (DIGITS, {"kind": "torchscript", "path": nan}, "teacher.parameterization: required for kind: torchscript"),
        (
            gmm,
            {"kind": "state_dict", "path": str(bad_st), "builder": b, "parameterization": "eps", **ddpm},
            "not a readable state dict",
        ),
        (
            gmm,
            {"kind": "state_dict", "path": str(good_st), "builder": "no_such_pkg:f", "parameterization": "eps", **ddpm},
            "teacher.builder: no_such_pkg:f: not importable",
        ),
        (
            gmm,
            {
                "kind": "state_dict",
                "path": str(good_st),
                "builder": b,
                "builder_args": {"width": 5},
                "parameterization": "eps",
                **ddpm,
            },
            "does not fit test_imported_teachers:make_net",
        ),
        (
            gmm,
            {"kind": "torchscript", "path": good_eps, "parameterization": "v", **ddpm},
            "teacher.parameterization: its output does not look like v",
        ),
        (gmm, {"kind": "torchscript", "path": good_eps, "parameterization": "eps", **ddpm}, None),  # right: passes
        (  # DMD2's GAN head reads middle features, which a TorchScript copy does not expose
            gmm,
            {"kind": "torchscript", "path": good_eps, "parameterization": "eps", **ddpm},
            "method.gan: the fake score copies the TorchScript teacher",
            {"method": {"name": "dmd", "gan": True}},
        ),
    ]


class _Nan(nn.Module):
    def forward(self, x, t):
        return x * float("nan")


def test_bad_teachers_are_one_line_before_anything_starts(tmp_path):
    for i, (data, teacher, msg, *method) in enumerate(_bad_cases(tmp_path)):
        f = tmp_path / f"s{i}.yaml"
        f.write_text(yaml.safe_dump({"name": "b", "data": data, "teacher": teacher, "eval": EVAL, **dict(*method)}))
        try:
            preflight.inputs(load_sweep(f))
        except ConfigError as e:
            assert msg is not None and "\n" not in str(e) and str(e).startswith(str(f)), (i, str(e))
            import re

            assert re.search(msg, str(e)), (i, str(e))
        else:
            assert msg is None, (i, "accepted", teacher)


def test_a_bad_teacher_exits_2_from_the_cli_without_starting_ray(tmp_path):
    import subprocess
    import sys

    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"name": "b", "data": DIGITS, "teacher": {"kind": "diffusers", "path": str(tmp_path)}}))
    code = (
        "import sys; from multistep.cli import main; rc = main(sys.argv[1:]); "
        "print('ray' in sys.modules, file=sys.stderr); sys.exit(rc)"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, "sweep", str(f), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("multistep:")]
    assert p.returncode == 2 and len(lines) == 1 and "teacher.path" in lines[0] and "neither a diffusers" in lines[0], (
        p.stderr
    )
    assert p.stderr.strip().splitlines()[-1] == "False" and not (tmp_path / "m.db").exists()
