"""A real `mlflow server` on 127.0.0.1 goes away during a sweep and comes back: the sweep finishes and no
training point, evaluation point or status is lost or written twice (retry with backoff, buffered metrics)."""

import os
import signal
import subprocess
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import free_port, start_mlflow_server, stop_server

pytestmark = pytest.mark.slow


@pytest.mark.skipif(
    not os.environ.get("MULTISTEP_BIG_TESTS"),
    reason="~65 s, beyond the suite's 10-minute budget on 2 cores: set MULTISTEP_BIG_TESTS=1",
)
def test_sweep_survives_a_tracking_server_outage(tiny_sweep, tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")} | {
        "RAY_AUTH_MODE": "disabled"
    }
    monkeypatch.setenv(
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"
    )  # this test's own polling fails fast; the sweep keeps the defaults
    port = free_port()
    server, uri = start_mlflow_server(tmp_path, port)
    doc = yaml.safe_load(tiny_sweep.read_text())
    doc["train"].update(iterations=400, log_every=20, checkpoint_every=100)
    doc["search"] = {"method.student_steps": {"grid": [2]}}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(doc))
    log = tmp_path / "sweep.log"  # a file, not a pipe: a full pipe would stall the sweep
    sweep = subprocess.Popen(
        ["multistep", "sweep", str(f), "--tracking-uri", uri, "--storage", str(tmp_path / "rr")],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        client = MlflowClient(uri)
        deadline = time.time() + 300
        trial = None
        while trial is None and time.time() < deadline:  # wait for the trial's first training points
            time.sleep(1)
            assert sweep.poll() is None, log.read_text()[-3000:]
            try:
                exp = client.get_experiment_by_name("tests")
                runs = client.search_runs([exp.experiment_id]) if exp else []
            except Exception:
                continue
            trial = next(
                (r for r in runs if r.data.tags.get("multistep.kind") == "trial" and "train/loss" in r.data.metrics),
                None,
            )
        assert trial is not None, "the trial never logged a training point"
        stop_server(server)  # outage: connection refused from now on
        time.sleep(8)
        server, _ = start_mlflow_server(tmp_path, port)  # same store, same port
        assert sweep.wait(timeout=400) == 0, log.read_text()[-3000:]
        run = client.get_run(trial.info.run_id)  # read back through the restarted server
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert steps == list(range(20, 401, 20))  # every training point once, none lost in the outage
        assert len(client.get_metric_history(run.info.run_id, "fd_identity_400")) == 1
        assert run.info.status == "FINISHED"
        assert client.get_run(run.data.tags["mlflow.parentRunId"]).info.status == "FINISHED"
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
        stop_server(server)
