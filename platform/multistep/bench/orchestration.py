"""`multistep bench --orchestration`: what a sweep costs over its training loops (CPU).

Four short trials (MCD on a 16-D mixture, S = 1, 2, 4, 8; iterations tuned so each loop takes about
`trial_seconds`) run twice: as the same four `build` + `make_method` + `fit` loops in this process, and
as a sweep through `run_sweep` (MLflow runs, shared assets, Ray Tune, each trial training in its own
process (runner tune) or one Ray Train run per trial (runner train), final evaluation, results table). The ratio of the wall times is the orchestration overhead. The
breakdown places every second of a trial on the timeline: the driver's logged messages (trial start /
end, from Tune callbacks) and the worker's MLflow metric timestamps (train/wall_seconds gives the
start and end of its loop). Import costs of the processes a trial starts are measured apart.
"""

from __future__ import annotations

import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from multistep.tracking import tags as tag

SWEEP = """\
name: bench-orchestration
experiment: bench
description: orchestration overhead benchmark (multistep bench --orchestration)
data: {{kind: gmm, shape: [16], components: 10, seed: 0}}
student: {{hidden: 256, depth: 3, init_iterations: 0}}
method: {{name: mcm, mode: distill, anneal: {{name: loglinear, start: 16, end: 256, fraction: 0.5}}}}
train: {{iterations: {iterations}, batch_size: 256, log_every: {log_every}, checkpoint_every: {checkpoint_every}}}
eval: {{samples: 1000, teacher_steps: [1, 2], ode_steps: 64}}
scheduler: {{proxy_samples: 500}}
resources: {{num_workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1, runner: {runner}}}
search:
  method.student_steps: {{grid: [1, 2, 4, 8]}}
"""
LOG_EVERY = 50
IMPORTS = {  # what each kind of process a trial starts imports before it does any work
    "python -c pass": "pass",
    "import torch": "import torch",
    "import ray.train, ray.tune": "import ray, ray.train, ray.tune",
    "import mlflow": "import mlflow",
    "Train worker's imports": "import ray.train, torch, mlflow; import multistep.sweep.worker, multistep.train.build, "
    "multistep.metrics.evaluate, multistep.tracking.mlflow_layout",
}


def write_sweep(folder: Path, iterations: int, runner: str = "auto") -> Path:
    p = folder / f"orchestration-{iterations}-{runner}.yaml"
    p.write_text(
        SWEEP.format(iterations=iterations, log_every=LOG_EVERY, checkpoint_every=iterations // 2, runner=runner)
    )
    return p


def plain_loops(plan, threads: int = 1) -> dict:
    """The trials' training loops in this process: build, make_method, new_state, fit (no logging, no Ray)."""
    import torch

    from multistep.train.build import build, make_method
    from multistep.train.loop import fit, new_state

    old = torch.get_num_threads()
    torch.set_num_threads(threads)  # as the sweep's workers (cpus_per_worker)
    loops, builds = [], []
    t_all = time.perf_counter()
    try:
        for i in range(len(plan.trials)):
            tc = plan.trial_cfg(i)
            t0 = time.perf_counter()
            comps = build(tc)
            method = make_method(tc, comps)
            state = new_state(comps.student, tc.train.learning_rate, tc.train.seed, method)
            t1 = time.perf_counter()
            t = tc.train
            fit(
                state,
                method,
                lambda g, c=comps, b=t.batch_size: c.data.sample(b, g),
                t.iterations,
                t.grad_clip,
                t.eval_ema,
                t.log_every,
                t.checkpoint_every,
            )
            builds.append(t1 - t0)
            loops.append(time.perf_counter() - t1)
    finally:
        torch.set_num_threads(old)
    return {"total_s": time.perf_counter() - t_all, "loop_s": loops, "build_s": builds}


def calibrate(folder: Path, trial_seconds: float) -> int:
    """Iterations for a loop of about trial_seconds (a multiple of 2 * LOG_EVERY), from a 200-iteration probe."""
    from multistep.config import load_sweep

    probe = plain_loops(_one_trial(load_sweep(write_sweep(folder, 200))))
    per_it = probe["loop_s"][0] / 200
    step = 2 * LOG_EVERY
    return max(step, int(round(trial_seconds / per_it / step)) * step)


def _one_trial(plan):
    plan.trials = plan.trials[:1]
    return plan


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ray(folder: Path) -> float:
    """A private local Ray instance (as `multistep sweep` starts one, with its own dashboard port); seconds taken."""
    from multistep.sweep import ray_runtime

    ray_runtime.apply_env()
    os.environ.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    import ray

    port = _free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"  # Train's placement-group cleaner finds our head
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        resources={"train_driver": 1000},
        include_dashboard=True,
        dashboard_port=port,
        _temp_dir=tempfile.mkdtemp(prefix="msbr", dir="/tmp"),
        log_to_driver=False,
        logging_level="WARNING",
    )
    return time.perf_counter() - t0


