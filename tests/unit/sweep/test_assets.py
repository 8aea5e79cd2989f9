"""sweep/assets.py: the shared assets' disk cache reads back what it wrote (no silent recomputation)."""

import logging

import numpy as np
import pytest

from multistep.config import TrialCfg
from multistep.metrics.paired import fd
from multistep.sweep.assets import prepare

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("stream", ["off", "on"])
def test_second_prepare_reads_every_cache_file(tmp_path, stream, caplog):
    cfg = TrialCfg.model_validate(
        {
            "data": {"kind": "gmm", "shape": [4], "components": 3, "seed": 1},
            "student": {"hidden": 16, "depth": 2, "init_iterations": 20},
            "eval": {"samples": 300, "teacher_steps": [1, 2], "ode_steps": 8, "stream": stream, "keep_rows": 300},
        }
    )
    caplog.set_level(logging.INFO, logger="multistep")
    first = prepare(cfg, tmp_path)
    first_log = list(caplog.messages)
    caplog.clear()
    second = prepare(cfg, tmp_path)
    assert any("computing evaluation reference" in m for m in first_log)
    assert caplog.messages == []  # every asset from its cache file, none recomputed
    assert first["teacher_rows"] == second["teacher_rows"]
    for k in ("mu", "sigma") if stream == "on" else ("data", "ode"):
        np.testing.assert_array_equal(first["eval_ref"][k], second["eval_ref"][k])
    kept = second["eval_rows"]  # the reference's, the floor's and every teacher point's rows, for `multistep claims`
    assert set(kept) == {"reference", "floor"} | {f"teacher_{m}_{n}" for m in ("ddim", "addim") for n in (1, 2)}
    assert kept["teacher_addim_2"].shape == kept["floor"].shape == (300, 4)
    # all rows kept: the FDs recomputed from them are the logged floor and teacher curve (float32 rows)
    assert fd(kept["floor"].astype(float), kept["reference"]) == pytest.approx(
        first["eval_ref"]["floor"]["fd_identity_300"], rel=1e-4
    )
    logged = {
        (r["method"], r["student_steps"]): r["value"] for r in first["teacher_rows"] if r["metric"] == "fd_identity_300"
    }
    assert fd(kept["teacher_ddim_1"].astype(float), kept["reference"]) == pytest.approx(
        logged[("teacher_ddim", 1)], rel=1e-4
    )
    np.testing.assert_array_equal(first["eval_rows"]["reference"], second["eval_rows"]["reference"])


def test_the_teacher_curve_averages_the_same_noise_seeds_as_the_students(tmp_path):
    from multistep.metrics.evaluate import teacher_curve
    from multistep.metrics.streaming import load_ref
    from multistep.train.build import build

    doc = {
        "data": {"kind": "gmm", "shape": [4], "components": 3, "seed": 1},
        "student": {"hidden": 16, "depth": 2, "init_iterations": 20},
        "eval": {"samples": 300, "teacher_steps": [2], "ode_steps": 8, "seed": 5, "kid_subsets": 0},
    }
    one = prepare(TrialCfg.model_validate(doc), tmp_path / "1")
    doc["eval"]["repeats"] = 2
    cfg = TrialCfg.model_validate(doc)
    two = prepare(cfg, tmp_path / "2")
    c = build(cfg)  # repeat 1 by hand: the same reference, the noise drawn with seed 5 + 1000
    ref = load_ref(one["eval_ref"]).with_noise_seed(1, 5)
    second, _ = teacher_curve(c.teacher, c.schedule, c.data, ref, [2], extractor=cfg.feature_space)
    by_key = lambda rows: {(r["method"], r["metric"]): r["value"] for r in rows}
    one, two, second = by_key(one["teacher_rows"]), by_key(two["teacher_rows"]), by_key(second)
    for key in [("teacher_ddim", "fd_identity_300"), ("teacher_addim", "fd_identity_300")]:
        assert two[key] == pytest.approx((one[key] + second[key]) / 2, rel=1e-9)
        assert two[key] != pytest.approx(one[key], rel=1e-3)
