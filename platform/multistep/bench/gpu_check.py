"""The GPU acceptance kit: every GPU figure of docs/performance.md from one command (`benchmarks/gpu_check.sh OUT`).

It runs where a lent GPU machine runs it: PyTorch and a CUDA GPU, but no Ray, MLflow or pydantic, and the package
not installed (`PYTHONPATH=platform`). So it imports only the maths and training layers (diffusion/, methods/,
nets/, metrics/, train/loop.py, train/perf.py) and the bench parts, never config, sweep or tracking.

Each part runs in a child process of its own with a time cap (a compile that hangs cannot eat the other parts'
time) and is skipped, with the reason, when less time is left than it needs; a part that fails records its error
and the others still run. The parts, most valuable first:

  frechet        frechet_distance at d = 2048: torch on the GPU (float64) vs the CPU path vs scipy's sqrtm formula
  tests          the GPU-only tests (pytest -m gpu), pass/fail per test
  distil         train/loop.py `fit` distils the analytic mixture teacher (S = 4, 2,000 iterations) on the GPU;
                 its FD beside the same run's CPU figure from tests/expectations/gpu_check.json
  train_cifar_*  training step at cifar size (35.7M UNet, batch 128): fp32 eager, bf16 eager, bf16 + channels_last
                 + compile (ms/step, img/s, TFLOP/s, MFU, MCD / diffusion step, compile time, peak memory)
  sampling       MCM S = 1, 2, 4, 8 against the teacher's 512-step aDDIM (img/s, speedup, goal 0.9 * 512 / S)
  train_imagenet64_bf16_compile   the training step at imagenet64 size (265M UNet), bf16 + channels_last + compile

`--cpu-rehearsal` runs every part at tiny sizes on the CPU (under 2 minutes on 2 cores), so the kit is tested in CI
while no GPU is lent. Writes OUT/gpu_check.json (everything) and OUT/gpu_check.md (a short table).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from multistep.bench.report import fmt

REPO = Path(__file__).resolve().parents[3]
EXPECTATIONS = Path(os.environ.get("GPU_CHECK_EXPECTATIONS", REPO / "tests" / "expectations" / "gpu_check.json"))
BUDGET_S = 480.0  # the whole kit: 8 minutes wall on the GPU
REHEARSAL_BUDGET_S = 115.0  # the CPU rehearsal: under 2 minutes (about 45 s on 2 idle cores)

# name: (cap in seconds on the GPU, cap in the CPU rehearsal). A part runs only if the time left covers its cap.
PARTS = {
    "frechet": (40, 10),
    "tests": (90, 25),
    "distil": (90, 15),
    "train_cifar_fp32": (60, 15),
    "train_cifar_bf16": (60, 15),
    "sampling": (60, 15),
    "teacher": (30, 10),
    "train_imagenet64_bf16_compile": (240, 25),
    "train_cifar_bf16_compile": (150, 25),
}
# training parts: (size, precision, channels_last, compile)
TRAINING = {
    "train_cifar_fp32": ("cifar", "fp32", False, False),
    "train_cifar_bf16": ("cifar", "bf16", False, False),
    "train_cifar_bf16_compile": ("cifar", "bf16", True, True),
    "train_imagenet64_bf16_compile": ("imagenet64", "bf16", True, True),
}
# The end-to-end distillation (the quickstart's mixture, teacher and student; S = 4). The CPU figure of exactly this
# run lives in tests/expectations/gpu_check.json and is re-measured by tests/system/test_gpu_check.py (slow).
DISTIL = {
    "student_steps": 4,
    "iterations": 2000,
    "init_iterations": 1000,
    "batch_size": 512,
    "hidden": 256,
    "depth": 3,
    "learning_rate": 2e-4,
    "init_learning_rate": 1e-3,
    "eval_samples": 5000,
    "seed": 0,
}
DISTIL_REHEARSAL = {
    **DISTIL,
    "iterations": 40,
    "init_iterations": 20,
    "batch_size": 64,
    "hidden": 32,
    "eval_samples": 500,
}


def _student_fd(ema, sched, gmm, student_steps: int, eval_samples: int, device) -> float:
    """FD (identity features) of the student's S-step samples from fixed noise against a fresh data sample."""
    import torch

    from multistep.diffusion.samplers import mcm_sample
    from multistep.metrics.frechet import frechet_distance, gaussian_stats

    with torch.no_grad():
        g = torch.Generator().manual_seed(1234)
        noise = torch.randn((eval_samples, gmm.dim), generator=g).to(device)
        x, _ = mcm_sample(ema, sched, noise, student_steps)
        data = gmm.sample(eval_samples, g, dtype=torch.float64)
    return frechet_distance(*gaussian_stats(x.double().cpu().numpy()), *gaussian_stats(data.numpy()))


