"""regress/baseline.py and `multistep regress` against a real SQLite MLflow store (sweep runs made by hand; no Ray):
the baseline tag, its promotion (who, when, why), a worse run failing with its points named and its report logged,
and bad regression sections (the whole job on real Ray: tests/system/test_regress.py)."""

import re
from datetime import datetime, timezone

import pytest
from mlflow.tracking import MlflowClient

from multistep.cli import main
from multistep.regress.baseline import BASELINE_TAG
from multistep.regress.compare import read_table
from multistep.sweep.results import write_table
from multistep.tracking import mlflow_layout as ml
from unit.regress.test_compare import rows

REGRESSION = """
eval: {samples: 400, teacher_steps: [1, 2, 4], ode_steps: 64, bootstrap: 20}
regression:
  tolerances:
    fd: {abs: 0.001, rel: 0.05, ci: 0.95}
    swd: {rel: 0.05}
    ode: {abs: 0.001, rel: 0.05}
"""


# -- the command against a real SQLite MLflow store (sweep runs made by hand; no Ray) -----------------------
@pytest.fixture
def store(tmp_path, tiny_sweep, monkeypatch):
    return regress_store(tmp_path, tiny_sweep, monkeypatch)


def regress_store(tmp_path, tiny_sweep, monkeypatch):
    """(client, sweep_run(table, status, name) -> run id, the common CLI options, the regression sweep file)."""
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
