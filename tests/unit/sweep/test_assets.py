"""sweep/assets.py: the shared assets' disk cache reads back what it wrote (no silent recomputation)."""

import numpy as np
import pytest

from multistep.config import TrialCfg
from multistep.sweep.assets import prepare

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("stream", ["off", "on"])
def test_second_prepare_reads_every_cache_file(tmp_path, stream):
    cfg = TrialCfg.model_validate(
        {
            "data": {"kind": "gmm", "shape": [4], "components": 3, "seed": 1},
            "student": {"hidden": 16, "depth": 2, "init_iterations": 20},
            "eval": {"samples": 300, "teacher_steps": [1, 2], "ode_steps": 8, "stream": stream, "keep_rows": 100},
        }
    )
    first_log, second_log = [], []
    first = prepare(cfg, tmp_path, log=first_log.append)
    second = prepare(cfg, tmp_path, log=second_log.append)
    assert any("computing evaluation reference" in m for m in first_log)
    assert second_log == []  # every asset from its cache file, none recomputed
    assert first["teacher_rows"] == second["teacher_rows"]
    for k in ("mu", "sigma") if stream == "on" else ("data", "ode"):
        np.testing.assert_array_equal(first["eval_ref"][k], second["eval_ref"][k])
    assert set(second["eval_rows"]) == {"reference", "teacher_ddim_2", "teacher_addim_2"}
    assert second["eval_rows"]["teacher_addim_2"].shape == (100, 4)
    np.testing.assert_array_equal(first["eval_rows"]["reference"], second["eval_rows"]["reference"])
