"""`multistep regress`: the comparison (pure), the baseline tag in a real SQLite MLflow store, and the whole
job on real Ray (tiny sweep): identical re-runs pass, a worse curve fails naming its points."""

import math
import re
from datetime import datetime, timezone

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from multistep.cli import main
from multistep.config import ToleranceCfg
from multistep.regress.baseline import BASELINE_TAG
from multistep.regress.compare import compare, describe, failing, read_table
from multistep.sweep.results import write_table
from multistep.tracking import mlflow_layout as ml

REGRESSION = """
eval: {samples: 400, teacher_steps: [1, 2, 4], ode_steps: 64, bootstrap: 20}
regression:
  tolerances:
    fd: {abs: 0.001, rel: 0.05, ci: 0.95}
    swd: {rel: 0.05}
    ode: {abs: 0.001, rel: 0.05}
"""
METRICS = ("fd_identity_400", "swd_400", "ode_l2_400")


def rows(scale: dict | None = None, se: float | None = None, drop=()) -> list[dict]:
    """A results table: mcd at S = 1, 2 and the teacher at 1, 2, 4; value = f(method, S, metric) x scale[point]."""
    scale = scale or {}
    out = []
    pts = [("mcd", s) for s in (1, 2)] + [("teacher_ddim", s) for s in (1, 2, 4)]
    for method, s in pts:
        for k, metric in enumerate(METRICS):
            if (method, s, metric) in drop:
                continue
            v = (0.5 + k) / (s + 1) * (2.0 if method.startswith("teacher") else 1.0)
            out.append(
                {
                    "method": method,
                    "student_steps": s,
                    "nfe": s,
                    "metric": metric,
                    "value": v * scale.get((method, s, metric), 1.0),
                    "run_id": "r",
                    "se": se,
                }
            )
    return out


TOL = {"fd": ToleranceCfg(abs=0.001, rel=0.05), "swd": ToleranceCfg(rel=0.05), "ode": ToleranceCfg(abs=0.001)}


# -- the comparison (pure) ----------------------------------------------------------------------------
def test_identical_tables_pass():
    pts = compare(rows(), rows(), TOL)
    assert len(pts) == 15 and not failing(pts)
    assert {p.verdict for p in pts} == {"ok"} and all(p.diff == 0 for p in pts)


def test_worse_point_beyond_tolerance_regresses_and_is_named():
    bad, mild, good = ("mcd", 2, "fd_identity_400"), ("mcd", 1, "fd_identity_400"), ("teacher_ddim", 4, "swd_400")
    pts = compare(rows(), rows({bad: 1.2, mild: 1.04, good: 0.8}), TOL)
    by = {(p.method, p.steps, p.metric): p for p in pts}
    assert [(p.method, p.steps, p.metric) for p in failing(pts)] == [bad]
    assert by[bad].verdict == "REGRESSION" and by[bad].basis == "rel"
    assert math.isclose(by[bad].tolerance, 0.05 * by[bad].baseline)
    assert by[mild].verdict == "ok"  # 4 % worse: inside rel 0.05
    assert by[good].verdict == "better"
    assert describe(by[bad]).startswith("mcd S=2 fd_identity_400: ")
    # teacher: false leaves the teacher's points out; a family without a tolerance is not compared
    only = compare(rows(), rows({("teacher_ddim", 1, "swd_400"): 3.0}), {"swd": ToleranceCfg()}, teacher=False)
    assert {p.metric for p in only} == {"swd_400"} and {p.method for p in only} == {"mcd"} and not failing(only)


def test_missing_and_nonfinite_points_regress_new_points_do_not():
    gone = ("mcd", 2, "swd_400")
    cur = rows(drop=[gone]) + [{"method": "mcd", "student_steps": 8, "metric": "swd_400", "value": 9.0}]
    cur[0]["value"] = float("nan")  # mcd S=1 fd: a NaN evaluation
    pts = compare(rows(), cur, TOL)
    verdicts = {(p.method, p.steps, p.metric): p.verdict for p in pts}
    assert verdicts[gone] == "MISSING" and verdicts[("mcd", 1, "fd_identity_400")] == "REGRESSION"
    assert verdicts[("mcd", 8, "swd_400")] == "new"
    assert len(failing(pts)) == 2