def distil_mixture(
    device,
    student_steps=4,
    iterations=2000,
    init_iterations=1000,
    batch_size=512,
    hidden=256,
    depth=3,
    learning_rate=2e-4,
    init_learning_rate=1e-3,
    eval_samples=5000,
    seed=0,
) -> dict:
    """Warm start + MCD with the plain loop (no Ray, no MLflow) on the quickstart's 16-D mixture; FD of the EMA
    student's `student_steps`-step samples against a fresh data sample (identity features, `eval_samples` each).

    Every random draw comes from CPU generators (as in the trials), so the run on any device sees the same numbers
    and only the device's arithmetic differs."""
    import torch

    from multistep.data.gmm import GaussianMixture
    from multistep.diffusion.schedules import make_schedule
    from multistep.methods.mcm import MCM
    from multistep.nets.analytic import MixtureDenoiser
    from multistep.nets.mlp import MLP, VDenoiser
    from multistep.train.loop import WarmStart, fit, new_state, warm_start

    t0 = time.perf_counter()
    sched = make_schedule("cosine")
    gmm = GaussianMixture.random((16,), 10, 0.6, 0.1, seed=0)
    teacher = MixtureDenoiser(gmm, sched)
    torch.manual_seed(seed)
    net = MLP(gmm.dim, hidden, depth).to(device)
    sample = lambda g: gmm.sample(batch_size, g).to(device)
    net.load_state_dict(
        warm_start(net, sched, teacher, sample, WarmStart(init_iterations, init_learning_rate, seed))[0]
    )
    student = VDenoiser(net, sched)
    method = MCM(
        sched,
        student_steps,
        teacher=teacher,
        anneal="loglinear",
        anneal_params={"start": 16, "end": 256, "fraction": 0.5},
    )
    state = new_state(student, learning_rate, seed, method)
    losses = []
    fit(
        state,
        method,
        sample,
        iterations,
        grad_clip=1.0,
        eval_ema=0.999,
        log_every=max(iterations // 10, 1),
        checkpoint_every=iterations,
        hooks=_LossLog(losses),
    )
    fd = _student_fd(state.ema.eval(), sched, gmm, student_steps, eval_samples, device)
    return {
        "device": str(device),
        "fd": fd,
        "final_loss": losses[-1] if losses else None,
        "seconds": time.perf_counter() - t0,
        "config": {
            "student_steps": student_steps,
            "iterations": iterations,
            "init_iterations": init_iterations,
            "batch_size": batch_size,
            "hidden": hidden,
            "eval_samples": eval_samples,
            "seed": seed,
        },
    }


class _LossLog:
    """fit's hooks: keep the logged mean loss of every interval."""

    def __init__(self, losses: list):
        self.losses = losses

    def log(self, iteration, means):
        self.losses.append(means.get("loss"))

    def checkpoint(self, iteration, state):
        pass


# -- parts (each runs in its own process) -----------------------------------------------------------------
def part_frechet(rehearsal: bool, device: str, peak) -> dict:
    from multistep.bench.evaluation import bench_evaluation

    return bench_evaluation(64 if rehearsal else 2048, device=device)


def part_tests(rehearsal: bool, device: str, peak) -> dict:
    """pytest -m gpu over the test files that hold GPU tests (they import no Ray, MLflow or pydantic)."""
    import xml.etree.ElementTree as ET

    junit = Path(os.environ["GPU_CHECK_TMP"]) / "gpu_tests.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "tests/system/test_gpu.py",
        "tests/unit/methods/test_mcm.py",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    tests = {}
    for case in ET.parse(junit).iter("testcase") if junit.is_file() else []:
        kids = {c.tag: c for c in case}
        status = "failed" if "failure" in kids or "error" in kids else "skipped" if "skipped" in kids else "passed"
        entry = {"status": status}
        if status != "passed":
            k = kids.get("failure") or kids.get("error") or kids.get("skipped")
            entry["message"] = (k.get("message") or "")[:300]
        tests[f"{case.get('classname')}::{case.get('name')}"] = entry
    counts = {s: sum(t["status"] == s for t in tests.values()) for s in ("passed", "failed", "skipped")}
    return {"returncode": proc.returncode, "counts": counts, "tests": tests, "output_tail": proc.stdout[-1500:]}


def part_distil(rehearsal: bool, device: str, peak) -> dict:
    cfg = DISTIL_REHEARSAL if rehearsal else DISTIL
    expected = json.loads(EXPECTATIONS.read_text())["rehearsal" if rehearsal else "distil"]
    planned = {k: cfg[k] for k in expected["config"] if k in cfg}
    if expected["config"] != planned:  # before the run: a wrong file fails in a second, not after the distillation
        raise ValueError(f"{EXPECTATIONS}: its config {expected['config']} is not this run's {planned}")
    out = distil_mixture(device, **cfg)
    out["cpu_fd"] = expected["fd"]
    out["fd_over_cpu"] = out["fd"] / expected["fd"]
    return out


def part_sampling(rehearsal: bool, device: str, peak) -> dict:
    from multistep.bench.sampling import bench_sampling
    from multistep.bench.training import Setup

    setup = Setup("cpu" if rehearsal else "cifar", device, "bf16")
    return {
        **bench_sampling(
            setup,
            8 if rehearsal else 256,
            8 if rehearsal else 512,
            min_rounds=1 if rehearsal else 3,
            min_seconds=0 if rehearsal else 2.0,
        ),
        "size": setup.size,
        "precision": "bf16",
        "notes": setup.notes,
    }


def part_teacher(rehearsal: bool, device: str, peak) -> dict:
    """The imported-teacher adapter against the bare cifar-size UNet (bf16), same batch."""
    from multistep.bench.teacher import bench_teacher
    from multistep.bench.training import Setup

    setup = Setup("cpu" if rehearsal else "cifar", device, "bf16")
    res = bench_teacher(
        setup, 8 if rehearsal else 256, min_rounds=1 if rehearsal else 5, min_seconds=0 if rehearsal else 2.0
    )
    return {**res, "size": setup.size, "precision": "bf16", "notes": setup.notes}


def part_training(name: str, rehearsal: bool, device: str, peak) -> dict:
    from multistep.bench.training import Setup, bench_training

    size, precision, ch_last, comp = TRAINING[name]
    size = "cpu" if rehearsal else size
    setup = Setup(size, device, precision, comp, ch_last)
    steps, warmup = (2, 1) if rehearsal else (10, 2)
    res = bench_training(setup, 4 if rehearsal else 128, warmup, steps, peak)
    return {
        **res,
        "size": size,
        "precision": precision,
        "channels_last": ch_last,
        "compile": comp,
        "compile_backend": os.environ.get("MULTISTEP_COMPILE_BACKEND", "inductor") if comp else None,
        "notes": setup.notes,
    }


def run_part(name: str, rehearsal: bool, device: str, peak) -> dict:
    if name in TRAINING:
        return part_training(name, rehearsal, device, peak)
    parts = {"frechet": part_frechet, "tests": part_tests, "distil": part_distil, "sampling": part_sampling}
    return (parts | {"teacher": part_teacher})[name](rehearsal, device, peak)


# -- the driver -----------------------------------------------------------------------------------------
def machine_info(device: str) -> dict:
    """`multistep bench`'s machine description, plus what a GPU report needs: CUDA, GPU memory, the commit."""
    import torch

    from multistep.bench.training import machine

    info = machine(device) | {"cuda": torch.version.cuda, "git_commit": git_commit()}
    if device.startswith("cuda"):
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    return info


def git_commit() -> str | None:
    """HEAD of the checkout; on the device, where the tree arrives without .git, the `.git-commit` file carried there."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        sha = ""
    marker = REPO / ".git-commit"
    return sha or (marker.read_text().strip() if marker.is_file() else None)


def child(args) -> int:
    """One part in this process: its result (or its error) as JSON in --result."""
    t0 = time.perf_counter()
    try:
        res = {"status": "ok", "result": run_part(args.part, args.cpu_rehearsal, args.device, args.peak_tflops)}
    except Exception as e:  # a failing part records its error; the driver goes on
        res = {
            "status": "failed",
            "error": f"{type(e).__name__}: {e}"[:2000],
            "traceback": traceback.format_exc()[-4000:],
        }
    res["seconds"] = time.perf_counter() - t0
    Path(args.result).write_text(json.dumps(res, indent=2, default=str))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpu_check",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Parts: " + ", ".join(PARTS),
    )
    p.add_argument("out", help="folder for gpu_check.json and gpu_check.md (created)")
    p.add_argument("--cpu-rehearsal", action="store_true", help="every part at tiny sizes on the CPU (< 2 min)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="dense bf16 peak for MFU (default: from the GPU's name, e.g. 989 for H100/H200)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help=f"wall budget of the whole kit (default {BUDGET_S:.0f} s, rehearsal {REHEARSAL_BUDGET_S:.0f} s)",
    )
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of the parts (default: all)")
    p.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--device", default=None, help=argparse.SUPPRESS)
    return p


def _run_part(name: str, cap: int, args, out: Path, tmp: str, env: dict, device: str, peak) -> dict:
    """One part in a process (and session) of its own, stopped at its cap; its result dict (+ wall_s)."""
    result = Path(tmp) / f"{name}.json"
    cmd = [sys.executable, "-m", "multistep.bench.gpu_check", str(out), "--part", name, "--result", str(result)]
    cmd += ["--device", device] + (["--cpu-rehearsal"] if args.cpu_rehearsal else [])
    cmd += ["--peak-tflops", str(peak)] if peak else []
    t0 = time.perf_counter()
    proc = subprocess.Popen(  # a session of its own: at the cap the part goes with everything it started
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=cap)
        res = (
            json.loads(result.read_text())
            if result.is_file()
            else {
                "status": "failed",
                "error": f"the part's process exited {proc.returncode} without a result",
                "stderr_tail": stderr[-3000:],
            }
        )
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        res = {"status": "timed_out", "error": f"ran over its cap of {cap} s and was stopped"}
    return res | {"wall_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.part:
        return child(args)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    if bad := [s for s in parts if s not in PARTS]:
        print(f"gpu_check: --parts: unknown part(s) {', '.join(bad)} (known: {', '.join(PARTS)})", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".gpu_check-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        print(f"gpu_check: OUT {out}: cannot write there ({e.strerror})", file=sys.stderr)
        return 2
    import tempfile

    import torch

    from multistep.atomic import write_text

    if not args.cpu_rehearsal and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch; use --cpu-rehearsal on a machine without one", file=sys.stderr)
        return 2
    device = "cpu" if args.cpu_rehearsal else "cuda"
    budget = args.budget_s or (REHEARSAL_BUDGET_S if args.cpu_rehearsal else BUDGET_S)
    from multistep.bench.training import default_peak_tflops

    peak = args.peak_tflops or (None if args.cpu_rehearsal else default_peak_tflops(device))
    report = {
        "kind": "cpu_rehearsal" if args.cpu_rehearsal else "gpu",
        "budget_s": budget,
        "peak_tflops": peak,
        "machine": machine_info(device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parts": {},
    }
    t_start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="gpu_check-")
    env = {
        **os.environ,
        "GPU_CHECK_TMP": tmp,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "platform"), os.environ.get("PYTHONPATH")])),
        "TORCHINDUCTOR_CACHE_DIR": os.environ.get("TORCHINDUCTOR_CACHE_DIR", os.path.join(tmp, "inductor")),
    }
    if args.cpu_rehearsal:  # one intra-op thread: tiny shapes, and a second thread only spins on a shared 2-core box
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MULTISTEP_COMPILE_BACKEND="aot_eager")
    for name in parts:
        cap = PARTS[name][1 if args.cpu_rehearsal else 0]
        left = budget - (time.perf_counter() - t_start)
        if left < cap:
            report["parts"][name] = {
                "status": "skipped",
                "reason": f"{left:.0f} s of the {budget:.0f} s budget left, the part needs up to {cap} s",
            }
            print(f"[gpu_check] {name}: skipped ({report['parts'][name]['reason']})", flush=True)
            continue
        print(f"[gpu_check] {name}: running (cap {cap} s, {left:.0f} s left)", flush=True)
        res = _run_part(name, cap, args, out, tmp, env, device, peak)
        report["parts"][name] = res
        print(
            f"[gpu_check] {name}: {res['status']} in {res['wall_s']:.1f} s"
            + (f" ({res.get('error')})" if res["status"] != "ok" else ""),
            flush=True,
        )
    report["wall_s"] = time.perf_counter() - t_start
    write_text(out / "gpu_check.json", json.dumps(report, indent=2, default=str))
    md = markdown(report)
    write_text(out / "gpu_check.md", md)
    print(md, flush=True)
    return 0 if all(r["status"] in ("ok", "skipped") for r in report["parts"].values()) else 1


# -- the Markdown table ---------------------------------------------------------------------------------
def markdown(rep: dict) -> str:
    m = rep["machine"]
    lines = [
        f"# GPU check ({rep['kind']}): {m.get('gpu') or 'CPU'}, torch {m['torch']}, commit "
        f"{(m.get('git_commit') or '?')[:10]}, {rep['started']}, {rep['wall_s']:.0f} s of {rep['budget_s']:.0f} s",
        "",
        "| part | status | s | figures |",
        "|---|---|---|---|",
    ]
    for name, r in rep["parts"].items():
        lines.append(f"| {name} | {r['status']} | {fmt(r.get('wall_s'), '.0f')} | {_figures(name, r)} |")
    return "\n".join(lines) + "\n"


def _figures(name: str, r: dict) -> str:
    if r["status"] != "ok":
        return (r.get("reason") or r.get("error") or "").replace("|", "/")[:200]
    x = r["result"]
    if name in TRAINING:
        d, c = x["diffusion"], x["mcd"]
        mfu = f"MFU {100 * c['mfu']:.1f}% / {100 * d['mfu']:.1f}%, " if c.get("mfu") else ""
        return (
            f"MCD {c['step_s'] * 1e3:.1f} ms/step ({c['img_per_s']:.0f} img/s, {c['tflops']:.3g} TFLOP/s), "
            f"diffusion {d['step_s'] * 1e3:.1f} ms; {mfu}MCD/diffusion {x['mcd_over_diffusion']:.2f} (goal <= 1.75); "
            f"sCD/diffusion {x['scd_over_diffusion']:.2f} (goal <= {x['scd_goal_ratio']}); "
            f"compile {c['compile_s'] + d['compile_s']:.0f} s; peak {max(c['peak_memory_bytes'], d['peak_memory_bytes']) / 2**30:.1f} GiB"
        )
    if name == "sampling":
        return f"teacher {x['teacher_steps']} aDDIM {x['teacher']['img_per_s']:.3g} img/s; " + ", ".join(
            f"S={S} {s['img_per_s']:.4g} img/s x{s['speedup']:.0f} ({s['speedup_over_goal']:.2f} of goal)"
            for S, s in x["student"].items()
        )
    if name == "teacher":
        return f"adapter {x['adapter_s'] * 1e3:.2f} ms vs bare {x['bare_s'] * 1e3:.2f} ms: ratio {x['ratio']:.3f} (goal <= {x['goal_ratio']})"
    if name == "frechet":
        t = x.get("torch", {})
        return (
            f"d={x['d']}: torch {t.get('device')} {fmt(t.get('seconds'))} s, CPU path {x['frechet_s']:.3g} s, "
            f"sqrtm {x['sqrtm_s']:.3g} s; rel. diff vs CPU {fmt(t.get('relative_difference_cpu_path'), '.1e')}, "
            f"vs sqrtm {fmt(t.get('relative_difference_sqrtm'), '.1e')}"
        )
    if name == "tests":
        c = x["counts"]
        failed = [k for k, v in x["tests"].items() if v["status"] == "failed"]
        return f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped" + (
            f": {', '.join(failed)}" if failed else ""
        )
    if name == "distil":
        return (
            f"FD {x['fd']:.4g} on {x['device']} vs {x['cpu_fd']:.4g} on CPU (ratio {x['fd_over_cpu']:.2f}), "
            f"S={x['config']['student_steps']}, {x['config']['iterations']} it, {x['seconds']:.0f} s"
        )
    return ""


if __name__ == "__main__":
    sys.exit(main())
