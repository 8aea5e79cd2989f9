"""`multistep submit --follow` against a real local Ray head started with `ray start --head`.

The head has its own ports and temp dir, token auth off (RAY_AUTH_MODE=disabled, a throwaway cluster),
and is stopped by its process group and temp-dir path, never by `ray stop` (which would end every Ray
instance on the machine, including the session's `ray_local` one). The CLI runs in a subprocess.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PATH=f"{BIN}:{env.get('PATH', '')}")
    return env


def _processes_under(temp_dir: str) -> list[int]:
    """PIDs whose command line names our temp dir: this head's Ray processes and workers, nothing else."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            with contextlib.suppress(OSError):
                if temp_dir.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
    return pids


def _program(pid: int) -> str:
    """Base name of the process's executable ("" once it is gone)."""
    with contextlib.suppress(OSError):
        return Path((Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")[0].decode()).name
    return ""


@contextlib.contextmanager
def local_head():
    temp_dir = tempfile.mkdtemp(prefix="mssub", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dash, client, agent, agent_grpc, env_agent, metrics, nm, om = _free_ports(9)
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={env_agent}",
        f"--metrics-export-port={metrics}",
        f"--node-manager-port={nm}",
        f"--object-manager-port={om}",
        "--num-cpus=2",
        "--resources=" + json.dumps({"train_driver": 8}),
        f"--object-store-memory={200 * 1024**2}",
    ]
    address = f"http://127.0.0.1:{dash}"
    # Ray processes inherit this: their State API clients (e.g. Train's PlacementGroupCleaner) otherwise look
    # for "the" local instance by scanning processes and fail when another Ray instance runs on this host.
    env = _env() | {"RAY_API_SERVER_ADDRESS": address}
    log = open(Path(temp_dir) / "ray_start.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            assert head.poll() is None, (Path(temp_dir) / "ray_start.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2).close()
                break
            except urllib.error.HTTPError:  # it answers (e.g. 401 under token auth): up
                break
            except OSError:
                pass
            assert time.time() < deadline, "Ray dashboard did not come up"
            time.sleep(0.5)
        yield address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)  # raylet (and its workers), GCS, dashboard exit on this
        deadline = time.time() + 5  # a short grace; `ray start --block` ignores SIGTERM
        while time.time() < deadline and any(
            _program(p) in ("raylet", "gcs_server") for p in _processes_under(temp_dir)
        ):
            time.sleep(0.5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        for pid in _processes_under(temp_dir):  # stragglers in other process groups
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        head.wait(timeout=10)
        log.close()
        time.sleep(1)
        assert not _processes_under(temp_dir), "processes of the test's Ray head survived"
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.skipif(
    not os.environ.get("MULTISTEP_BIG_TESTS"),
    reason="~35 s, beyond the suite's 10-minute budget on 2 cores: set MULTISTEP_BIG_TESTS=1",
)
def test_submit_follow_runs_sweep_as_ray_job(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # absolute: the job runs in another directory
    job_id = f"multistep-test-{os.getpid()}-{int(time.time())}"
    with local_head() as address:
        t0 = time.time()
        r = subprocess.run(
            [
                str(BIN / "multistep"),
                "submit",
                "tests/data/tiny_sweep.yaml",
                "--address",
                address,
                "--follow",
                "--tracking-uri",
                uri,
                "--storage",
                str(tmp_path / "ray_results"),
                "--submission-id",
                job_id,
            ],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        took = time.time() - t0
        print(f"submit --follow took {took:.1f} s")
    out = r.stdout.splitlines()
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert out[0] == job_id  # the job id comes first, alone on its line
    assert f"job {job_id}: SUCCEEDED, driver exit code 0" in r.stderr
    # the job ran the code it was sent (the runtime env's copy), not this checkout
    shipped = next(line for line in out if line.startswith("multistep 0.1.0 from "))
    assert "/runtime_resources/" in shipped and str(REPO) not in shipped, shipped
    assert any("trial 2/2" in line for line in out)  # the job's own log reached us through --follow
    assert "Found multiple active Ray instances" not in r.stdout  # the job's Ray processes know their own cluster

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tests")
    runs = client.search_runs([exp.experiment_id])
    sweeps = [x for x in runs if x.data.tags.get("multistep.kind") == "sweep"]
    trials = [x for x in runs if x.data.tags.get("multistep.kind") == "trial"]
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    assert len(trials) == 2
    for t in trials:
        assert t.info.status == "FINISHED" and t.data.tags["mlflow.parentRunId"] == sweeps[0].info.run_id
        assert client.get_metric_history(t.info.run_id, "fd_identity_400")
    assert next((tmp_path / "ray_results").glob("tiny-*/results.parquet")).stat().st_size > 0
