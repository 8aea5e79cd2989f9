"""A sweep's MLflow run lifecycle (tracking/sweep_runs.py, tracking/runs.py) against a real SQLite store, without
Ray: runs opened SCHEDULED, marked running, settled from the trials' last results, closed when the sweep is
interrupted (and settled again on resume), finished with the wall time once, and read back as table rows."""

import pytest
from mlflow.tracking import MlflowClient

from multistep.tracking import sweep_runs as sr
from multistep.tracking import tags as tag


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    srid = sr.open_sweep_run(
        client, uri, "exp", "s-1", {tag.KIND: "sweep", tag.SWEEP_NAME: "s"}, {"a": {"b": 1}}, __file__
    )
    exp_id = sr.experiment_of(client, srid)
    trials = [(f"t{i}", "mcd", {"method.student_steps": str(i + 1)}) for i in range(3)]
    return client, srid, exp_id, sr.open_trial_runs(client, exp_id, srid, "s", trials)


def status(client, rid):
    return client.get_run(rid).info.status


def test_runs_open_scheduled_and_settle_from_the_trials_last_results(store):
    client, srid, exp_id, rids = store
    run = client.get_run(srid)
    assert run.data.params["a.b"] == "1" and tag.GIT_COMMIT in run.data.tags
    assert [status(client, r) for r in rids] == ["SCHEDULED"] * 3
    assert sr.latest_sweep_run(client, "exp", "s")[1].info.run_id == srid
    assert sr.latest_sweep_run(client, "exp", "other")[1] is None and sr.latest_sweep_run(client, "nope", "s") == (
        None,
        None,
    )
    for r in rids:
        sr.mark_running(client, r, f"ray-{r[:4]}")
    # trial 0 final, trial 1 stopped before its final result, trial 2 no result at all
    assert sr.unfinished(client, rids) == [0, 1, 2]
    failed = sr.settle_trials(client, rids, {0: {"final": 1}, 1: {"iteration": 5}})
    assert failed == [1, 2] and [status(client, r) for r in rids] == ["FINISHED", "FAILED", "FAILED"]
    assert sr.unfinished(client, rids) == [1, 2]


def test_an_interrupted_sweep_is_killed_and_tagged_and_a_resume_settles_it_again(store):
    client, srid, _, rids = store
    sr.mark_running(client, rids[0], "a")
    client.set_terminated(rids[1], status="FINISHED")
    sr.close_incomplete(client, srid, rids, interrupted=True)
    run = client.get_run(srid)
    assert run.info.status == "KILLED" and run.data.tags[tag.INCOMPLETE] == "interrupted"
    assert [status(client, r) for r in rids] == ["KILLED", "FINISHED", "KILLED"]
    assert tag.INTERRUPTED in client.get_run(rids[0]).data.tags  # not the scheduler's KILLED: to be run again
    sr.reopen_sweep_run(client, client.get_run(srid))
    assert status(client, srid) == "RUNNING" and tag.INCOMPLETE not in client.get_run(srid).data.tags
    sr.mark_running(client, rids[0], "a2")
    assert tag.INTERRUPTED not in client.get_run(rids[0]).data.tags and status(client, rids[0]) == "RUNNING"
    assert sr.settle_trials(client, rids, {0: {"final": 1}}) == [2]  # trial 2 never ran again: failed


def test_finishing_logs_the_wall_time_once_and_fails_with_a_failed_trial(store, tmp_path):
    client, srid, _, rids = store
    f = tmp_path / "results.csv"
    f.write_text("x\n")
    sr.finish_sweep_run(client, srid, t_start=0.0, failed=[1], files=[f])
    run = client.get_run(srid)
    assert run.info.status == "FAILED" and run.data.tags[tag.INCOMPLETE] == "1 trial(s) failed"
    assert [a.path for a in client.list_artifacts(srid)] == ["results.csv", "test_sweep_runs.py"]
    sr.finish_sweep_run(client, srid, t_start=1e12, failed=[])  # a resumed session finishing it: no second wall time
    assert [m.value > 0 for m in client.get_metric_history(srid, "wall_seconds")] == [True]
    assert status(client, srid) == "FINISHED"


def test_the_results_table_is_read_back_from_the_trial_runs(store):
    client, _, _, rids = store
    client.log_metric(rids[0], "fd_5k", 0.5, step=2)
    client.log_metric(rids[0], "fd_5k_se", 0.01, step=2)
    client.log_metric(rids[0], "fd_5k/mcd_S2", 0.7, step=4)  # an extra sampler of the trial
    client.log_metric(rids[0], "other", 1.0, step=2)  # not a table metric
    cells = [("mcd", {"anneal": "x", "learning_rate": 1e-3}, 100)] * 3
    rows = sr.collect_rows(client, rids, cells, {"fd": "fd_5k"})
    got = sorted((r["method"], r["student_steps"], r["value"], r["se"], r["train_iterations"]) for r in rows)
    assert got == [("mcd", 2, 0.5, 0.01, 100), ("mcd_S2", 4, 0.7, None, 100)]
