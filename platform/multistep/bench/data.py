"""Data figures: Parquet shards streamed as the trials stream them, with and without the reader thread, beside a
stand-in accelerator step (a sleep: the host waits, the GIL is free); the time the step waits for its batch."""

from __future__ import annotations

import statistics
import time


def bench_data(
    rows: int = 20000, side: int = 32, batch: int = 128, batches: int = 300, step_ms: float = 5.0, rounds: int = 2
) -> dict:
    """ms per batch the step waits for data, ShardStream without and with its reader thread (worker.PREFETCH_BATCHES),
    32x32x3 uint8 images in 1000-row shards; rounds alternate the two so a slow spell hits both."""
    import shutil
    import tempfile

    import numpy as np

    from multistep.data.parquet import ShardStream, write_shards
    from multistep.sweep.worker import PREFETCH_BATCHES

    folder = tempfile.mkdtemp(prefix="msbench-data-")
    try:
        x = np.random.default_rng(0).integers(0, 256, (rows, side, side, 3), dtype=np.uint8)
        write_shards(x, np.arange(rows) % 10, folder, shard_size=1000)
        stream = ShardStream(folder, 0, 1, seed=0, batch_size=batch)
        waits: dict[int, list[float]] = {0: [], PREFETCH_BATCHES: []}
        for _ in range(rounds):
            for prefetch in waits:
                it = stream.batches(prefetch=prefetch)
                next(it)
                wait = 0.0
                for _ in range(batches):
                    t0 = time.perf_counter()
                    next(it)
                    wait += time.perf_counter() - t0
                    time.sleep(step_ms / 1000)
                waits[prefetch].append(wait / batches * 1000)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    wait_ms = {str(k): statistics.median(v) for k, v in waits.items()}
    return {
        "batch": batch,
        "image": [3, side, side],
        "step_ms": step_ms,
        "batches": batches,
        "rounds": rounds,
        "wait_ms_per_batch": wait_ms,
        "all_wait_ms": {str(k): v for k, v in waits.items()},
    }
