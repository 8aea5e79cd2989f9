"""The GPU acceptance kit (benchmarks/gpu_check.sh) rehearsed on the CPU, so it cannot rot while no GPU is lent."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

KIT = REPO / "benchmarks" / "gpu_check.sh"
EXPECTED = json.loads((REPO / "tests" / "expectations" / "gpu_check.json").read_text())


def kit(out, *args, env=None):
    return subprocess.run(
        ["bash", str(KIT), str(out), "--cpu-rehearsal", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("MULTISTEP_BIG_TESTS"),
    reason="~40 s on CPU, beyond the suite's 10-minute budget: set MULTISTEP_BIG_TESTS=1 (or run benchmarks/gpu_check.sh --cpu-rehearsal)",
)
def test_cpu_rehearsal_runs_every_part(tmp_path):
    proc = kit(tmp_path / "out")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert rep["kind"] == "cpu_rehearsal" and rep["wall_s"] < 120
    parts = rep["parts"]
    assert list(parts) == [
        "frechet",
        "tests",
        "distil",
        "train_cifar_fp32",
        "train_cifar_bf16",
        "sampling",
        "teacher",
        "train_imagenet64_bf16_compile",
        "train_cifar_bf16_compile",
    ]
    assert {name: r["status"] for name, r in parts.items()} == dict.fromkeys(parts, "ok"), md
    for name in parts:
        assert f"| {name} | ok |" in md
    fr = parts["frechet"]["result"]
    assert fr["torch"]["relative_difference_cpu_path"] < 1e-9 and fr["relative_difference"] < 1e-9
    tests = parts["tests"]["result"]
    assert tests["counts"]["failed"] == 0 and tests["counts"]["skipped"] >= 5  # no GPU here: they skip
    assert all(t["message"].startswith("no GPU") for t in tests["tests"].values() if t["status"] == "skipped")
    di = parts["distil"]["result"]
    assert di["config"] == EXPECTED["rehearsal"]["config"]
    assert di["fd"] == pytest.approx(EXPECTED["rehearsal"]["fd"], rel=1e-3)  # the same run, another CPU's round-off
    for name in ("train_cifar_fp32", "train_cifar_bf16", "train_cifar_bf16_compile", "train_imagenet64_bf16_compile"):
        tr = parts[name]["result"]
        for kind in ("diffusion", "mcd"):
            assert tr[kind]["step_s"] > 0 and tr[kind]["img_per_s"] == pytest.approx(tr["batch"] / tr[kind]["step_s"])
        assert tr["mcd_over_diffusion"] == pytest.approx(tr["mcd"]["step_s"] / tr["diffusion"]["step_s"])
    assert parts["train_cifar_bf16_compile"]["result"]["compile"] is True
    assert sorted(parts["sampling"]["result"]["student"], key=int) == ["1", "2", "4", "8"]
    te = parts["teacher"]["result"]
    assert te["ratio"] == pytest.approx(te["adapter_s"] / te["bare_s"]) and te["bare_s"] > 0


def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path):
    bad = tmp_path / "expectations.json"
    bad.write_text(json.dumps({"rehearsal": {"fd": 1.0, "config": {"student_steps": 99}}}))
    proc = kit(tmp_path / "out", "--parts", "distil,frechet", env={"GPU_CHECK_EXPECTATIONS": str(bad)})
    assert proc.returncode == 1
    parts = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["parts"]
    assert parts["distil"]["status"] == "failed" and str(bad) in parts["distil"]["error"]
    assert parts["frechet"]["status"] == "ok"


def test_parts_that_would_run_over_the_budget_are_skipped_with_the_reason(tmp_path):
    proc = kit(tmp_path / "out", "--parts", "frechet,sampling", "--budget-s", "5")
    assert proc.returncode == 0
    parts = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["parts"]
    assert {r["status"] for r in parts.values()} == {"skipped"}
    assert "the part needs up to 10 s" in parts["frechet"]["reason"]


@pytest.mark.parametrize("args, message", [(["--parts", "nope"], "--parts: unknown part(s) nope"), ([], "OUT")])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    out = tmp_path / "file"
    out.write_text("")  # an existing regular file cannot be the output folder
    proc = kit(out if not args else tmp_path / "out", *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MULTISTEP_BIG_TESTS"), reason="~36 s on CPU: set MULTISTEP_BIG_TESTS=1")
def test_the_cpu_figure_of_the_gpu_distillation_is_this_run(one_thread):
    """The CPU FD that the GPU run is compared with is re-measured here: the expectation is not a guess."""
    from multistep.bench.gpu_check import DISTIL, distil_mixture

    got = distil_mixture("cpu", **DISTIL)
    assert got["config"] == EXPECTED["distil"]["config"]
    # bit-identical here for 1 and 2 threads; another CPU's BLAS rounds differently and 3,000 steps amplify it
    assert got["fd"] == pytest.approx(EXPECTED["distil"]["fd"], rel=0.05)