def test_statistical_tolerance_uses_both_standard_errors():
    key = ("mcd", 1, "fd_identity_400")
    tol = {"fd": ToleranceCfg(abs=0.001, rel=0.01, ci=0.95)}
    base_v = rows()[0]["value"]  # 0.25
    se = 0.01  # allowance 1.96 * sqrt(2) * 0.01 = 0.0277
    within = compare(rows(se=se), rows({key: (base_v + 0.02) / base_v}, se=se), tol)
    beyond = compare(rows(se=se), rows({key: (base_v + 0.04) / base_v}, se=se), tol)
    p_in = next(p for p in within if (p.method, p.steps, p.metric) == key)
    p_out = next(p for p in beyond if (p.method, p.steps, p.metric) == key)
    assert (
        p_in.verdict == "ok"
        and p_in.basis == "ci"
        and math.isclose(p_in.tolerance, 1.959964 * math.sqrt(2) * se, rel_tol=1e-5)
    )
    assert p_out.verdict == "REGRESSION"
    # without standard errors in a table the ci allowance is not available: abs / rel decide
    no_se = compare(rows(), rows({key: (base_v + 0.02) / base_v}, se=se), tol)
    assert next(p for p in no_se if (p.method, p.steps, p.metric) == key).verdict == "REGRESSION"


def test_bootstrap_standard_error_is_seeded_and_shrinks_with_samples():
    import torch

    from multistep.metrics.evaluate import EvalRef, bootstrap_se, metric_names

    rng = np.random.default_rng(0)

    def se(n, seed=0):
        data, gen = rng.standard_normal((n, 4)), rng.standard_normal((n, 4)) * 1.1 + 0.1
        ref = EvalRef(data, torch.zeros(n, 4), gen + 0.05 * rng.standard_normal((n, 4)), {})
        return bootstrap_se(gen, ref, metric_names(n), 40, seed)

    small, large = se(300), se(2400)
    assert set(small) == {"fd_identity_300_se", "swd_300_se", "ode_l2_300_se"}
    assert all(v > 0 for v in small.values())
    for k in ("fd_identity", "swd", "ode_l2"):  # 8x the samples: about sqrt(8) = 2.8x smaller
        ratio = small[f"{k}_300_se"] / large[f"{k}_2400_se"]
        assert 1.5 < ratio < 5.0, (k, ratio)
    rng = np.random.default_rng(1)
    a = se(300, seed=3)
    rng = np.random.default_rng(1)
    assert se(300, seed=3) == a  # same data, same seed: the same numbers


