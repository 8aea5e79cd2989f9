"""Early stopping with ASHA and failing trials, through real Ray Tune + Train and a real MLflow store."""

import json
import logging

import pytest
import yaml
from mlflow.tracking import MlflowClient

from multistep.config import load_sweep
from multistep.sweep.driver import run_sweep

pytestmark = pytest.mark.slow


def _runs(uri, exp="tests"):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(exp).experiment_id])
    trials = sorted(
        (r for r in runs if r.data.tags.get("multistep.kind") == "trial"),
        key=lambda r: int(r.data.tags["multistep.trial_index"]),
    )
    sweep = next(r for r in runs if r.data.tags.get("multistep.kind") == "sweep")
    return client, sweep, trials


def _write(tmp_path, tiny_sweep, **changes):
    doc = yaml.safe_load(tiny_sweep.read_text())
    for k, v in changes.items():
        doc[k] = v
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_asha_stops_bad_trials_marks_them_killed_and_the_sweep_goes_on(ray_local, tiny_sweep, tmp_path):
    # One trial at a time: good, broken, good. The broken one (huge learning rate) are stopped at the
    # first rung; the next trial can only start if the stopped one freed its resources.
    p = _write(
        tmp_path,
        tiny_sweep,
        train={"iterations": 90, "batch_size": 64, "log_every": 30, "checkpoint_every": 30},
        scheduler={"name": "asha", "proxy_samples": 200, "grace_checkpoints": 1, "reduction_factor": 2},
        resources={"max_concurrent_trials": 1},
        search={"train.learning_rate": {"grid": [1e-3, 0.5, 1e-3]}, "method.student_steps": {"grid": [1]}},
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run_sweep(load_sweep(p), uri, str(tmp_path / "rr")) == 0
    client, sweep, trials = _runs(uri)
    # The first trial sets the rungs and finishes; the broken one is stopped; the third one then starts and ends
    # (ASHA may stop it too: it only has to be no worse than the median of what the rung has seen).
    assert [t.info.status for t in trials[:2]] == ["FINISHED", "KILLED"]
    assert trials[2].info.status in ("FINISHED", "KILLED") and trials[2].data.tags.get("ray.trial_id")
    for t in trials[1:2]:  # the stopped trial keeps the proxy curve they had, and have no final evaluation
        steps = [m.step for m in client.get_metric_history(t.info.run_id, "proxy_fd_identity_200")]
        assert (
            steps and steps == [30, 60][: len(steps)]
        )  # stopped at a rung (Tune acts on a report while training goes on)
        assert "fd_identity_400" not in t.data.metrics
    for t in trials[:1]:
        assert [m.step for m in client.get_metric_history(t.info.run_id, "proxy_fd_identity_200")] == [30, 60, 90]
    assert sweep.info.status == "FINISHED"


def test_non_finite_loss_fails_only_that_trial(ray_local, tiny_sweep, tmp_path, caplog):
    p = _write(tmp_path, tiny_sweep, search={"train.learning_rate": {"grid": [1e-3, 1e30]}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    caplog.set_level(logging.INFO, logger="multistep")  # the driver's messages
    assert run_sweep(load_sweep(p), uri, str(tmp_path / "rr")) == 1
    client, sweep, trials = _runs(uri)
    assert [t.info.status for t in trials] == ["FINISHED", "FAILED"]
    assert "non-finite loss" in trials[1].data.tags["multistep.error"]
    assert "iterations" in trials[1].data.tags["multistep.error"]
    assert sweep.info.status == "FAILED"
    assert any("1 trial(s) failed: #2" in line for line in caplog.messages)


def test_pbt_clones_a_leaders_checkpoint_and_the_clone_records_its_parent(ray_local, tiny_sweep, tmp_path):
    # Two trials side by side, a converged warm start and an untrained one: at a checkpoint the untrained one (bottom
    # half) continues from the other's checkpoint with a perturbed copy of its learning rate.
    p = _write(
        tmp_path,
        tiny_sweep,
        train={"iterations": 120, "batch_size": 64, "log_every": 20, "checkpoint_every": 20},
        scheduler={
            "name": "pbt",
            "proxy_samples": 200,
            "quantile_fraction": 0.5,
            "synch": True,  # both trials have a score at every decision (else a fast trial may finish alone)
            "mutations": {"train.learning_rate": {"loguniform": [1e-4, 1e-2]}},
        },
        search={"student.init_iterations": {"grid": [400, 1]}, "method.student_steps": {"grid": [2]}},
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run_sweep(load_sweep(p), uri, str(tmp_path / "rr")) == 0
    client, sweep, trials = _runs(uri)
    assert sweep.info.status == "FINISHED" and [t.info.status for t in trials] == ["FINISHED", "FINISHED"]
    good, clone = trials  # the converged warm start and the untrained one (which may later lead in turn)
    assert clone.data.tags["multistep.pbt.parent_run_id"] == good.info.run_id  # its latest exploit's parent
    files = sorted(a.path for a in client.list_artifacts(clone.info.run_id, "pbt"))
    assert files and files[0].startswith("pbt/exploit_")
    record = json.loads(open(client.download_artifacts(clone.info.run_id, files[0])).read())  # its first exploit
    at = record["parent"]["iteration"]
    assert record["parent"]["run_id"] == good.info.run_id and at in (20, 40, 60, 80, 100)
    assert record["parent"]["values"] == {"train.learning_rate": 2e-4}  # the leader's values, as it trained
    assert record["parent"]["config"]["student"]["init_iterations"] == 400  # the leader's whole config
    lr = record["values"]["train.learning_rate"]
    assert lr != 2e-4 and 1e-4 <= lr <= 1e-2  # x0.8 / x1.2 of the leader's, or redrawn from the range
    history = [(m.step, m.value) for m in client.get_metric_history(clone.info.run_id, "pbt/train.learning_rate")]
    assert history[0] == (0, 2e-4) and (at, pytest.approx(lr)) in history  # the schedule the clone actually ran
    assert clone.data.params["student.init_iterations"] == "1"  # params: the trial as planned
    for t in trials:
        assert client.get_metric_history(t.info.run_id, "wall_seconds")[-1].step == 120  # trained to the end
        assert "fd_identity_400" in t.data.metrics
