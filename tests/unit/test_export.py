"""`multistep export` (export.py): every format round-trips to the platform's own samples from the same noise
(`multistep sample STATE.pt --noise`), the diffusers one through diffusers' own loader; `multistep sample` takes the
export folders; --register adds model versions in a real SQLite MLflow store; bad requests are one line, exit 2."""

import json

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_unet
from multistep.cli import main
from multistep.config import TrialCfg
from multistep.train.build import build, make_method
from multistep.train.loop import fit, new_state

pytestmark = pytest.mark.usefixtures("one_thread")
diffusers = pytest.importorskip("diffusers")


def trial_checkpoint(path, doc: dict) -> str:
    """A few iterations of a trial, saved as a sweep trial saves its state.pt (with its trial config)."""
    tc = TrialCfg.model_validate(doc)
    c = build(tc)
    method = make_method(tc, c)
    state = new_state(c.student, 1e-3, 0, method)
    fit(state, method, lambda g: c.data.sample(16, g), 4, 1.0, 0.5, 100, 10**6)  # EMA 0.5: EMA != online net
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"version": 1, "state": state.state_dict(), "rng_per_rank": [], "trial": tc.model_dump(mode="json")}
    torch.save(blob, path)
    return str(path)


GMM = {
    "data": {"kind": "gmm", "shape": [6], "components": 3, "seed": 1},
    "student": {"hidden": 16, "depth": 2, "time_dim": 8, "init_iterations": 0},
    "method": {"student_steps": 3},
}


def diffusers_student(tmp_path, num_class_embeds=None) -> str:
    unet = tiny_unet(num_class_embeds=num_class_embeds)
    s = diffusers.DDPMScheduler(prediction_type="v_prediction", clip_sample=False)
    diffusers.DDPMPipeline(unet=unet, scheduler=s).save_pretrained(str(tmp_path / "teacher"))
    teacher = {"kind": "diffusers", "path": str(tmp_path / "teacher"), "check": False}
    if num_class_embeds:
        teacher |= {"num_classes": num_class_embeds - 1, "null_label": num_class_embeds - 1}
    doc = {"data": {"kind": "digits"}, "teacher": teacher, "method": {"student_steps": 2}}
    return trial_checkpoint(tmp_path / "trial-000" / "state.pt", doc)


def platform_samples(tmp_path, state, noise, labels=None) -> np.ndarray:
    np.save(tmp_path / "noise.npy", noise)
    extra = []
    if labels is not None:
        np.save(tmp_path / "labels.npy", labels)
        extra = ["--labels", str(tmp_path / "labels.npy")]
    assert (
        main(["sample", state, "--noise", str(tmp_path / "noise.npy"), *extra, "--out", str(tmp_path / "p.npy")]) == 0
    )
    return np.load(tmp_path / "p.npy")


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


IMAGE_GMM = {  # a UNet student on a correlated image-shaped mixture (the second benchmark, tiny)
    "data": {"kind": "gmm", "shape": [3, 8, 8], "components": 3, "rank": 2, "smooth": 2, "seed": 1},
    "student": {"net": "unet", "base_ch": 8, "ch_mult": [1, 2], "time_dim": 8, "init_iterations": 0},
    "method": {"student_steps": 3},
}


