"""bench/data.py: the data part times the shard stream with and without its reader thread."""

import pytest

from multistep import bench

pytestmark = pytest.mark.usefixtures("one_thread")


def test_data_part_times_the_stream_with_and_without_its_reader_thread():
    from multistep.sweep.worker import PREFETCH_BATCHES

    r = bench.bench_data(rows=600, side=8, batch=32, batches=20, step_ms=1.0, rounds=1)
    assert set(r["wait_ms_per_batch"]) == {"0", str(PREFETCH_BATCHES)}
    assert all(v > 0 and len(r["all_wait_ms"][k]) == 1 for k, v in r["wait_ms_per_batch"].items())
    assert "the step waits" in bench.table(
        {
            "machine": {"cpu": "x"},
            "config": {"size": "cpu", "precision": "fp32", "compile": False, "channels_last": False},
            "data": r,
        }
    )
