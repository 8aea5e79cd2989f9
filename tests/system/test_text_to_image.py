"""Text-to-image teachers in the Stable Diffusion format, end to end on CPU: a random tiny pipeline folder saved by
diffusers' own save_pretrained (UNet2DConditionModel, AutoencoderKL, CLIP text encoder and tokenizer) distilled on
a caption set by a real sweep (Ray Tune, SQLite MLflow), in the VAE's latent space, FD on decoded images."""

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from conftest import CAPTIONS, caption_set, tiny_sd_pipeline
from multistep.config import ConfigError, load_sweep
from multistep.sweep import preflight

pytest.importorskip("diffusers")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pipeline_and_captions(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    return tiny_sd_pipeline(root), caption_set(root / "captions")


def sweep_doc(pipe, captions, **over) -> dict:
    return {
        "name": "t2i",
        "experiment": "tests-t2i",
        "data": {"kind": "parquet", "path": str(captions)},
        "teacher": {"kind": "diffusers", "path": str(pipe), "check": False},  # random weights: not plausible
        "method": {"name": "mcm", "student_steps": 2, "guidance": 1.0, "anneal": {"name": "constant", "n": 8}},
        "train": {"iterations": 6, "batch_size": 8, "log_every": 3, "checkpoint_every": 6},
        "eval": {"samples": 48, "teacher_steps": [2], "ode_steps": 4, "diversity_rows": 0, "kid_subsets": 0},
        "resources": {"max_concurrent_trials": 1},
    } | over


def test_the_teacher_runs_in_latent_space_on_caption_ids(pipeline_and_captions, tmp_path):
    """build(): the data are the VAE's latents (scaling_factor x the encoder mean) of the caption set's images, the
    labels caption ids into the sorted vocabulary, and the teacher's x_hat for id k is the UNet with caption k's
    token states (id K, the empty prompt's) through the DDPM adapter: checked against diffusers' own calls."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from multistep.config import TrialCfg
    from multistep.data.kinds import as_float
    from multistep.train.build import build

    pipe, data = pipeline_and_captions
    doc = {k: v for k, v in sweep_doc(pipe, data).items() if k in TrialCfg.model_fields}
    tc = TrialCfg.model_validate(doc | {"method": {"name": "mcm"}})
    c = build(tc)
    words = sorted(CAPTIONS)
    vae = AutoencoderKL.from_pretrained(str(pipe / "vae"))
    images = c.data.x.shape, c.data.captions
    assert images == ((96, 4, 4, 4), words)
    from multistep.data.parquet import list_shards, read_captions, read_shard

    shard = list_shards(str(data))[0]
    x = torch.from_numpy(read_shard(shard)[0][:5].transpose(0, 3, 1, 2).copy())
    want = vae.encode(as_float(x)).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(c.data.x[:5], want, rtol=1e-5, atol=1e-5)
    assert [words[i] for i in c.data.labels[:5]] == read_captions(shard)[:5]
    # the teacher's x_hat: eps-prediction DDPM, so x_hat = (z - sigma eps) / alpha at the discrete timestep
    tok = CLIPTokenizer.from_pretrained(str(pipe / "tokenizer"))
    enc = CLIPTextModel.from_pretrained(str(pipe / "text_encoder"))
    unet = UNet2DConditionModel.from_pretrained(str(pipe / "unet"))
    prompts = [words[1], ""]
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        states = enc(ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state
        z = torch.randn(2, 4, 4, 4, dtype=torch.float64)
        t = torch.ones(2, dtype=torch.float64)  # the last discrete timestep (999)
        got = c.teacher(z, t, torch.tensor([1, len(words)]))
        eps = unet(z.float(), torch.tensor([999.0, 999.0]), encoder_hidden_states=states).sample.double()
    a, s = (u.reshape(-1, 1, 1, 1) for u in c.schedule.alpha_sigma(t))
    torch.testing.assert_close(got, (z - s * eps) / a, rtol=1e-4, atol=1e-4)
    # FD compares decoded images: the evaluator's features of latents are the VAE decoder's pixels
    from multistep.metrics.extractors import features_fn
    from multistep.sweep.assets import make_extractor_for

    features = features_fn(make_extractor_for(tc, c.data, tmp_path), c.data.shape)
    with torch.no_grad():
        pixels = vae.decode(c.data.x[:4] / vae.config.scaling_factor).sample.clamp(-1, 1)
    assert features(c.data.x[:4]).shape == (4, 3 * 8 * 8)
    torch.testing.assert_close(
        torch.from_numpy(features(c.data.x[:4])), pixels.reshape(4, -1).double(), atol=1e-5, rtol=1e-5
    )


@pytest.mark.slow
def test_a_sweep_distils_a_pipeline_folder_on_a_caption_set(ray_local, pipeline_and_captions, tmp_path, monkeypatch):
    from multistep.sweep.driver import run_sweep

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    pipe, data = pipeline_and_captions
    f = tmp_path / "t2i.yaml"
    f.write_text(yaml.safe_dump(sweep_doc(pipe, data)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run_sweep(load_sweep(f), uri, str(tmp_path / "ray"), say=lambda *_: None) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tests-t2i").experiment_id])
    [trial] = [r for r in runs if r.data.tags.get("multistep.kind") == "trial"]
    assert trial.info.status == "FINISHED" and trial.data.tags["multistep.method"] == "mcd_cfg1"
    m = trial.data.metrics
    fd = [k for k in m if k.startswith("fd_pixel")]
    assert fd and all(torch.isfinite(torch.tensor(m[k])) for k in fd), m  # FD on decoded 8x8x3 images


def test_bad_text_to_image_input_is_one_line_before_anything_starts(pipeline_and_captions, tmp_path):
    pipe, data = pipeline_and_captions
    cases = [
        ({"data": {"kind": "digits"}}, "is a text-to-image pipeline; it needs caption data"),
        ({"data": {"kind": "digits", "size": 16}}, "is a text-to-image pipeline; it needs caption data"),
    ]
    for i, (over, msg) in enumerate(cases):
        f = tmp_path / f"b{i}.yaml"
        f.write_text(yaml.safe_dump(sweep_doc(pipe, data, **over)))
        with pytest.raises(ConfigError, match=msg) as e:
            preflight.inputs(load_sweep(f))
        assert "\n" not in str(e.value) and str(e.value).startswith(str(f))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(sweep_doc(pipe, data)))
    preflight.inputs(load_sweep(good))  # passes
