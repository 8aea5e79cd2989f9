"""bench/memory.py: the memory part measures both evaluators in child processes."""

import os

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.skipif(
    not os.environ.get("MULTISTEP_BIG_TESTS"), reason="~7 s of child processes: set MULTISTEP_BIG_TESTS=1"
)
def test_memory_part_measures_both_evaluators_in_child_processes():
    from multistep.bench.memory import bench_memory
    from multistep.bench.report import table

    res = bench_memory(300, ())  # (the in-memory runs share the child-process code path)
    [run] = res["runs"]
    assert (run["mode"], run["n"]) == ("stream", 300) and run["peak_bytes"] > 2**20 and run["fd"] > 0
    text = table(
        {
            "config": {"size": "cpu", "precision": "fp32", "compile": False, "channels_last": False},
            "machine": {"cpu": "x"},
            "memory": res,
        }
    )
    assert "streamed" in text and "N =    300" in text
