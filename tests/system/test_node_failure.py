"""A Ray node dies mid-sweep (docs/cluster.md, "Rehearse a cluster on one machine"): two Ray nodes on this machine,
each in its own network namespace joined by a veth pair, storage on a folder both see. While a trial trains on the
worker node, that node's raylet is SIGKILLed. The trial resumes on the surviving node from its last checkpoint, the
sweep finishes with every point, and each trial's MLflow run holds one continuous history, no point logged twice.

Needs root (ip netns); skipped elsewhere. The namespaces, links and every process in them are removed afterwards."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import assert_no_duplicate_points

pytestmark = pytest.mark.slow

ITERATIONS, CHECKPOINT_EVERY, LOG_EVERY = 2400, 100, 50
RAY_ENV = {  # a dead node is noticed within ~3 s (Ray's default: ~30 s)
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _ns_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _ns_processes(ns: str) -> dict[int, str]:
    procs = {}
    for pid in _ns_pids(ns):
        try:
            procs[pid] = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    return procs


def _remove_namespace(ns: str) -> None:
    for pid in _ns_pids(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def two_nodes():
    """{address, head, worker}: a Ray head (1 CPU) in namespace `head` and a Ray worker node (1 CPU) in `worker`."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("ray"):
        pytest.skip("needs root, iproute2 and the ray CLI (network namespaces)")
    tag = f"msn{os.getpid() % 100000}"
    head, worker, net = f"{tag}h", f"{tag}w", f"10.213.{os.getpid() % 250 + 1}"
    try:
        _sh("ip", "netns", "add", head)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot create a network namespace here ({e.stderr.strip()})")
    temps = [tempfile.mkdtemp(prefix="msn", dir="/tmp") for _ in range(2)]  # short: Ray's socket paths
    try:
        _sh("ip", "netns", "add", worker)
        _sh("ip", "link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b")
        for ns, link, ip in ((head, f"{tag}a", f"{net}.1"), (worker, f"{tag}b", f"{net}.2")):
            _sh("ip", "link", "set", link, "netns", ns)
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", link)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "-n", ns, "link", "set", link, "up")
            _sh("ip", "-n", ns, "route", "add", "default", "dev", link)  # Ray finds its node address by this route
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | RAY_ENV
        common = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
        subprocess.run(
            ["ip", "netns", "exec", head, "ray", "start", "--head", f"--node-ip-address={net}.1", "--port=6379"]
            + ["--resources", '{"train_driver": 100}', f"--temp-dir={temps[0]}", "--dashboard-host=0.0.0.0", *common],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            ["ip", "netns", "exec", worker, "ray", "start", f"--address={net}.1:6379", f"--node-ip-address={net}.2"]
            + [f"--temp-dir={temps[1]}", *common],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield {"address": f"{net}.1:6379", "head": head, "worker": worker, "env": env}
    finally:
        for ns in (worker, head):
            _remove_namespace(ns)
        for t in temps:
            shutil.rmtree(t, ignore_errors=True)


def _trial_steps(client, exp_id: str) -> dict[str, list[int]]:
    runs = [r for r in client.search_runs([exp_id]) if r.data.tags.get("multistep.kind") == "trial"]
    return {r.info.run_id: [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")] for r in runs}


def test_a_dead_node_costs_a_retry_from_the_last_checkpoint_not_the_sweep(two_nodes, tiny_sweep, tmp_path):
    doc = yaml.safe_load(tiny_sweep.read_text())
    doc["train"].update(iterations=ITERATIONS, checkpoint_every=CHECKPOINT_EVERY, log_every=LOG_EVERY)
    doc["resources"] = {"cpus_per_worker": 1, "max_concurrent_trials": 2, "max_failures": 2}  # one trial per node
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(doc))
    uri, log = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "sweep.log"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", two_nodes["head"], sys.executable, "-m", "multistep.cli", "sweep", str(f)]
        + ["--tracking-uri", uri, "--storage", str(tmp_path / "rr")],  # a folder both nodes see
        env=two_nodes["env"] | {"RAY_ADDRESS": two_nodes["address"]},
        cwd=tmp_path,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    client = MlflowClient(uri)
    try:
        deadline, killed = time.time() + 240, None
        while killed is None and time.time() < deadline:  # both trials past their third checkpoint: kill the node
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
            exp = client.get_experiment_by_name("tests") if (tmp_path / "mlflow.db").exists() else None
            steps = _trial_steps(client, exp.experiment_id) if exp else {}
            on_worker = [p for p, args in _ns_processes(two_nodes["worker"]).items() if "ray::ImplicitFunc" in args]
            if len(steps) == 2 and all(s and max(s) >= 3 * CHECKPOINT_EVERY for s in steps.values()) and on_worker:
                (raylet,) = [p for p, args in _ns_processes(two_nodes["worker"]).items() if "raylet/raylet" in args]
                os.kill(raylet, signal.SIGKILL)
                killed = time.time()
        assert killed, f"no trial ran on the worker node in time:\n{log.read_text()[-3000:]}"
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert rc == 0, out[-3000:]
    assert "sweep finished" in out and "Traceback" not in out, out[-3000:]
    exp = client.get_experiment_by_name("tests")
    runs = client.search_runs([exp.experiment_id])
    (sweep,) = [r for r in runs if r.data.tags.get("multistep.kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("multistep.kind") == "trial"]
    assert sweep.info.status == "FINISHED" and [t.info.status for t in trials] == ["FINISHED", "FINISHED"]
    resumed = [
        int(t.data.tags["multistep.resumed_from_iteration"])
        for t in trials
        if "multistep.resumed_from_iteration" in t.data.tags
    ]
    assert len(resumed) == 1 and 3 * CHECKPOINT_EVERY <= resumed[0] < ITERATIONS  # from a checkpoint, not from 0
    assert resumed[0] % CHECKPOINT_EVERY == 0
    assert_no_duplicate_points(client, [sweep, *trials])
    for steps in _trial_steps(client, exp.experiment_id).values():  # one continuous history, every interval once
        assert sorted(steps) == list(range(LOG_EVERY, ITERATIONS + 1, LOG_EVERY))
    for t in trials:  # every point: the trial's own evaluation, once
        assert len(client.get_metric_history(t.info.run_id, "fd_identity_400")) == 1
    assert {r["student_steps"] for r in sweep_rows(tmp_path / "rr") if r["method"] == "mcd"} == {1, 2}


def sweep_rows(storage) -> list[dict]:
    import pyarrow.parquet as pq

    (table,) = storage.glob("tiny-*/results.parquet")
    return pq.read_table(table).to_pylist()