def ray_processes() -> dict:
    """Actors by class name started in this Ray instance (each one a Python process)."""
    try:
        from ray.util.state import list_actors

        counts: dict[str, int] = {}
        for a in list_actors(limit=10000, raise_on_missing_output=False):
            counts[a.class_name] = counts.get(a.class_name, 0) + 1
        return counts
    except Exception as e:  # the State API needs the dashboard; report, never fail the bench
        return {"error": f"{type(e).__name__}: {e}"[:200]}


class _Heard(logging.Handler):
    """The sweep driver's messages, each with the time it was logged."""

    def __init__(self, log: list):
        super().__init__(logging.INFO)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.append((record.created, record.getMessage()))


def run_timed_sweep(plan, folder: Path) -> dict:
    """run_sweep (starting Ray as `multistep sweep` does, beside the sweep's preparation) with every driver
    message time-stamped; returns the times, the message log and Ray's start time."""
    from multistep.sweep.driver import run_sweep
    from multistep.tracking.mlflow_layout import absolute_uri

    log: list[tuple[float, str]] = []
    uri = absolute_uri(f"sqlite:///{folder / 'mlflow.db'}")
    ray_init = {}
    heard, driver = _Heard(log), logging.getLogger("multistep.sweep")
    level = driver.level
    driver.addHandler(heard)
    driver.setLevel(logging.INFO)
    t0 = time.time()
    try:
        code = run_sweep(plan, uri, str(folder / "ray_results"), start_ray=lambda: ray_init.update(s=start_ray(folder)))
    finally:
        driver.removeHandler(heard)
        driver.setLevel(level)
    return {"code": code, "t0": t0, "t1": time.time(), "log": log, "uri": uri, "ray_init_s": ray_init["s"]}


def trial_events(log: list[tuple[float, str]]) -> tuple[dict[int, float], dict[int, float]]:
    """({trial index: when its "started" line was said}, {index: when it finished, failed or stopped}) from the
    sweep's progress lines (sweep/progress.py: "[trial 1/4] mcd S=2 started (id)", "... finished in 21 s")."""
    starts, dones = {}, {}
    for t, m in log:
        if g := re.match(r"\[trial (\d+)/\d+\] .*?\b(started|finished|FAILED|stopped)\b", m):
            (starts if g[2] == "started" else dones)[int(g[1]) - 1] = t
    return starts, dones


def trial_timeline(sweep: dict, n: int) -> list[dict]:
    """Per trial: start, loop start/end (worker's clock = this host's), done; from the driver's messages and MLflow."""
    from mlflow.tracking import MlflowClient

    from multistep.tracking import find

    client = MlflowClient(sweep["uri"])
    runs = find.trial_runs(client, find.experiment_id(client, "bench"), n)
    by_index = {int(r.data.tags[tag.TRIAL_INDEX]): r.info.run_id for r in runs}
    starts, dones = trial_events(sweep["log"])
    rows = []
    for i in range(n):
        hist = find.metric_history(client, by_index[i], "train/wall_seconds")
        loop_start = hist[0].timestamp / 1000 - hist[0].value
        loop_end = hist[-1].timestamp / 1000
        rows.append(
            {
                "start": starts[i],
                "loop_start": loop_start,
                "loop_end": loop_end,
                "done": dones[i],
                "loop_s": hist[-1].value,
            }
        )
    return rows


