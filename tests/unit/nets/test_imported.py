"""diffusers teachers (nets/imported.py) with tiny random UNet2DModels saved by the test: the platform's N-step DDIM
from a noise file equals diffusers' own DDIMScheduler (eta = 0, clip_sample off, "trailing" spacing) step for step,
and at 1,000 steps diffusers' default DDIM; epsilon, v and sample prediction on two beta schedules; labels of a
class-conditional UNet; bad folders are one line naming the field."""

import json

import pytest
import torch

from conftest import tiny_unet
from multistep.config import TeacherCfg
from multistep.diffusion.samplers import ddim_sample
from multistep.nets import imported
from multistep.teachers import teacher_kind

pytestmark = pytest.mark.usefixtures("one_thread")
diffusers = pytest.importorskip("diffusers")


def open_teacher(t: TeacherCfg):
    """(denoiser, declaration) of a diffusers teacher, as its teacher kind opens it."""
    return teacher_kind(t).open(t)


def save_pipeline(path, prediction_type="epsilon", beta_schedule="linear", num_class_embeds=None, **sched):
    unet = tiny_unet(num_class_embeds=num_class_embeds)
    s = diffusers.DDPMScheduler(
        beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=False, **sched
    )
    diffusers.DDPMPipeline(unet=unet, scheduler=s).save_pretrained(str(path))
    return unet.eval(), s


@torch.no_grad()
def diffusers_ddim(unet, scheduler, noise, steps, labels=None, **kw):
    d = diffusers.DDIMScheduler.from_config(scheduler.config, **kw)
    d.set_timesteps(steps)
    x = noise.clone()
    for t in d.timesteps:
        x = d.step(unet(x, t, class_labels=labels).sample, t, x, eta=0.0).prev_sample
    return x.double()


NOISE = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "prediction_type,beta_schedule",
    [("epsilon", "linear"), ("v_prediction", "squaredcos_cap_v2"), ("sample", "linear"), ("epsilon", "scaled_linear")],
)
def test_ddim_equals_diffusers_ddim_step_for_step(tmp_path, prediction_type, beta_schedule):
    unet, s = save_pipeline(tmp_path / "p", prediction_type, beta_schedule)
    f, decl = open_teacher(TeacherCfg(kind="diffusers", path=str(tmp_path / "p")))
    assert decl["parameterization"] == imported.PREDICTION_TYPES[prediction_type]
    theirs = diffusers_ddim(unet, s, NOISE, 20, timestep_spacing="trailing")
    ours = ddim_sample(f, f.schedule, NOISE.double(), 20)[0]
    rel = float((ours - theirs).abs().max() / theirs.abs().max())
    assert rel < 2e-5, rel  # float32 networks, identical timesteps


def test_many_step_ddim_converges_to_diffusers_default_ddim(tmp_path):
    unet, s = save_pipeline(tmp_path / "p", "v_prediction", "linear", num_train_timesteps=200)
    f, _ = open_teacher(TeacherCfg(kind="diffusers", path=str(tmp_path / "p")))
    theirs = diffusers_ddim(unet, s, NOISE, 200)  # default ("leading") spacing: every timestep
    err = [float((ddim_sample(f, f.schedule, NOISE.double(), n)[0] - theirs).abs().max()) for n in (10, 200)]
    assert err[1] < 1e-4 < err[0], err  # 10 steps: a coarser solve of the same ODE; 200: the same steps


def test_class_conditional_unet_takes_the_labels_and_maps_the_null_class(tmp_path):
    save_pipeline(tmp_path / "p", num_class_embeds=4)
    t = TeacherCfg(kind="diffusers", path=str(tmp_path / "p"), num_classes=3, null_label=0)  # trained: 0 = no class
    f, decl = open_teacher(t)
    assert (f.num_classes, decl["num_classes"]) == (3, 3)
    z, tt = NOISE.double(), torch.full((4,), 0.5, dtype=torch.float64)
    label = lambda k: torch.full((4,), k)
    assert torch.equal(f(z, tt, label(3)), f(z, tt, label(0)))  # the platform's null class (3) is the UNet's 0
    assert not torch.allclose(f(z, tt, label(1)), f(z, tt, label(0)))  # the labels reach the UNet
    unconditional = open_teacher(TeacherCfg(kind="diffusers", path=str(tmp_path / "p")))[0]
    assert unconditional.num_classes == 4  # num_class_embeds, when the YAML does not say


def test_bad_diffusers_folders_are_one_line_naming_the_field(tmp_path):
    bare = tmp_path / "bare"
    tiny_unet().save_pretrained(str(bare))  # a model folder without a scheduler config
    with pytest.raises(ValueError, match=r"^teacher.path: .* has no scheduler config .* give teacher.parameterization"):
        open_teacher(TeacherCfg(kind="diffusers", path=str(bare)))
    f, decl = open_teacher(
        TeacherCfg(kind="diffusers", path=str(bare), parameterization="eps", ddpm={"beta_schedule": "linear"})
    )
    assert decl["parameterization"] == "eps"
    save_pipeline(tmp_path / "flow")
    cfg = tmp_path / "flow" / "scheduler" / "scheduler_config.json"
    cfg.write_text(json.dumps(json.loads(cfg.read_text()) | {"prediction_type": "flow_prediction"}))
    with pytest.raises(ValueError, match=r"^teacher.path: .*unsupported prediction_type 'flow_prediction'"):
        open_teacher(TeacherCfg(kind="diffusers", path=str(tmp_path / "flow")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"^teacher.path: .*neither a diffusers pipeline"):
        open_teacher(TeacherCfg(kind="diffusers", path=str(tmp_path / "empty")))
    (bare / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"^teacher.path: .*diffusers could not load it"):
        open_teacher(TeacherCfg(kind="diffusers", path=str(bare), parameterization="eps", ddpm={}))


def test_sample_command_writes_diffusers_ddim_samples_from_a_noise_file(tmp_path):
    import numpy as np

    from multistep.cli import main

    unet, s = save_pipeline(tmp_path / "p", "v_prediction")
    np.save(tmp_path / "noise.npy", NOISE.numpy())
    args = ["sample", str(tmp_path / "p"), "--steps", "10", "--noise", str(tmp_path / "noise.npy")]
    assert main([*args, "--out", str(tmp_path / "x.npy"), "--grid", str(tmp_path / "g.png")]) == 0
    x = np.load(tmp_path / "x.npy")
    theirs = diffusers_ddim(unet, s, NOISE, 10, timestep_spacing="trailing").float().numpy()
    assert x.dtype == np.float32 and x.shape == (4, 1, 8, 8) and (tmp_path / "g.png").stat().st_size > 0
    assert np.abs(x - theirs).max() / np.abs(theirs).max() < 2e-5
    assert (
        main(["sample", str(tmp_path / "p"), "--sampler", "mcm", "--steps", "2", "--out", str(tmp_path / "y.npy")]) == 2
    )
    np.save(tmp_path / "bad.npy", np.zeros((4, 3, 8, 8), np.float32))
    assert main([*args[:4], "--noise", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "z.npy")]) == 2
    assert not (tmp_path / "z.npy").exists()
