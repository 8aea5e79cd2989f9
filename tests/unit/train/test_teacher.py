"""Trained teachers (train/teacher.py): a digits teacher's FD falls with steps, checkpoints round-trip and bad files
are refused, label embeddings train; config errors, `multistep teacher` through real Ray Train + a real sqlite MLflow
store, and a sweep that names the teacher by path and by MLflow run id (issue 3)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from multistep.cli import main
from multistep.config import ConfigError, load_sweep, load_teacher_file
from multistep.data.digits import batches, load_digits
from multistep.diffusion.samplers import ddim_sample
from multistep.diffusion.schedules import make_schedule
from multistep.metrics.frechet import frechet_distance, gaussian_stats
from multistep.nets.mlp import VDenoiser
from multistep.nets.unet import UNet
from multistep.train.teacher import load_teacher, save_teacher, train_teacher

pytestmark = pytest.mark.usefixtures("one_thread_module")

TEACHER = {
    "name": "tiny-teacher",
    "experiment": "teachers",
    "data": {"kind": "digits"},
    "net": {"kind": "unet", "base_ch": 4, "ch_mult": [1], "time_dim": 8},  # 2,777 parameters
    "train": {"iterations": 50, "batch_size": 32, "learning_rate": 2e-3, "log_every": 10},
    "eval": {"samples": 200, "steps": [1, 4, 16]},
}


def _write(tmp_path, name: str, doc: dict):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


@pytest.mark.parametrize(
    "doc, expect",
    [
        ({"teacher": {"kind": "checkpoint"}}, "teacher.path: required for kind: checkpoint"),
        (
            {"teacher": {"kind": "checkpoint", "path": "nope/teacher.pt"}},
            "nope/teacher.pt: teacher checkpoint not found",
        ),
        (
            {"teacher": {"kind": "hub"}},
            "teacher.kind: 'hub': not a teacher kind (registered: analytic, checkpoint, mlflow, diffusers, torchscript, state_dict)",
        ),
        ({"teacher": {"kind": "mlflow"}}, "teacher.run_id: required for kind: mlflow"),
        (
            {"data": {"kind": "parquet"}, "teacher": {"kind": "mlflow", "run_id": "x"}},
            "data.path: required for kind: parquet",
        ),
        (
            {"data": {"kind": "parquet", "path": "no/such/dir"}, "teacher": {"kind": "mlflow", "run_id": "x"}},
            "data.path: /",
        ),
        ({"data": {"kind": "digits", "size": 12}}, "data.size"),
        ({"data": {"kind": "digits"}}, "teacher: the analytic teacher is the exact denoiser of a gmm"),
    ],
)
def test_sweep_teacher_and_data_errors(tmp_path, doc, expect):
    f = _write(tmp_path, "bad.yaml", doc)
    with pytest.raises(ConfigError) as e:
        load_sweep(f)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{f}: ") and expect in msg


def test_teacher_file_errors_exit_2(tmp_path, capsys):
    for doc, expect in [
        ({**TEACHER, "bogus": 1}, "bogus: unknown key"),
        ({**TEACHER, "net": {"kind": "cnn"}}, "net: Input tag 'cnn'"),
        ({**TEACHER, "net": {"kind": "unet", "widht": 3}}, "net.widht: unknown key"),
        ({**TEACHER, "data": {"kind": "gmm", "shape": [8]}}, "net: unet needs image data"),
        ({**TEACHER, "net": {"kind": "unet", "ch_mult": [1, 2, 2, 2, 2]}}, "net: resolution 8 is not divisible"),
    ]:
        f = _write(tmp_path, "t.yaml", doc)
        assert main(["teacher", str(f), "--dry-run", "--tracking-uri", str(tmp_path / "m.db")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(f) in err[0] and expect in err[0], err
    f = _write(tmp_path, "ok.yaml", TEACHER)
    assert load_teacher_file(f).net.base_ch == 4
    assert main(["teacher", str(f), "--dry-run"]) == 0 and '"parameters": 2777' in capsys.readouterr().out
    assert not (tmp_path / "m.db").exists()


def test_image_data_kinds(tmp_path):
    from multistep.config import DataCfg
    from multistep.data.parquet import write_shards
    from multistep.train.build import make_data

    digits = make_data(DataCfg(kind="digits", size=16))
    a, b = (digits.sample(300, torch.Generator().manual_seed(0)) for _ in range(2))
    assert (
        digits.shape == (1, 16, 16) and a.shape == (300, 1, 16, 16) and torch.equal(a, b)
    )  # rows drawn by the generator
    assert a.min() == -1 and a.max() == 1 and a.dtype == torch.float32
    assert make_data(DataCfg(kind="digits")).sample(2, dtype=torch.float64).dtype == torch.float64
    imgs = np.random.default_rng(0).integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    write_shards(imgs, None, tmp_path / "ds", shard_size=20)
    cfg = DataCfg(kind="parquet", path=str(tmp_path / "ds"))
    data = make_data(cfg)
    x = data.sample(1000, torch.Generator().manual_seed(1))
    assert data.shape == (3, 4, 4) and cfg.fd_space == "pixel" and cfg.label == "parquet:ds"
    pixels = {tuple(np.round((r.numpy() + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0).ravel()) for r in x}
    assert pixels <= {tuple(i.ravel()) for i in imgs} and len(pixels) > 40  # real images, NHWC -> NCHW, [-1, 1]


def test_build_with_checkpoint_teacher(tmp_path):
    from multistep.config import TrialCfg
    from multistep.train.build import build
    from multistep.train.teacher import save_teacher

    net_cfg = {"kind": "unet", "base_ch": 4, "ch_mult": [1], "time_dim": 8, "in_ch": 1, "resolution": 8}
    from multistep.train.teacher import build_net

    torch.manual_seed(0)
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in build_net(net_cfg).state_dict().items()}
    path = save_teacher(
        tmp_path / "t.pt", net_cfg, state, {"schedule": {"name": "clipped_cosine", "params": {}}, "shape": [1, 8, 8]}
    )
    cfg = TrialCfg.model_validate(
        {
            "data": {"kind": "digits"},
            "teacher": {"kind": "checkpoint", "path": str(path)},
            "student": {"init_iterations": 3000},
        }
    )
    c = build(cfg)
    assert c.schedule.name == "clipped_cosine"  # the checkpoint's schedule, not the config's default
    t_params, s_params = list(c.teacher.net.parameters()), list(c.student.net.parameters())
    assert all(torch.equal(a, b) and a is not b for a, b in zip(t_params, s_params))  # student = a copy of the teacher
    assert not any(p.requires_grad for p in t_params) and all(p.requires_grad for p in s_params)
    z, t = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    assert c.teacher(z, t).dtype == torch.float64 and torch.equal(c.teacher(z, t), c.student(z, t))
    with pytest.raises(ConfigError, match=r"teacher.path: .*shape \(1, 8, 8\).*digits16.*\(1, 16, 16\)"):
        build(
            TrialCfg.model_validate(
                {"data": {"kind": "digits", "size": 16}, "teacher": {"kind": "checkpoint", "path": str(path)}}
            )
        )
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="teacher.path: .*junk.pt: not a readable teacher checkpoint"):
        build(
            TrialCfg.model_validate(
                {"data": {"kind": "digits"}, "teacher": {"kind": "checkpoint", "path": str(tmp_path / "junk.pt")}}
            )
        )


def _sweep_doc(path: str, run_id: str, shards: str) -> dict:
    """3 trials: the same teacher named by local path and by MLflow run id, and by path on the digits as Parquet shards."""
    return {
        "name": "tiny-digits",
        "experiment": "tests-teacher",
        "data": {"kind": "digits"},
        "teacher": {"kind": "checkpoint", "path": path},
        "method": {"name": "mcm", "student_steps": 2, "anneal": {"name": "loglinear", "start": 4, "end": 16}},
        "train": {"iterations": 30, "batch_size": 32, "log_every": 10, "checkpoint_every": 30},
        "eval": {"samples": 200, "teacher_steps": [1, 2], "ode_steps": 16},
        "resources": {"max_concurrent_trials": 2},
        "search": [
            {"teacher.kind": {"grid": ["checkpoint"]}},
            {"teacher.kind": {"grid": ["mlflow"]}, "teacher.run_id": {"grid": [run_id]}},
            {"data.kind": {"grid": ["parquet"]}, "data.path": {"grid": [shards]}},
        ],
    }


def test_a_teacher_file_records_its_whole_data_config():
    """A correlated mixture keeps rank, rank_std and smooth in the teacher file's data line (`multistep eval
    teacher.pt` rebuilds the data from it; the printed sweep line is pasted by users)."""
    from multistep.config import DataCfg
    from multistep.data import data_kind

    d = DataCfg(kind="gmm", shape=[1, 8, 8], components=3, rank=2, rank_std=0.3, smooth=2, seed=5)
    assert DataCfg.model_validate(data_kind(d).identity(d)) == d
    digits = DataCfg(kind="digits", size=16)
    assert data_kind(digits).identity(digits) == {"kind": "digits", "size": 16}


@pytest.mark.slow
def test_teacher_job_then_sweep_by_path_and_by_run(ray_local, tmp_path, monkeypatch):
    from multistep.sweep.driver import run_sweep

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")  # run_sweep sets it; restored after the test
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    f = _write(tmp_path, "teacher.yaml", TEACHER)
    assert main(["teacher", str(f), "--tracking-uri", uri, "--storage", str(tmp_path / "rr")]) == 0

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("teachers")
    (run,) = client.search_runs([exp.experiment_id])
    rid = run.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags["multistep.kind"] == "teacher"
    loss = client.get_metric_history(rid, "train/loss")
    assert [m.step for m in loss] == [10, 20, 30, 40, 50] and all(m.value > 0 for m in loss)
    assert loss[-1].value < loss[0].value  # it learns something in 50 iterations
    assert sorted(m.step for m in client.get_metric_history(rid, "fd_pixel_200")) == [1, 4, 16]
    assert {"teacher.pt", "teacher.yaml"} <= {a.path for a in client.list_artifacts(rid)}
    ckpt = tmp_path / "rr" / "teachers" / "tiny-teacher" / "teacher.pt"
    net, info = load_teacher(ckpt)
    assert info["meta"]["shape"] == [1, 8, 8] and info["meta"]["schedule"]["name"] == "cosine"
    assert sum(p.numel() for p in net.parameters()) == 2777
    import numpy as np

    out = tmp_path / "samples.npy"  # the teacher file samples as a teacher (it was taken for a trial checkpoint)
    assert main(["sample", str(ckpt), "--steps", "2", "--num", "6", "--out", str(out)]) == 0
    assert np.load(out).shape == (6, 1, 8, 8)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "exported")]) == 2  # a student's command, said so

    from multistep.config import DataCfg
    from multistep.data.parquet import write_shards
    from multistep.train.build import make_data

    digits = make_data(DataCfg(kind="digits"))  # the same images as Parquet shards, streamed by the worker
    pixels = (
        ((digits.x + 1) * 127.5).round().to(torch.uint8).numpy().transpose(0, 2, 3, 1)
    )  # NCHW [-1, 1] -> NHWC uint8
    write_shards(pixels, None, tmp_path / "shards", shard_size=500)
    sweep = _write(tmp_path, "sweep.yaml", _sweep_doc(str(ckpt), rid, str(tmp_path / "shards")))
    rc = run_sweep(load_sweep(sweep), uri, str(tmp_path / "rr"))
    assert rc == 0
    exp = client.get_experiment_by_name("tests-teacher")
    runs = client.search_runs([exp.experiment_id])
    trials = sorted(
        (r for r in runs if r.data.tags.get("multistep.kind") == "trial"),
        key=lambda r: int(r.data.tags["multistep.trial_index"]),
    )
    (sweep_run,) = [r for r in runs if r.data.tags.get("multistep.kind") == "sweep"]
    assert [t.data.params["teacher.kind"] for t in trials] == ["checkpoint", "mlflow", "checkpoint"]
    assert trials[2].data.params["data.kind"] == "parquet"
    fetched = trials[1].data.params["teacher.path"]  # the driver downloaded the artifact for the workers
    assert fetched.startswith(str(tmp_path / "rr" / "cache")) and open(fetched, "rb").read() == ckpt.read_bytes()
    for t in trials:
        assert t.info.status == "FINISHED"
        (fd,) = client.get_metric_history(t.info.run_id, "fd_pixel_200")
        assert fd.step == 2 and fd.value > 0
        assert "fd_identity_200" not in t.data.metrics
    # both trials start from the same teacher (the student is its copy) with the same seed: same numbers
    a, b = (client.get_metric_history(t.info.run_id, "fd_pixel_200")[0].value for t in trials[:2])
    assert a == pytest.approx(b, rel=1e-6)
    assert sweep_run.info.status == "FINISHED" and sweep_run.data.tags["multistep.dataset"] == "digits8"
    curve = client.get_metric_history(sweep_run.info.run_id, "fd_pixel_200/teacher_ddim")
    assert sorted(m.step for m in curve) == [1, 2]
    assert torch.isfinite(torch.tensor([m.value for m in curve])).all()


STEPS = (1, 2, 4, 8, 16, 64)
TINY = dict(
    kind="unet", in_ch=1, base_ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), resolution=8, time_dim=32
)


@pytest.fixture(scope="module")
def digits_teacher():
    x, _ = load_digits()
    sched = make_schedule("cosine")
    cfg = dict(TINY)
    net = UNet(**{k: v for k, v in cfg.items() if k != "kind"})
    t0 = time.perf_counter()
    net, ema, hist = train_teacher(
        net, sched, batches(x, None, 128, seed=0), iterations=300, lr=3e-3, ema=0.99, seed=0, log_every=100
    )
    return cfg, net, ema, hist, time.perf_counter() - t0, sched, x


def test_digits_teacher_curve_falls_with_steps(digits_teacher):
    cfg, net, ema, hist, seconds, sched, x = digits_teacher
    assert len(hist) == 3 and hist[-1]["loss"] < hist[0]["loss"]
    f = VDenoiser(ema, sched)
    mu, cov = gaussian_stats(x.reshape(len(x), -1).numpy())
    noise = torch.randn(500, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    fd = {}
    for n in STEPS:
        s, nfe = ddim_sample(f, sched, noise, n)
        assert nfe == n and s.shape == noise.shape
        fd[n] = frechet_distance(*gaussian_stats(s.reshape(len(s), -1).numpy()), mu, cov)
    print(
        f"\ndigits teacher ({sum(p.numel() for p in ema.parameters())} params, 300 it, {seconds:.1f} s): "
        + ", ".join(f"FD@{n}={v:.2f}" for n, v in fd.items())
    )
    assert all(np.isfinite(list(fd.values())))
    assert fd[2] < fd[1] and fd[4] < fd[2] and fd[16] < fd[1] / 3 and fd[64] < fd[1] / 3


def test_teacher_checkpoint_round_trip_and_bad_files(digits_teacher, tmp_path):
    cfg, _, ema, _, _, sched, _ = digits_teacher
    p = save_teacher(
        tmp_path / "t" / "teacher.pt", cfg, ema.state_dict(), meta={"schedule": "cosine", "data": "digits"}
    )
    assert not list(p.parent.glob(".*tmp"))
    net, info = load_teacher(p)
    z, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    assert torch.equal(net(z, t), ema(z, t)) and info["meta"]["data"] == "digits" and info["net"]["base_ch"] == 8
    assert not any(q.requires_grad for q in net.parameters()) and not net.training

    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(p.read_bytes()[:200])
    other = save_teacher(
        tmp_path / "other.pt", {**cfg, "base_ch": 4}, ema.state_dict()
    )  # weights do not fit the config
    blob = torch.load(p, weights_only=True)
    newer = tmp_path / "v9.pt"
    torch.save({**blob, "version": 9}, newer)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": blob["state"]}, foreign)
    for f, match in (
        (truncated, "not a readable"),
        (other, "incompatible"),
        (newer, "version 9"),
        (foreign, "not a multistep teacher"),
        (tmp_path / "missing.pt", "not found"),
    ):
        with pytest.raises(ValueError, match=match) as e:
            load_teacher(f)
        assert f.name in str(e.value)


def test_conditional_teacher_trains_label_embedding():
    x, y = load_digits()
    net = UNet(1, 4, (1,), 1, (), 8, 0.0, num_classes=10, time_dim=8)
    before = net.label_emb.weight.detach().clone()
    logged = []
    net, ema, hist = train_teacher(
        net,
        make_schedule("cosine"),
        batches(x, y, 32, seed=1),
        iterations=20,
        lr=1e-3,
        seed=0,
        log=lambda it, m: logged.append(it),
        label_dropout=0.5,
        log_every=10,
    )
    assert logged == [10, 20] and all(np.isfinite(h["loss"]) for h in hist)
    changed = (net.label_emb.weight - before).abs().sum(1) > 0
    assert changed[:10].any() and changed[10]  # real classes and the null class (CFG dropout) both learn
    assert not torch.equal(ema.label_emb.weight, net.label_emb.weight)  # EMA lags the online weights
