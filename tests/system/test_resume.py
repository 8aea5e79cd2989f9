"""The sweep driver dies (kill -9 of the driver alone: the watchdog beside its local Ray takes the instance down);
`multistep sweep FILE --resume` continues the same sweep: finished trials are not re-run, the same MLflow sweep run
and trial runs are used."""

import logging
import os
import signal
import subprocess
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import assert_no_duplicate_points, metric_points, session_processes, wait_until_gone


def _trials(client, exp_id):
    runs = client.search_runs([exp_id])
    return (
        [r for r in runs if r.data.tags.get("multistep.kind") == "sweep"],
        sorted(
            (r for r in runs if r.data.tags.get("multistep.kind") == "trial"),
            key=lambda r: int(r.data.tags["multistep.trial_index"]),
        ),
    )


@pytest.mark.slow
def test_driver_killed_then_resumed(tiny_sweep, tmp_path):
    doc = yaml.safe_load(tiny_sweep.read_text())
    doc["train"].update(iterations=400, checkpoint_every=100, log_every=50)
    doc["resources"] = {"max_concurrent_trials": 1}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(doc))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")} | {
        "RAY_AUTH_MODE": "disabled"
    }
    cmd = ["multistep", "sweep", str(f), "--tracking-uri", uri, "--storage", str(tmp_path / "rr")]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = MlflowClient(uri)
    try:  # wait until the first trial has finished and the second one is under way, then kill everything
        deadline = time.time() + 240
        while time.time() < deadline:
            time.sleep(2)
            exp = client.get_experiment_by_name("tests") if (tmp_path / "mlflow.db").exists() else None
            if exp is None:
                continue
            _, trials = _trials(client, exp.experiment_id)
            if len(trials) == 2 and trials[0].info.status == "FINISHED" and "train/loss" in trials[1].data.metrics:
                break
        else:
            pytest.fail("first trial never finished")
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone: no handler runs, its local Ray is left to the watchdog
        proc.wait()
        left = wait_until_gone(proc.pid)  # GCS, raylet, dashboard, agents and trial workers all gone
        assert not left, left
    finally:
        if proc.poll() is None or session_processes(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first_fd = client.get_metric_history(trials[0].info.run_id, "fd_identity_400")

    r = subprocess.run(
        cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400, start_new_session=True
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    sweeps, trials2 = _trials(client, client.get_experiment_by_name("tests").experiment_id)
    assert len(sweeps) == 1 and len(trials2) == 2  # same runs, nothing duplicated
    assert [t.info.run_id for t in trials2] == [t.info.run_id for t in trials]
    assert [t.info.status for t in trials2] == ["FINISHED", "FINISHED"]
    assert sweeps[0].info.status == "FINISHED"
    assert client.get_metric_history(trials[0].info.run_id, "fd_identity_400") == first_fd  # not re-run
    assert len(client.get_metric_history(trials[1].info.run_id, "fd_identity_400")) == 1


def test_resumed_logger_skips_points_already_logged(tmp_path):
    """A worker killed after its final evaluation redoes it on resume: points it logged before are not repeated."""
    from multistep.tracking.mlflow_layout import RunLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    first = RunLogger(uri, run_id)
    first.metrics(100, {"train/loss": 1.0})
    first.metrics(2, {"fd_identity_400": 0.5})
    again = RunLogger(uri, run_id)
    again.resume()
    again.metrics(100, {"train/loss": 1.1})  # redone since the checkpoint: skipped
    again.metrics(2, {"fd_identity_400": 0.5, "swd_400": 0.2})  # the final evaluation once more: only the new key
    again.metrics(200, {"train/loss": 0.9})
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [(100, 1.0), (200, 0.9)]
    assert len(client.get_metric_history(run_id, "fd_identity_400")) == 1
    assert len(client.get_metric_history(run_id, "swd_400")) == 1


@pytest.mark.parametrize("method", ["mcm", "tract"])
def test_checkpoint_resume_continues_the_same_curve(tiny_sweep, method, one_thread):
    """A run restored from its mid-training checkpoint (model, EMA, optimizer, method state, RNG streams) ends
    bit-identical to the uninterrupted run: what a restarted worker group relies on."""
    import io

    import torch

    from multistep.config import load_sweep
    from multistep.train.build import build, make_method
    from multistep.train.loop import Hooks, fit, new_state

    tc = load_sweep(tiny_sweep).trial_cfg(1)
    if method == "tract":
        tc = tc.model_copy(
            update={"method": tc.method.model_copy(update={"name": "tract", "time_schedule": [16, 4, 2]})}
        )
    total, saved, losses = 60, {}, {}

    def run(resume_from: bytes | None, tag: str):
        c = build(tc)
        m = make_method(tc, c)
        state = new_state(c.student, 1e-3, 0, m)
        if resume_from is not None:
            state.load_state_dict(torch.load(io.BytesIO(resume_from), weights_only=True))
        else:
            torch.manual_seed(123)  # whatever the global stream was: it is checkpointed
        buf = io.BytesIO()
        hooks = Hooks(
            log=lambda it, mm: losses.setdefault(tag, []).append((it, mm["loss"])),
            checkpoint=lambda it, sd: (torch.save(sd, buf), saved.setdefault(it, buf.getvalue())),
        )
        fit(state, m, lambda g: c.data.sample(32, g), total, 1.0, 0.9, 10, 30, hooks)
        return state

    full = run(None, "full")
    resumed = run(saved[30], "resumed")
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.student.state_dict().values(), resumed.student.state_dict().values()):
        assert torch.equal(a, b)
    assert losses["resumed"] == [p for p in losses["full"] if p[0] > 30]


def test_resume_refuses_another_runner(tiny_sweep, tmp_path):
    """A sweep that ran its trials with runner tune cannot be resumed with runner train (its checkpoints live in the
    other runner's folders: every trial would start over and log its points twice)."""
    from multistep.config import ConfigError, load_sweep
    from multistep.sweep.driver import _open_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    srid, _, _ = _open_runs(client, load_sweep(tiny_sweep), uri, str(tmp_path), False)
    assert client.get_run(srid).data.tags["multistep.runner"] == "tune"  # 1 worker, runner auto
    doc = yaml.safe_load(tiny_sweep.read_text())
    doc["resources"] = {**doc.get("resources", {}), "runner": "train"}
    other = tmp_path / "train.yaml"
    other.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="resources.runner: sweep run .* runner tune, this file gives train"):
        _open_runs(client, load_sweep(other), uri, str(tmp_path), True)
    assert _open_runs(client, load_sweep(tiny_sweep), uri, str(tmp_path), True)[0] == srid


