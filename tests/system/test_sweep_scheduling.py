"""Early stopping with ASHA and failing trials, through real Ray Tune + Train and a real MLflow store."""

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
    assert run_sweep(load_sweep(p), uri, str(tmp_path / "rr"), say=lambda *_: None) == 0
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


def test_non_finite_loss_fails_only_that_trial(ray_local, tiny_sweep, tmp_path):
    p = _write(tmp_path, tiny_sweep, search={"train.learning_rate": {"grid": [1e-3, 1e30]}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lines = []
    assert run_sweep(load_sweep(p), uri, str(tmp_path / "rr"), say=lines.append) == 1
    client, sweep, trials = _runs(uri)
    assert [t.info.status for t in trials] == ["FINISHED", "FAILED"]
    assert "non-finite loss" in trials[1].data.tags["multistep.error"]
    assert "iterations" in trials[1].data.tags["multistep.error"]
    assert sweep.info.status == "FAILED"
    assert any("1 trial(s) failed: #2" in line for line in lines)
