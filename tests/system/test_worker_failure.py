"""The process that trains is killed with SIGKILL mid-trial: a Ray Train worker (runner train: Ray Train restarts
the worker group) or the Tune trial itself (runner tune: Tune restarts the trial). Either way training resumes
from the last checkpoint, the trial finishes, and the MLflow trial run is continued, not duplicated."""

import os
import signal
import subprocess
import threading
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from multistep.config import load_sweep
from multistep.sweep.driver import run_sweep

pytestmark = pytest.mark.slow


PROCESS = {"train": "RayTrainWorker", "tune": "ImplicitFunc"}  # Ray's process title of the process that trains


def _pids(title: str) -> list[int]:
    """This session's Ray workers with that title: children of the test's own raylet, never another Ray's on the
    machine (a sweep running beside the suite keeps its trials)."""
    import ray

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()[1:]]
    return [int(pid) for pid, ppid, args in rows if int(ppid) == raylet and f"ray::{title}" in args]


@pytest.mark.parametrize("runner", ["train", "tune"])
def test_killed_worker_resumes_from_checkpoint(ray_local, tiny_sweep, tmp_path, runner):
    doc = yaml.safe_load(tiny_sweep.read_text())
    doc["train"].update(iterations=600, checkpoint_every=50, log_every=25)  # the kill lands well before the end
    doc["search"] = {"method.student_steps": {"grid": [2]}}
    doc["resources"] = {**doc.get("resources", {}), "runner": runner}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(doc))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    killed: list[int] = []

    def killer():  # once a checkpoint exists (train/loss at >= 100 logged), SIGKILL the worker process
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            time.sleep(0.5)
            exp = client.get_experiment_by_name("tests") if (tmp_path / "mlflow.db").exists() else None
            if exp is None:
                continue
            runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("multistep.kind") == "trial"]
            if runs and any(m.step >= 100 for m in client.get_metric_history(runs[0].info.run_id, "train/loss")):
                for pid in _pids(PROCESS[runner]):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    rc = run_sweep(load_sweep(f), uri, str(tmp_path / "rr"))
    t.join(5)
    assert killed, f"no {PROCESS[runner]} process was found to kill"
    assert rc == 0
    exp = client.get_experiment_by_name("tests")
    trials = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("multistep.kind") == "trial"]
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"  # continued, not duplicated
    resumed = int(trials[0].data.tags["multistep.resumed_from_iteration"])
    assert 50 <= resumed < 600  # restarted from a checkpoint, not from the end
    loss_steps = [m.step for m in client.get_metric_history(trials[0].info.run_id, "train/loss")]
    assert max(loss_steps) == 600 and min(loss_steps) == 25
    redone = [s for s in loss_steps if s > resumed and loss_steps.count(s) > 1]  # at most one interval redone
    assert all(s <= resumed + 50 for s in redone)
    assert len(client.get_metric_history(trials[0].info.run_id, "fd_identity_400")) == 1