@pytest.mark.slow
def test_interrupt_during_preparation_closes_the_runs_at_once(tiny_sweep, tmp_path):
    """Ctrl-C while the driver still computes the shared assets (beside Ray's start): exit 130 within seconds, not
    after the assets, with the sweep run KILLED (never FINISHED) and its trial runs KILLED (none left SCHEDULED)."""
    doc = yaml.safe_load(tiny_sweep.read_text())
    doc["eval"].update(samples=50000, ode_steps=16384)  # an evaluation reference of many minutes on 2 cores
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(doc))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")} | {
        "RAY_AUTH_MODE": "disabled"
    }
    log = tmp_path / "sweep.log"  # a file, not a pipe: nothing can stall on a full pipe
    proc = subprocess.Popen(
        ["multistep", "sweep", str(f), "--tracking-uri", uri, "--storage", str(tmp_path / "rr")],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 120
        while "computing evaluation reference" not in log.read_text() and time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.2)
        assert time.time() < deadline, log.read_text()[-2000:]
        os.kill(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=30)  # the reference alone would take minutes
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = log.read_text()
    assert rc == 130 and out.strip().splitlines()[-1] == "multistep: interrupted", out[-2000:]
    assert "Traceback" not in out, out[-3000:]  # one line, whatever the driver was computing
    client = MlflowClient(uri)
    sweeps, trials = _trials(client, client.get_experiment_by_name("tests").experiment_id)
    assert [s.info.status for s in sweeps] == ["KILLED"] and [t.info.status for t in trials] == ["KILLED", "KILLED"]


def test_resume_with_an_unreadable_tune_state_rebuilds_the_plan_from_mlflow(ray_local, tiny_sweep, tmp_path, caplog):
    """The driver died while Tune wrote experiment_state-*.json (here: the file cut short). --resume sets it aside,
    runs only the trials MLflow does not record as done, and logs no duplicate point."""
    from multistep.config import load_sweep
    from multistep.sweep.driver import run_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    caplog.set_level(logging.INFO, logger="multistep")  # the driver's messages
    plan = load_sweep(tiny_sweep)
    assert run_sweep(plan, uri, str(tmp_path / "rr")) == 0
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("tests").experiment_id
    (sweep,), trials = _trials(client, exp_id)
    client.set_terminated(sweep.info.run_id, "KILLED")  # as an interrupt between the two trials leaves them
    client.set_tag(trials[1].info.run_id, "multistep.interrupted", "1")
    client.set_terminated(trials[1].info.run_id, "KILLED")
    first = {k: client.get_metric_history(trials[0].info.run_id, k) for k in trials[0].data.metrics}
    (state,) = (tmp_path / "rr").glob("tiny-*/experiment_state-*.json")
    state.write_bytes(state.read_bytes()[:300])

    assert run_sweep(load_sweep(tiny_sweep), uri, str(tmp_path / "rr"), resume=True) == 0
    lines = caplog.messages
    assert any("unreadable" in line for line in lines) and any("1 unfinished trial(s)" in line for line in lines)
    assert state.with_name(state.name + ".corrupt").is_file()
    (sweep,), trials = _trials(client, exp_id)
    assert sweep.info.status == "FINISHED" and [t.info.status for t in trials] == ["FINISHED", "FINISHED"]
    assert {k: client.get_metric_history(trials[0].info.run_id, k) for k in first} == first  # not re-run
    points = assert_no_duplicate_points(client, [sweep, *trials])

    caplog.clear()  # resuming the finished sweep again: nothing to do, nothing logged
    assert run_sweep(load_sweep(tiny_sweep), uri, str(tmp_path / "rr"), resume=True) == 0
    assert any("already finished: nothing to resume" in line for line in caplog.messages)
    (sweep,), trials = _trials(client, exp_id)
    assert sweep.info.status == "FINISHED"
    assert metric_points(client, [sweep, *trials]) == points  # nothing logged again
