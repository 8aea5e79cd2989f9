"""The performance benchmark (bench/__init__.py, `multistep bench`): its CPU path end to end.

Speed goals live in the benchmark's output (docs/performance.md), never in these tests: they check that
every path runs and reports well-formed, positive figures, and that bf16 never reaches the targets.
"""

import json

import pytest

from multistep.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cpu_bench_end_to_end_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "--size",
            "cpu",
            "--threads",
            "1",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--batch",
            "4",
            "--sample-batch",
            "8",
            "--teacher-steps",
            "8",
            "--fd-dim",
            "48",
            "--peak-tflops",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res) >= {"machine", "config", "training", "sampling", "teacher", "evaluation"}
    te = res["teacher"]  # the imported-teacher adapter against the bare network, same batch
    assert te["batch"] == 8 and te["bare_s"] > 0 and te["ratio"] == pytest.approx(te["adapter_s"] / te["bare_s"])
    tr = res["training"]
    for kind in ("diffusion", "mcd", "scd"):
        r = tr[kind]
        for key in ("step_s", "img_per_s", "tflops", "mfu", "peak_memory_bytes"):
            assert r[key] > 0, (kind, key)
        assert r["img_per_s"] == pytest.approx(4 / r["step_s"])
        assert r["mfu"] == pytest.approx(r["tflops"] / 2)
    assert tr["mcd_over_diffusion"] == pytest.approx(tr["mcd"]["step_s"] / tr["diffusion"]["step_s"])
    assert tr["flop_ideal_ratio"] == pytest.approx(5 / 3)
    assert tr["scd_over_diffusion"] == pytest.approx(tr["scd"]["step_s"] / tr["diffusion"]["step_s"])
    assert tr["forward_gflop_per_image"] > 0
    sa = res["sampling"]
    assert sa["teacher"]["img_per_s"] > 0
    assert sorted(sa["student"], key=int) == ["1", "2", "4", "8"]
    for S, r in sa["student"].items():
        assert r["img_per_s"] > 0 and r["speedup"] > 0
        assert r["goal"] == pytest.approx(0.9 * 8 / int(S))
    ev = res["evaluation"]
    assert ev["d"] == 48 and ev["frechet_s"] > 0 and ev["sqrtm_s"] > 0
    assert ev["relative_difference"] < 1e-6  # the two formulas agree
    printed = capsys.readouterr().out
    assert "MCD / diffusion step" in printed and "speedup" in printed and "through the adapter" in printed
