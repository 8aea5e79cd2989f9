"""`multistep eval CHECKPOINT`: teacher and student checkpoints evaluated without Ray (table, files, grids),
and bad input exits 2 with one line naming the file or option."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import REPO
from multistep.cli import main
from multistep.sweep.results import COLUMNS

TINY = REPO / "tests" / "data" / "tiny_sweep.yaml"
UNET = {"kind": "unet", "in_ch": 1, "resolution": 8, "base_ch": 4, "ch_mult": [1], "time_dim": 8}  # 2,777 parameters


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A few-thousand-parameter UNet teacher for 8x8 digits (untrained weights), saved as `multistep teacher` does."""
    from multistep.train.teacher import build_net, save_teacher

    torch.manual_seed(0)
    ema = build_net(UNET)
    meta = {
        "name": "tiny",
        "schedule": {"name": "cosine", "params": {}},
        "data": {"kind": "digits", "size": 8},
        "shape": [1, 8, 8],
    }
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt", UNET, ema.state_dict(), meta)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """Trial 1 of the tiny sweep (MCD, S = 2) trained a few iterations; state.pt where a sweep trial keeps it."""
    from multistep.config import load_sweep
    from multistep.train.build import build, make_method
    from multistep.train.loop import fit, new_state

    tc = load_sweep(TINY).trial_cfg(1)
    c = build(tc)
    method = make_method(tc, c)
    state = new_state(c.student, 1e-3, 0, method)
    fit(state, method, lambda g: c.data.sample(64, g), 8, 1.0, 0.5, 100, 10**6)  # eval EMA 0.5: EMA != online net
    d = tmp_path_factory.mktemp("sweep") / "tiny-20250101-000000" / "trial-001" / "checkpoint_000000"
    d.mkdir(parents=True)
    torch.save({"version": 1, "state": state.state_dict(), "rng_per_rank": []}, d / "state.pt")
    return d, tc, c, method, state


def _pivot(out):
    t = pq.read_table(out / "results.parquet").to_pylist()
    return t, {(r["method"], r["student_steps"], r["metric"]): r["value"] for r in t}


def test_teacher_checkpoint(teacher_ckpt, tmp_path, capsys):
    from multistep.config import DataCfg
    from multistep.diffusion.schedules import make_schedule
    from multistep.metrics.evaluate import ddim_curve
    from multistep.nets.mlp import VDenoiser
    from multistep.train.build import make_data
    from multistep.train.teacher import load_teacher

    out = tmp_path / "ev"
    assert (
        main(
            [
                "eval",
                str(teacher_ckpt),
                "--steps",
                "2,1",
                "--samples",
                "200",
                "--seed",
                "7",
                "--out",
                str(out),
                "--grid",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    lines = [ln.split() for ln in text.splitlines() if ln.startswith("teacher_")]
    assert [(m, int(n)) for m, n, *_ in lines] == [(m, n) for m in ("teacher_addim", "teacher_ddim") for n in (1, 2)]
    assert "fd_pixel_200" in text and "swd_200" in text  # names carry the extractor and the sample count
    rows, got = _pivot(out)
    assert list(pq.read_table(out / "results.parquet").column_names) == COLUMNS and len(rows) == 12
    assert {r["metric"] for r in rows} == {"fd_pixel_200", "kid_pixel_200", "swd_200"} and all(
        math.isfinite(r["value"]) for r in rows
    )
    assert all(r["se"] > 0 for r in rows if r["metric"] == "kid_pixel_200")  # KID carries its own standard error
    assert (out / "results.csv").read_text().startswith('"method"') and (
        out / "metric_vs_steps.png"
    ).stat().st_size > 5000
    # The DDIM points are the ones `multistep teacher` logs for the same seed and sample count.
    net, _ = load_teacher(teacher_ckpt)
    sched = make_schedule("cosine")
    ref, _ = ddim_curve(VDenoiser(net, sched), sched, make_data(DataCfg(kind="digits")), 200, [1, 2], 7, "pixel")
    for r in ref:
        assert got[("teacher_ddim", r["steps"], r["metric"])] == pytest.approx(r["value"], rel=1e-9)
    assert got[("teacher_addim", 1, "fd_pixel_200")] != got[("teacher_ddim", 1, "fd_pixel_200")]
    grids = sorted(p.name for p in out.glob("grid_*.png"))
    assert grids == sorted(f"grid_{m}_{n}steps.png" for m in ("teacher_ddim", "teacher_addim") for n in (1, 2))
    import matplotlib.image

    img = matplotlib.image.imread(out / grids[0])
    assert img.shape[0] >= 8 * 9 and img.shape[0] == img.shape[1] and img.std() > 0.05  # an 8x8 mosaic, not blank
    meta = json.loads((out / "eval.json").read_text())
    assert meta["kind"] == "teacher" and meta["samples"] == 200 and meta["seed"] == 7 and meta["steps"] == [1, 2]
    assert len(meta["checkpoint_sha256"]) == 64 and meta["noise_floor"]["fd_pixel_200"] > 0


def test_student_checkpoint(student, tmp_path, capsys):
    from multistep.metrics.evaluate import evaluate, make_eval_ref, metric_names

    d, tc, c, method, state = student
    out = tmp_path / "ev"
    assert (
        main(
            [
                "eval",
                str(d),
                "--config",
                str(TINY),
                "--steps",
                "1,2,4",
                "--samples",
                "200",
                "--out",
                str(out),
                "--grid",
                "--with-teacher",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "--grid: samples of shape (8,) are not images" in text
    keys = [(ln.split()[0], int(ln.split()[1])) for ln in text.splitlines() if ln.startswith(("mcd", "teacher_"))]
    assert keys == [("mcd", 2), ("mcd_S2", 1), ("mcd_S2", 4)] + [
        (m, n) for m in ("teacher_addim", "teacher_ddim") for n in (1, 2, 4)
    ]
    rows, got = _pivot(out)
    diversity = {"precision_200", "recall_200", "modes_missed_200", "mode_tv_200"}  # eval.diversity_rows, cut to 200
    quality = {"fd_identity_200", "kid_identity_200", "swd_200", "ode_l2_200"}
    assert {r["metric"] for r in rows} == quality | diversity and len(rows) == 8 * 9
    mine = [r for r in rows if r["method"] == "mcd"]
    assert {r["trial_id"] for r in mine} == {"trial-001"} and {r["train_iterations"] for r in mine} == {8}
    assert not list(out.glob("grid_*.png"))
    # The EMA weights on the sweep's reference (same seed: eval.seed), sampled as the worker samples them.
    ref = make_eval_ref(c.data, c.teacher, c.schedule, 200, tc.eval.ode_steps, tc.eval.seed, "identity")
    names = metric_names(200)
    ((_, _, sampler),) = method.evaluations(state.ema)
    want = evaluate(sampler(ref.noise)[0], ref, names)
    assert {k: got[("mcd", 2, k)] for k in want} == pytest.approx(want, rel=1e-9)
    from multistep.metrics.diversity import diversity as measure
    from multistep.metrics.diversity import diversity_names
    from multistep.metrics.evaluate import data_samples

    real = data_samples(c.data, 200, tc.eval.seed)[1]  # the reference's data rows: precision / recall against them
    div = measure(sampler(ref.noise)[0], real, diversity_names(200, True), c.data, tc.eval.knn_k)
    assert {k: got[("mcd", 2, k)] for k in div} == pytest.approx(div, rel=1e-12) and set(div) == diversity
    assert 0 < div["recall_200"] <= 1 and all(("teacher_ddim", 4, k) in got for k in diversity)
    online = evaluate(method.evaluations(state.student)[0][2](ref.noise)[0], ref, names)
    assert online[names["fd"]] != pytest.approx(want[names["fd"]], rel=1e-6)  # it was the EMA that got evaluated
    assert got[("mcd_S2", 4, names["ode"])] != got[("mcd", 2, names["ode"])]
    assert json.loads((out / "eval.json").read_text())["trial"] == 1
    # A checkpoint that records its trial config (as the worker writes them) needs no --config.
    selfdesc = tmp_path / "selfdesc"
    selfdesc.mkdir()
    torch.save(
        {**torch.load(d / "state.pt", weights_only=True), "trial": tc.model_dump(mode="json")}, selfdesc / "state.pt"
    )
    assert main(["eval", str(selfdesc), "--steps", "2", "--samples", "200", "--out", str(tmp_path / "ev2")]) == 0
    assert _pivot(tmp_path / "ev2")[1][("mcd", 2, names["fd"])] == pytest.approx(want[names["fd"]], rel=1e-9)
    # A trial trained with a detector that is not on this host: --extractor replaces it before the config is checked.
    away = tmp_path / "away"
    away.mkdir()
    far = tc.model_dump(mode="json")
    far["eval"] |= {"extractor": "inception", "inception_path": "/training-host/inception.pt"}
    torch.save({**torch.load(d / "state.pt", weights_only=True), "trial": far}, away / "state.pt")
    assert main(["eval", str(away), "--steps", "2", "--samples", "200", "--out", str(tmp_path / "ev3")]) == 2
    assert "inception.pt" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                str(away),
                "--steps",
                "2",
                "--samples",
                "200",
                "--extractor",
                "identity",
                "--out",
                str(tmp_path / "ev3"),
            ]
        )
        == 0
    )
    assert _pivot(tmp_path / "ev3")[1][("mcd", 2, names["fd"])] == pytest.approx(want[names["fd"]], rel=1e-9)
    sweep = yaml.safe_load(TINY.read_text())  # the same through --config with a sweep file
    sweep["eval"] = {**sweep.get("eval", {}), "extractor": "inception", "inception_path": "/training-host/inception.pt"}
    (tmp_path / "far.yaml").write_text(yaml.safe_dump(sweep))
    assert (
        main(
            [
                "eval",
                str(d),
                "--config",
                str(tmp_path / "far.yaml"),
                "--steps",
                "2",
                "--samples",
                "200",
                "--extractor",
                "identity",
                "--out",
                str(tmp_path / "ev4"),
            ]
        )
        == 0
    )


def test_classifier_features(teacher_ckpt, tmp_path, capsys):
    """--extractor classifier: FD and KID in the features of a classifier trained on digits (cached: a second
    evaluation reuses it and gives the same numbers); pixel and classifier distances differ."""
    out1, out2 = tmp_path / "a", tmp_path / "b"
    args = ["eval", str(teacher_ckpt), "--steps", "1", "--samples", "200", "--extractor", "classifier"]
    assert main(args + ["--out", str(out1)]) == 0
    assert "feature classifier trained: held-out accuracy 0.9" in capsys.readouterr().out  # digits: > 90% held out
    assert main(args + ["--out", str(out2)]) == 0
    assert "feature classifier from the cache" in capsys.readouterr().out
    (rows, got), (_, again) = _pivot(out1), _pivot(out2)
    assert {r["metric"] for r in rows} == {"fd_classifier_200", "kid_classifier_200", "swd_200"} and got == again
    assert main(["eval", str(teacher_ckpt), "--steps", "1", "--samples", "200", "--out", str(tmp_path / "c")]) == 0
    pixel = _pivot(tmp_path / "c")[1]
    assert pixel[("teacher_ddim", 1, "swd_200")] == got[("teacher_ddim", 1, "swd_200")]  # same samples
    assert pixel[("teacher_ddim", 1, "fd_pixel_200")] != got[("teacher_ddim", 1, "fd_classifier_200")]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_inception_detector_from_a_local_path(teacher_ckpt, student, tmp_path, capsys):
    """--inception PATH: FID and KID (names fid_* / kid_*) in the features of a TorchScript detector on disk."""
    from conftest import TinyDetector
    from multistep.metrics.extractors import file_sha256

    det = tmp_path / "tiny-detector.pt"
    torch.jit.script(TinyDetector()).save(str(det))
    out = tmp_path / "ev"
    assert (
        main(
            ["eval", str(teacher_ckpt), "--steps", "1", "--samples", "200", "--inception", str(det), "--out", str(out)]
        )
        == 0
    )
    rows, got = _pivot(out)
    assert {r["metric"] for r in rows} == {"fid_200", "kid_200", "swd_200"} and got[("teacher_ddim", 1, "fid_200")] > 0
    assert json.loads((out / "eval.json").read_text())["extractor"]["sha256"] == file_sha256(det)  # which detector
    for ckpt in (teacher_ckpt, student[0]):
        assert main(["eval", str(ckpt), "--inception", str(tmp_path / "none.pt"), "--out", str(out)]) == 2
        assert f"--inception: file not found: {tmp_path / 'none.pt'}" in capsys.readouterr().err


def test_bad_input_exits_2_with_one_line(teacher_ckpt, student, tmp_path, capsys):
    d = student[0]
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(teacher_ckpt.read_bytes()[:3000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    (tmp_path / "empty").mkdir()
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(d / "state.pt", loose / "state.pt")
    from multistep.train import checkpoint

    flipped = checkpoint.save(tmp_path / "flipped.pt", torch.load(d / "state.pt", weights_only=True))
    data = bytearray(flipped.read_bytes())
    data[400:464] = bytes(b ^ 0xFF for b in data[400:464])  # 64 bytes flipped inside the payload
    flipped.write_bytes(bytes(data))
    (tmp_path / "afile").write_text("x")
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(
        yaml.safe_dump(
            {
                **{
                    k: v
                    for k, v in yaml.safe_load(TINY.read_text()).items()
                    if k in ("data", "method", "train", "eval")
                },
                "student": {"hidden": 16},
            }
        )
    )
    cases = [
        (["nope.pt"], "nope.pt: checkpoint not found"),
        ([str(corrupt)], f"{corrupt}: not a readable checkpoint"),
        ([str(foreign)], f"{foreign}: not a multistep teacher checkpoint nor a trial checkpoint"),
        ([str(tmp_path / "empty")], "empty: folder holds no state.pt or teacher.pt"),
        ([str(teacher_ckpt), "--steps", "1,x"], "--steps: expected positive integers"),
        ([str(teacher_ckpt), "--steps", "0,2"], "--steps: expected positive integers"),
        ([str(teacher_ckpt), "--samples", "1"], "--samples: need at least 2"),
        ([str(d)], "--config: "),
        ([str(loose), "--config", str(TINY)], "--trial: "),
        ([str(d), "--config", str(TINY), "--trial", "5"], "there is no trial 5"),
        ([str(d), "--config", str(tmp_path / "missing.yaml")], "missing.yaml: file not found"),
        ([str(d), "--config", str(narrow)], f"{d / 'state.pt'}: does not fit the trial config of {narrow}"),
        ([str(flipped)], f"{flipped} is corrupt: checksum mismatch"),
        (
            [str(teacher_ckpt), "--out", str(tmp_path / "afile")],
            "--out " + str(tmp_path / "afile") + ": exists and is not",
        ),
        ([str(teacher_ckpt), "--out", "/proc/x"], "--out /proc/x: cannot write in /proc"),
    ]
    for argv, expect in cases:
        out = tmp_path / "out"
        argv = argv if "--out" in argv else [*argv, "--out", str(out)]
        assert main(["eval", *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expect in err[0], (argv, err)
        assert not out.exists()
    # The console script, end to end: the same one line and exit code.
    r = subprocess.run(["multistep", "eval", str(d)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--config" in r.stderr and str(d) in r.stderr
