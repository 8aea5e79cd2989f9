"""End to end: a real sweep through real Ray Tune + Ray Train into a real SQLite MLflow store."""

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from multistep.config import load_sweep
from multistep.sweep.driver import run_sweep

pytestmark = pytest.mark.slow


def test_sweep_run_structure(ray_local, tiny_sweep, tmp_path, monkeypatch, capsys):
    import builtins

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Ray swaps builtins.print for a tqdm-safe one once a worker's log line reaches the driver, which can happen before
    # the Tuner pickles its callbacks (with the default progress printer in them): do it first, as a slow sweep would.
    original = builtins.print
    monkeypatch.setattr(builtins, "print", lambda *a, **k: original(*a, **k))
    tiny_sweep.write_text(tiny_sweep.read_text().replace("ode_steps: 64}", "ode_steps: 64, keep_rows: 400}"))
    rc = run_sweep(load_sweep(tiny_sweep), uri, str(tmp_path / "ray_results"))  # the default `say`, as the CLI's
    assert rc == 0
    out = capsys.readouterr().out
    assert "sweep finished" in out and "http://127.0.0.1:5000/#/experiments/" in out  # the runs view

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tests")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    sweeps = [r for r in runs if r.data.tags.get("multistep.kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("multistep.kind") == "trial"]
    assert len(sweeps) == 1 and len(trials) == 2
    sweep = sweeps[0]
    assert sweep.info.status == "FINISHED"
    assert sweep.data.tags["multistep.eval_protocol"].startswith("N=400, features identity, reference: a data sample")
    for t in trials:  # nested, finished, with the trial's params and a Ray trial id
        assert t.data.tags["mlflow.parentRunId"] == sweep.info.run_id
        assert t.info.status == "FINISHED"
        assert t.data.tags["ray.trial_id"]
        S = int(t.data.params["method.student_steps"])
        hist = client.get_metric_history(t.info.run_id, "fd_identity_400")
        assert [m.step for m in hist] == [S]  # evaluation keyed by number of sampling steps
        assert hist[0].value > 0
        loss = client.get_metric_history(t.info.run_id, "train/loss")
        assert [m.step for m in loss] == [20, 40, 60]  # training curve keyed by iteration
        m = t.data.metrics  # flat summary columns of the run table: the value at the trial's own S, its cost
        assert m["final/fd_identity_400"] == hist[0].value and m["nfe"] == S and m["train_seconds"] > 0
        assert m["train_gpu_hours"] == 0 and m["params"] > 1000
    # the teacher's curve and one curve per method on the sweep run
    teacher = client.get_metric_history(sweep.info.run_id, "fd_identity_400/teacher_addim")
    assert sorted(m.step for m in teacher) == [1, 2, 4]
    assert sorted(m.step for m in client.get_metric_history(sweep.info.run_id, "fd_identity_400/mcd")) == [1, 2]
    arts = {a.path for a in client.list_artifacts(sweep.info.run_id)}
    assert {
        "results.parquet",
        "results.csv",
        "metric_vs_steps.png",
        "tiny.yaml",
        "pareto.png",
        "pareto.csv",
        "summary.csv",
    } <= arts

    out_dir = next((tmp_path / "ray_results").glob("tiny-*"))
    table = pq.read_table(out_dir / "results.parquet").to_pylist()
    cols = [
        "method",
        "student_steps",
        "nfe",
        "metric",
        "value",
        "trial_id",
        "run_id",
        "anneal",
        "learning_rate",
        "train_iterations",
        "wall_seconds",
        "se",
    ]
    assert list(table[0]) == cols
    mcd = [r for r in table if r["method"] == "mcd" and r["metric"] == "fd_identity_400"]
    assert sorted(r["student_steps"] for r in mcd) == [1, 2]
    assert (out_dir / "metric_vs_steps.png").stat().st_size > 10_000

    # eval.keep_rows: the rows `multistep claims` compares, on the sweep run (reference, floor, every teacher point)
    # and on each trial; its FDs recomputed from them equal the logged ones (all 400 rows kept, float32)
    assert {a.path for a in client.list_artifacts(sweep.info.run_id, "eval_rows")} == {
        "eval_rows/reference.npy",
        "eval_rows/floor.npy",
    } | {f"eval_rows/teacher_{m}_{n}.npy" for m in ("ddim", "addim") for n in (1, 2, 4)}
    from multistep.cli import main

    assert (
        main(["claims", sweep.info.run_id, "--n-boot", "20", "--tracking-uri", uri, "--out", str(tmp_path / "c")]) == 0
    )
    out = capsys.readouterr().out
    assert "(1) MCD's FD falls as S grows" in out and "mcd S=2" in out and "not measured: mcd S=4" in out
    claimed = {(r["method"], int(r["student_steps"])): float(r["fd"]) for r in csv_rows(tmp_path / "c" / "claims.csv")}
    logged = {(r["method"], r["student_steps"]): r["value"] for r in table if r["metric"] == "fd_identity_400"}
    for key in [("mcd", 1), ("mcd", 2), ("teacher_addim", 4), ("teacher_ddim", 1), ("teacher_addim", 2)]:
        assert claimed[key] == pytest.approx(logged[key], rel=1e-4)
    floor = float(client.get_run(sweep.info.run_id).data.params["noise_floor.fd_identity_400"])
    assert claimed[("floor", 0)] == pytest.approx(floor, rel=1e-4)  # the floor, now with its interval
    assert (tmp_path / "c" / "claims.md").read_text().count("| (") == 6  # the six claims, each with its verdict


def csv_rows(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_summary_table_one_row_per_method_and_steps():
    from multistep.sweep.results import summary_table

    trials = [
        {"method": "mcd", "student_steps": 4, "final/fd": 0.3, "nfe": 4, "train_seconds": 10.0, "train_gpu_hours": 0.5, "params": 9},
        {"method": "mcd", "student_steps": 4, "final/fd": 0.1, "nfe": 4, "train_seconds": 30.0, "train_gpu_hours": 1.5, "params": 9},
        {"method": "pd", "student_steps": 1, "final/fd": 0.7, "nfe": 1, "train_seconds": 5.0, "train_gpu_hours": 0.0, "params": 9},
        {"method": "tract", "student_steps": 2},  # failed before its final evaluation: left out
    ]  # fmt: skip
    mcd, pd = summary_table(trials, "fd")
    assert (mcd["method"], mcd["student_steps"], mcd["trials"], mcd["best fd"]) == ("mcd", 4, 2, 0.1)
    assert mcd["mean fd"] == pytest.approx(0.2) and mcd["std"] == pytest.approx(0.1414, rel=1e-3)
    assert mcd["train_seconds"] == 20.0 and mcd["train_gpu_hours"] == 2.0 and pd["std"] is None