# -- the command against a real SQLite MLflow store (sweep runs made by hand; no Ray) -----------------------
@pytest.fixture
def store(tmp_path, tiny_sweep, monkeypatch):
    monkeypatch.setenv("MULTISTEP_USER", "nightly-bot")
    tiny_sweep.write_text(
        tiny_sweep.read_text().replace("eval: {samples: 400, teacher_steps: [1, 2, 4], ode_steps: 64}\n", "")
        + REGRESSION
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = ml.ensure_experiment(client, "tests", uri)

    def sweep_run(table, status="FINISHED", name="tiny"):
        r = client.create_run(
            exp,
            tags={
                "multistep.kind": "sweep",
                "multistep.sweep_name": name,
                "multistep.sweep_id": f"{name}-x",
                "multistep.plan_hash": "p",
            },
        )
        paths = write_table(table, tmp_path / "tables" / r.info.run_id)
        client.log_artifact(r.info.run_id, str(paths["parquet"]))
        client.set_terminated(r.info.run_id, status=status)
        return r.info.run_id

    common = ["--tracking-uri", uri, "--storage", str(tmp_path / "rr")]
    return client, sweep_run, common, tiny_sweep


def test_missing_baseline_exits_2_with_promote_hint(store, capsys):
    client, sweep_run, common, f = store
    rid = sweep_run(rows())
    assert main(["regress", str(f), "--run", rid, *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(f) in err[0] and "no baseline" in err[0]
    assert "multistep regress --promote RUN_ID --reason" in err[0]
    assert not client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id], "tags.`multistep.kind` = 'regression'"
    )


def test_storage_uri_is_bad_input_for_regress(store, capsys):
    """A URI keeps caches in ./ray_results/cache, which regress must not reuse: exit 2 naming --storage."""
    _, _, common, f = store
    assert main(["regress", str(f), *common, "--storage", "s3://bucket/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--storage s3://bucket/x" in err[0] and "local folder" in err[0]


def test_promote_moves_the_tag_and_records_who_when_why(store, capsys):
    client, sweep_run, common, f = store
    first, second, failed = sweep_run(rows()), sweep_run(rows()), sweep_run(rows(), status="FAILED")
    assert main(["regress", "--promote", first, "--reason", "first baseline", *common]) == 0
    assert client.get_run(first).data.tags[BASELINE_TAG] == "tiny"
    assert main(["regress", str(f), "--promote", second, "--reason", "new sampler", *common]) == 0
    old, new = client.get_run(first).data.tags, client.get_run(second).data.tags
    assert BASELINE_TAG not in old and old["multistep.baseline.replaced_by"] == second
    assert new[BASELINE_TAG] == "tiny" and new["multistep.baseline.reason"] == "new sampler"
    assert (
        new["multistep.baseline.promoted_by"].startswith("nightly-bot@") and new["multistep.baseline.replaces"] == first
    )
    when = datetime.fromisoformat(new["multistep.baseline.promoted_at"])
    assert abs((datetime.now(timezone.utc) - when).total_seconds()) < 120
    capsys.readouterr()
    # bad promotions are exit 2 and change nothing
    for argv in (
        ["--promote", failed, "--reason", "x"],
        ["--promote", "0" * 32, "--reason", "x"],
        ["--promote", second],
    ):
        assert main(["regress", *argv, *common]) == 2
    assert "status is FAILED" in capsys.readouterr().err
    tagged = client.search_runs([client.get_run(first).info.experiment_id], f"tags.`{BASELINE_TAG}` = 'tiny'")
    assert [r.info.run_id for r in tagged] == [second]


def test_worse_run_exits_1_names_points_and_logs_report_plot_table(store, capsys, tmp_path):
    client, sweep_run, common, f = store
    base = sweep_run(rows())
    assert main(["regress", "--promote", base, "--reason", "baseline", *common]) == 0
    worse = sweep_run(rows({("mcd", 2, "fd_identity_400"): 1.5, ("mcd", 1, "swd_400"): 1.3}))
    out = tmp_path / "report"
    capsys.readouterr()
    assert main(["regress", str(f), "--run", worse, "--out", str(out), *common]) == 1
    text = capsys.readouterr().out
    assert "REGRESSION: 2 of 15 points" in text
    assert re.search(r"- mcd S=2 fd_identity_400: .* > tolerance", text) and "- mcd S=1 swd_400: " in text
    for line in ("baseline", "current", "difference", "tolerance", "verdict"):
        assert line in text.splitlines()[text.splitlines().index("") + 1]  # the table's header
    # report, plot and table on disk and logged to a regression run tagged with the baseline it used
    assert (out / "regression.png").stat().st_size > 10_000
    md = (out / "regression.md").read_text()
    assert "FAIL: 2 of 15 points regressed" in md and "| mcd | 2 | fd_identity_400 |" in md and "regression.png" in md
    exp = client.get_experiment_by_name("tests").experiment_id
    (run,) = client.search_runs([exp], "tags.`multistep.kind` = 'regression'")
    t = run.data.tags
    assert t["multistep.regress.baseline_run"] == base and t["multistep.regress.current_run"] == worse
    assert t["multistep.regress.verdict"] == "fail" and run.info.status == "FAILED"
    assert run.data.metrics["regressed_points"] == 2
    assert {"regression.md", "regression.png", "regression.csv"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }
    assert client.get_run(worse).data.tags["multistep.regress.verdict"] == "fail"
    # the same run against the same table given as a file passes
    (tmp_path / "b").mkdir()
    assert (
        main(
            [
                "regress",
                str(f),
                "--run",
                worse,
                "--baseline",
                str(
                    write_table(rows({("mcd", 2, "fd_identity_400"): 1.5, ("mcd", 1, "swd_400"): 1.3}), tmp_path / "b")[
                        "csv"
                    ]
                ),
                *common,
            ]
        )
        == 0
    )
    assert len(read_table(tmp_path / "b" / "results.parquet")) == 15
    (newest,) = client.search_runs(
        [exp], "tags.`multistep.regress.verdict` = 'pass' and tags.`multistep.kind` = 'regression'"
    )
    assert newest.data.tags["multistep.regress.baseline"].startswith("file:")


def test_bad_regression_sections_exit_2_naming_the_field(store, capsys):
    client, sweep_run, common, f = store
    text = f.read_text()
    for bad, field in (
        (text.replace("fd: {abs", "fd: {absolute"), "regression.tolerances.fd.absolute"),
        (text.replace("swd: {rel", "fid: {rel"), "regression.tolerances.fid"),
        (text.replace("bootstrap: 20", "bootstrap: 0"), "regression.tolerances.fd.ci"),
        (text.split("regression:")[0], "regression: missing"),
    ):
        f.write_text(bad)
        assert main(["regress", str(f), "--run", "x", *common]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and field in err[0] and str(f) in err[0], err


DIVERSITY = ("precision", "recall", "modes_missed", "mode_tv")


# -- the whole job on real Ray -------------------------------------------------------------------------
@pytest.mark.slow
def test_rerun_of_the_same_sweep_passes(ray_local, store, capsys, tmp_path):
    """Two real sweeps: the baseline, then `multistep regress` re-running it (fresh cache, same seeds)."""
    from multistep.config import load_sweep
    from multistep.sweep.driver import run_sweep

    client, _, common, f = store
    uri = common[1]
    assert run_sweep(load_sweep(f), uri, str(tmp_path / "rr")) == 0
    exp = client.get_experiment_by_name("tests").experiment_id
    (first,) = client.search_runs([exp], "tags.`multistep.kind` = 'sweep'")
    table = read_table(client.download_artifacts(first.info.run_id, "results.parquet", str(tmp_path)))
    assert all(r["se"] > 0 for r in table if not r["metric"].startswith(DIVERSITY))  # eval.bootstrap: every point
    assert all(r["se"] >= 0 for r in table)  # has a standard error (a count like modes_missed can have 0)
    assert main(["regress", "--promote", first.info.run_id, "--reason", "test", *common]) == 0

    capsys.readouterr()
    assert main(["regress", str(f), *common]) == 0  # runs the sweep again from scratch
    text = capsys.readouterr().out
    assert "no regression: 24 points" in text and "REGRESSION" not in text
    (ok,) = client.search_runs([exp], "tags.`multistep.kind` = 'regression'")
    assert ok.data.tags["multistep.regress.baseline_run"] == first.info.run_id and ok.info.status == "FINISHED"
    assert {"regression.md", "regression.png"} <= {a.path for a in client.list_artifacts(ok.info.run_id)}
    (tmp_path / "cur").mkdir()
    current = read_table(
        client.download_artifacts(
            ok.data.tags["multistep.regress.current_run"], "results.parquet", str(tmp_path / "cur")
        )
    )
    key = lambda r: (r["method"], r["student_steps"], r["metric"])
    assert {key(r): r["value"] for r in current} == {key(r): r["value"] for r in table}  # same seeds: the same numbers


def test_sweep_plot_draws_standard_errors(tmp_path):
    """The metric-versus-steps plot draws the rows' bootstrap standard errors as error bars."""
    from multistep.sweep.results import plot

    rows = [{"method": "mcd", "student_steps": s, "metric": "fd", "value": 1 / s, "se": 0.2 / s} for s in (1, 2, 4)]
    bare = [{**r, "se": None} for r in rows]
    a, b = plot(rows, ["fd"], {}, tmp_path / "se.png", "t"), plot(bare, ["fd"], {}, tmp_path / "bare.png", "t")
    assert a.read_bytes() != b.read_bytes()