@pytest.mark.parametrize("doc, kind", [(GMM, "mlp"), (IMAGE_GMM, "unet")], ids=["mlp", "unet"])
def test_a_platform_student_round_trips_through_safetensors_and_torchscript(tmp_path, doc, kind):
    from multistep import export

    state = trial_checkpoint(tmp_path / "trial-000" / "state.pt", doc)
    noise = np.random.default_rng(0).standard_normal((32, *doc["data"]["shape"])).astype(np.float32)
    want = platform_samples(tmp_path, state, noise)
    assert main(["export", state, "--out", str(tmp_path / "st")]) == 0
    spec = json.loads((tmp_path / "st" / "multistep.json").read_text())
    assert (
        spec["student_steps"] == 3
        and spec["time_grid"] == [1.0, 2 / 3, 1 / 3, 0.0]
        and spec["network"]["net"]["kind"] == kind
    )
    f, _ = export.load(tmp_path / "st")  # the reload code of docs/export.md
    from multistep.diffusion.samplers import mcm_sample

    got = mcm_sample(f, f.schedule, torch.from_numpy(noise).double(), 3)[0].float().numpy()
    assert rel(got, want) < 1e-6
    assert main(["export", state, "--out", str(tmp_path / "ts"), "--format", "torchscript"]) == 0
    sampler = torch.jit.load(str(tmp_path / "ts" / "sampler.pt"))  # needs nothing of this platform
    assert rel(sampler.sample(torch.from_numpy(noise)).numpy(), want) < 1e-6
    for folder in ("st", "ts"):  # `multistep sample` takes the export folders
        assert (
            main(
                [
                    "sample",
                    str(tmp_path / folder),
                    "--noise",
                    str(tmp_path / "noise.npy"),
                    "--out",
                    str(tmp_path / "e.npy"),
                ]
            )
            == 0
        )
        assert rel(np.load(tmp_path / "e.npy"), want) < 1e-6


def test_a_diffusers_student_exports_to_a_folder_diffusers_loads(tmp_path):
    state = diffusers_student(tmp_path, num_class_embeds=11)
    noise = np.random.default_rng(1).standard_normal((6, 1, 8, 8)).astype(np.float32)
    labels = np.array([0, 3, 9, 10, 1, 10])  # 10 = no class
    want = platform_samples(tmp_path, state, noise, labels)
    assert main(["export", state, "--out", str(tmp_path / "hf"), "--format", "diffusers"]) == 0
    unet = diffusers.UNet2DModel.from_pretrained(str(tmp_path / "hf" / "unet"), local_files_only=True).eval()
    sched = diffusers.DDIMScheduler.from_pretrained(str(tmp_path / "hf" / "scheduler"), local_files_only=True)
    sched.set_timesteps(2)  # S
    x = torch.from_numpy(noise)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t, class_labels=torch.from_numpy(labels)).sample, t, x, eta=0.0).prev_sample
    assert rel(x.numpy(), want) < 1e-5
    assert main(["export", state, "--out", str(tmp_path / "ts"), "--format", "torchscript"]) == 0
    got = torch.jit.load(str(tmp_path / "ts" / "sampler.pt")).sample(torch.from_numpy(noise), torch.from_numpy(labels))
    assert rel(got.numpy(), want) < 1e-5


def test_register_adds_a_model_version_per_export(tmp_path):
    from mlflow.tracking import MlflowClient

    state = trial_checkpoint(tmp_path / "trial-000" / "state.pt", GMM)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    for i in (1, 2):
        assert (
            main(["export", state, "--out", str(tmp_path / f"e{i}"), "--register", "gmm-s3", "--tracking-uri", uri])
            == 0
        )
    client = MlflowClient(uri)
    versions = sorted(client.search_model_versions("name='gmm-s3'"), key=lambda v: int(v.version))
    assert [int(v.version) for v in versions] == [1, 2]
    assert versions[0].tags["multistep.student_steps"] == "3" and versions[0].tags["multistep.format"] == "safetensors"
    assert versions[0].source.endswith("/export/safetensors") and versions[0].run_id


def test_exports_that_cannot_be_made_are_one_line_exit_2(tmp_path, capsys):
    state = trial_checkpoint(tmp_path / "trial-000" / "state.pt", GMM)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    cases = [
        (["--out", str(tmp_path / "hf"), "--format", "diffusers"], "--format diffusers: "),
        (["--out", str(tmp_path / "full")], "--out"),
    ]
    for extra, msg in cases:
        assert main(["export", state, *extra]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("multistep:")]
        assert len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "hf").exists()
    doc = yaml.safe_dump({"x": 1})
    (tmp_path / "bad.pt").write_text(doc)
    assert main(["export", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "o")]) == 2


