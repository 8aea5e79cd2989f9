"""A sweep's status is the truth: real signals to a real `multistep sweep` process (docs/reliability.md).

SIGINT to the process group mid-training (a terminal's Ctrl-C) and SIGTERM to the driver alone mid-evaluation: exit
130, the sweep run KILLED and tagged incomplete, no trial run left RUNNING or SCHEDULED, Ray gone; `regress
--promote` refuses the run; `--resume` finishes only the unfinished trials and logs no duplicate point, and resuming
the finished sweep again changes nothing (tests/test_resume.py, as SIGKILL of the driver alone).
"""

import os
import signal
import subprocess
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import wait_until_gone

ENV = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")} | {
    "RAY_AUTH_MODE": "disabled"
}


def _sweep_file(tiny_sweep, tmp_path, iterations=400):
    doc = yaml.safe_load(tiny_sweep.read_text())
    doc["train"].update(iterations=iterations, checkpoint_every=100, log_every=50)
    doc["resources"] = {"max_concurrent_trials": 1}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(doc))
    return f, f"sqlite:///{tmp_path / 'mlflow.db'}"


def _runs(client):
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    sweeps = [r for r in runs if r.data.tags.get("multistep.kind") == "sweep"]
    trials = sorted(
        (r for r in runs if r.data.tags.get("multistep.kind") == "trial"),
        key=lambda r: int(r.data.tags["multistep.trial_index"]),
    )
    return sweeps, trials


def _points(client, run):
    """{metric: [steps]} of a run, every point as logged."""
    return {k: [m.step for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}


def _no_duplicates(client, runs):
    for r in runs:
        for key, steps in _points(client, r).items():
            assert len(steps) == len(set(steps)), (r.info.run_id, key, sorted(steps))


def _run_until(cmd, tmp_path, marker: str, timeout=180):
    log = tmp_path / "sweep.log"
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=ENV, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    deadline = time.time() + timeout
    while marker not in log.read_text():
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"never saw {marker!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc, log


def _wait(proc, timeout=90) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_ctrl_c_mid_training_kills_the_sweep_and_resume_finishes_it_once(tiny_sweep, tmp_path, capsys):
    f, uri = _sweep_file(tiny_sweep, tmp_path, iterations=300)
    cmd = ["multistep", "sweep", str(f), "--tracking-uri", uri, "--storage", str(tmp_path / "rr")]
    proc, log = _run_until(cmd, tmp_path, "[trial 1/2] iteration")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
    rc = _wait(proc)
    out = log.read_text()
    assert rc == 130 and "multistep: interrupted" in out and "sweep finished" not in out, out[-3000:]
    client = MlflowClient(uri)
    (sweep,), trials = _runs(client)
    assert sweep.info.status == "KILLED" and sweep.data.tags["multistep.incomplete"] == "interrupted"
    assert [t.info.status for t in trials] == ["KILLED", "KILLED"]  # none finished, none left open
    assert all(t.data.tags.get("multistep.interrupted") == "1" for t in trials)

    from multistep.cli import main

    assert main(["regress", "--promote", sweep.info.run_id, "--reason", "x", "--tracking-uri", uri]) == 2
    assert "status is KILLED" in capsys.readouterr().err  # an interrupted sweep is never a baseline

    r = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (sweep,), trials = _runs(client)
    assert sweep.info.status == "FINISHED" and "multistep.incomplete" not in sweep.data.tags
    assert [t.info.status for t in trials] == ["FINISHED", "FINISHED"]
    assert not any("multistep.interrupted" in t.data.tags for t in trials)
    _no_duplicates(client, [sweep, *trials])  # (resuming the finished sweep again: tests/test_resume.py)


@pytest.mark.slow
def test_sigterm_to_the_driver_alone_mid_evaluation_kills_the_sweep_and_ray(tiny_sweep, tmp_path):
    """SIGTERM (a scheduler, `kill`) to the driver alone, while a trial runs its final evaluation."""
    doc = yaml.safe_load(tiny_sweep.read_text())
    doc["eval"].update(samples=2000, bootstrap=300, teacher_steps=[1])  # a final evaluation of seconds
    doc["resources"] = {"max_concurrent_trials": 1}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(doc))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = ["multistep", "sweep", str(f), "--tracking-uri", uri, "--storage", str(tmp_path / "rr")]
    proc, log = _run_until(cmd, tmp_path, "final evaluation:")
    os.kill(proc.pid, signal.SIGTERM)
    rc = _wait(proc)
    assert rc == 130 and "SIGTERM: stopping the trials" in log.read_text(), log.read_text()[-3000:]
    left = wait_until_gone(proc.pid, timeout=30)  # the driver shut its local Ray down
    assert not left, left
    (sweep,), trials = _runs(MlflowClient(uri))
    assert sweep.info.status == "KILLED"
    # The trial may have logged its evaluation while Tune stopped it, but it is not FINISHED: a resume settles it
    assert [t.info.status for t in trials] == ["KILLED", "KILLED"]
    assert all(t.data.tags.get("multistep.interrupted") == "1" for t in trials)
