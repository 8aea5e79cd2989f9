"""sweep/teacher_job.py: `multistep teacher` end to end on the session's Ray, then sweeps that name its checkpoint by
path and by MLflow run."""

import pytest
import torch
from mlflow.tracking import MlflowClient

from multistep.cli import main
from multistep.config import load_sweep
from multistep.train.teacher import load_teacher
from unit.config.test_teacher_file import TEACHER, _write

pytestmark = pytest.mark.usefixtures("one_thread_module")


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