def test_a_flow_map_student_samples_and_exports_at_any_step_count(tmp_path, capsys):
    """`multistep sample STATE --steps K` of a flow-map student is its K jumps (the target time reaches the net),
    the safetensors export records the flowmap sampler and reloads to the same samples at any K; the formats that
    cannot pass a target time, and the MCM sampler, are one line, exit 2."""
    from multistep.diffusion.samplers import flowmap_sample, mcm_sample
    from multistep.train.checkpoint import open_checkpoint
    from multistep.train.student import load_student

    doc = GMM | {"method": {"name": "flowmap", "student_steps": 2, "eval_steps": [1, 2, 4], "p_mean": 0.5}}
    state = trial_checkpoint(tmp_path / "trial-000" / "state.pt", doc)
    f = load_student(tmp_path / "trial-000" / "state.pt", open_checkpoint(state).blob)[5].ema
    assert f.flow_map and f.net.target_proj.weight.abs().sum() > 0  # trained: the jump's target matters
    noise = np.random.default_rng(0).standard_normal((32, 6)).astype(np.float32)
    np.save(tmp_path / "noise.npy", noise)
    z = torch.from_numpy(noise).double()
    assert main(["export", state, "--out", str(tmp_path / "st")]) == 0
    assert json.loads((tmp_path / "st" / "multistep.json").read_text())["sampler"] == "flowmap"
    for K in (1, 3):
        want = flowmap_sample(lambda zz, t, s: f(zz, t, target=s), f.schedule, z, K)[0].float().numpy()
        ignoring_s = mcm_sample(f, f.schedule, z, K)[0].float().numpy()  # the net with its target left out
        assert rel(ignoring_s, want) > 1e-6
        for source in (state, str(tmp_path / "st")):
            args = ["sample", source, "--steps", str(K), "--noise", str(tmp_path / "noise.npy")]
            assert main([*args, "--out", str(tmp_path / "s.npy")]) == 0
            assert rel(np.load(tmp_path / "s.npy"), want) < 1e-6
    cases = [
        (["export", state, "--out", str(tmp_path / "ts"), "--format", "torchscript"], "--format torchscript: "),
        (["sample", state, "--sampler", "mcm", "--out", str(tmp_path / "m.npy")], "--sampler mcm: a flow-map"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("multistep:")]
        assert len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "ts").exists() and not (tmp_path / "m.npy").exists()


def test_a_flow_map_student_of_a_checkpoint_teacher_exports(tmp_path):
    """A flow-map student copied from a `multistep teacher` network gains the target input (add_target_input): the
    safetensors export rebuilds it with that input and reloads to the platform's own samples."""
    from multistep.train.teacher import build_net, save_teacher

    net_cfg = {"kind": "mlp", "dim": 6, "hidden": 16, "depth": 2, "time_dim": 8}
    meta = {"schedule": {"name": "cosine"}, "shape": [6]}
    teacher = save_teacher(tmp_path / "teacher.pt", net_cfg, build_net(net_cfg).state_dict(), meta)
    doc = GMM | {
        "teacher": {"kind": "checkpoint", "path": str(teacher)},
        "student": {"init_iterations": 0},
        "method": {"name": "flowmap", "student_steps": 2, "p_mean": 0.5},
    }
    state = trial_checkpoint(tmp_path / "trial-000" / "state.pt", doc)
    assert main(["export", state, "--out", str(tmp_path / "st")]) == 0
    spec = json.loads((tmp_path / "st" / "multistep.json").read_text())
    assert spec["network"]["net"]["target_input"] is True
    noise = np.random.default_rng(0).standard_normal((16, 6)).astype(np.float32)
    want = platform_samples(tmp_path, state, noise)
    assert rel(platform_samples(tmp_path, str(tmp_path / "st"), noise), want) < 1e-6