def import_costs() -> dict:
    """Wall seconds of a fresh Python process for each import line (what every process of a trial pays)."""
    out = {}
    for name, code in IMPORTS.items():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        out[name] = time.perf_counter() - t0
    return out


def bench_orchestration(trial_seconds: float = 20.0, work_dir: str | None = None, runner: str = "tune") -> dict:
    """runner: resources.runner of the sweep (tune: each trial trains in its own process; train: a TorchTrainer)."""
    from multistep.config import load_sweep

    folder = Path(work_dir or tempfile.mkdtemp(prefix="msbench-orch-", dir="/tmp")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    iterations = calibrate(folder, trial_seconds)
    path = write_sweep(folder, iterations, runner)
    load = {"plain_start": os.getloadavg()[0]}  # 1-minute load average: other users' work shows here
    plain = plain_loops(load_sweep(path))
    load["plain_end"] = os.getloadavg()[0]

    import ray

    try:
        sweep = run_timed_sweep(load_sweep(path), folder)
        actors = ray_processes()
    finally:
        ray.shutdown()
        os.environ.pop("RAY_API_SERVER_ADDRESS", None)
    load["sweep_end"] = os.getloadavg()[0]
    n = 4
    rows = trial_timeline(sweep, n)
    sweep_s = sweep["t1"] - sweep["t0"]
    mean = lambda xs: statistics.fmean(xs)
    breakdown = {
        "trial start -> loop start": mean([r["loop_start"] - r["start"] for r in rows]),
        "loop (inside the sweep)": mean([r["loop_s"] for r in rows]),
        "loop (plain process)": mean(plain["loop_s"]),
        "build (plain process)": mean(plain["build_s"]),
        "loop end -> trial done": mean([r["done"] - r["loop_end"] for r in rows]),
        "trial done -> next trial start": mean([rows[i + 1]["start"] - rows[i]["done"] for i in range(n - 1)]),
    }
    # Load-robust view: the fixed cost of a trial (everything but its loop) from the sweep's own timeline, and the
    # ratio it implies for loops of 30 s (the goal's case): (30 + fixed + sweep-level cost / n) / 30.
    gaps = [rows[i + 1]["start"] - rows[i]["done"] for i in range(n - 1)]
    fixed = [
        r["loop_start"] - r["start"] + r["done"] - r["loop_end"] + g
        for r, g in zip(rows, gaps + [statistics.median(gaps)])
    ]
    before, after = rows[0]["start"] - sweep["t0"], sweep["t1"] - rows[-1]["done"]
    per_trial_fixed = statistics.median(fixed)
    return {
        "fixed_per_trial_s": fixed,
        "fixed_per_trial_median_s": per_trial_fixed,
        "estimated_ratio_30s_trials": (30 + per_trial_fixed + (before + after) / n) / 30,
        "runner": runner,
        "iterations": iterations,
        "trial_seconds_target": trial_seconds,
        "exit_code": sweep["code"],
        "plain_s": plain["total_s"],
        "plain_loop_s": plain["loop_s"],
        "sweep_s": sweep_s,
        "ratio": sweep_s / plain["total_s"],
        "overhead_per_trial_s": (sweep_s - plain["total_s"]) / n,
        "goal_ratio": 1.2,
        "ray_init_s": sweep["ray_init_s"],
        "load_average_1min": load,
        "cpu_count": os.cpu_count(),
        "before_first_trial_s": before,  # Ray start beside (MLflow runs, shared assets), then Tune start
        "after_last_trial_s": after,  # results table, plot, artifacts, Tune end
        "breakdown_mean_s": breakdown,
        "trials": rows,
        "ray_actors": actors,
        "import_s": import_costs(),
        "driver_log": [
            (round(t - sweep["t0"], 2), m) for t, m in sweep["log"] if m.startswith(("[trial", "computing", "running"))
        ],
        "work_dir": str(folder),
    }
