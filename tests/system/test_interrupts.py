"""A sweep's status is the truth: real signals to a real `multistep sweep` process (docs/reliability.md).

One sweep, interrupted twice: SIGINT to the process group mid-training (a terminal's Ctrl-C), then, in its resume,
SIGTERM to the driver alone mid-evaluation. Each time: exit 130, the sweep run KILLED and tagged incomplete, the
trial run KILLED and tagged interrupted (never left RUNNING or FINISHED), and after SIGTERM no process of the
driver's session (its local Ray) left; `regress --promote` refuses the run; the last `--resume` finishes the trial
and no point is logged twice. (SIGKILL of the driver alone, and resuming a finished sweep: tests/system/test_resume.py.)
"""

import os
import signal
import subprocess
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import assert_no_duplicate_points, wait_until_gone

ENV = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")} | {
    "RAY_AUTH_MODE": "disabled"
}


def _sweep_file(tiny_sweep, tmp_path, iterations=400):
    doc = yaml.safe_load(tiny_sweep.read_text())
    doc["train"].update(iterations=iterations, checkpoint_every=100, log_every=50)
    doc["resources"] = {"max_concurrent_trials": 1}
    doc["search"] = {"method.student_steps": {"grid": [2]}}  # one trial: the interrupt path is the same for each
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


def _run_until(cmd, tmp_path, marker: str, timeout=180):
    log = tmp_path / "sweep.log"
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=ENV, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    deadline = time.time() + timeout
    while marker not in log.read_text():
        if proc.poll() is not None or time.time() > deadline:
            if proc.poll() is None:
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
def test_interrupted_twice_then_resumed_the_sweep_never_looks_finished(ray_local, tiny_sweep, tmp_path, capsys):
    from multistep.cli import main

    f, uri = _sweep_file(tiny_sweep, tmp_path, iterations=300)
    doc = yaml.safe_load(f.read_text())
    doc["eval"].update(samples=2000, bootstrap=300, teacher_steps=[1])  # a final evaluation of seconds
    f.write_text(yaml.safe_dump(doc))
    cmd = ["multistep", "sweep", str(f), "--tracking-uri", uri, "--storage", str(tmp_path / "rr")]
    client = MlflowClient(uri)

    def killed(signal_name: str):
        (sweep,), trials = _runs(client)
        assert sweep.info.status == "KILLED" and sweep.data.tags["multistep.incomplete"] == "interrupted", signal_name
        assert [t.info.status for t in trials] == ["KILLED"], signal_name  # not finished, not left open
        assert trials[0].data.tags.get("multistep.interrupted") == "1", signal_name
        return sweep

    proc, log = _run_until(cmd, tmp_path, "[trial 1/1] mcd S=2 iteration")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
    rc = _wait(proc)
    out = log.read_text()
    assert rc == 130 and "multistep: interrupted" in out and "sweep finished" not in out, out[-3000:]
    sweep = killed("SIGINT")
    assert main(["regress", "--promote", sweep.info.run_id, "--reason", "x", "--tracking-uri", uri]) == 2
    assert "status is KILLED" in capsys.readouterr().err  # an interrupted sweep is never a baseline

    proc, log = _run_until(cmd + ["--resume"], tmp_path, "final evaluation:")
    os.kill(proc.pid, signal.SIGTERM)  # the driver alone, as a scheduler or `kill` does
    rc = _wait(proc)
    assert rc == 130 and "SIGTERM: stopping the trials" in log.read_text(), log.read_text()[-3000:]
    left = wait_until_gone(proc.pid, timeout=30)  # the driver shut its local Ray down
    assert not left, left
    killed("SIGTERM")  # it may have logged its evaluation while Tune stopped it: still KILLED, a resume settles it

    assert main(cmd[1:] + ["--resume"]) == 0  # in this process (the session's Ray): finish it
    (sweep,), trials = _runs(client)
    assert sweep.info.status == "FINISHED" and "multistep.incomplete" not in sweep.data.tags
    assert [t.info.status for t in trials] == ["FINISHED"] and "multistep.interrupted" not in trials[0].data.tags
    assert_no_duplicate_points(client, [sweep, *trials])
