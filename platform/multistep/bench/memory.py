"""Evaluation memory: peak host memory and wall time of an N-sample evaluation of 3x64x64 images in 2,048-d
features (the Inception detector's dimension; a fixed random projection stands in for the network, whose own
memory does not grow with N), streamed (metrics/streaming.py) or held in memory (metrics/evaluate.py).

Each run is a child process (`python -m multistep.bench.memory MODE N`), so its peak RSS is its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

SHAPE, DIM = (3, 64, 64), 2048
BATCH = 256  # samples per sampling batch (eval.batch_size): the streamed peak grows with it, not with N
GOAL_BYTES = 2 * 2**30  # a 50k-sample evaluation must stay under 2 GB


class Images:
    """Random images in [-1, 1]: `.shape`, `.sample(n, generator, dtype)`."""

    shape = SHAPE

    def sample(self, n, generator=None, dtype=None):
        import torch

        return torch.rand((n, *SHAPE), generator=generator, dtype=dtype or torch.float32) * 2 - 1


def _run(mode: str, n: int) -> dict:
    import resource

    import numpy as np
    import torch

    from multistep.diffusion.schedules import make_schedule
    from multistep.metrics import evaluate as ev
    from multistep.metrics import streaming as st

    w = torch.randn(int(np.prod(SHAPE)), DIM, generator=torch.Generator().manual_seed(0)) / 64
    features = lambda x: (torch.as_tensor(x).reshape(len(x), -1).float() @ w).double().numpy()
    teacher, sched = (lambda z, t: 0.5 * z), make_schedule("cosine")
    student = [("s", 1, lambda noise: (0.5 * noise, 1))]
    t0 = time.perf_counter()
    if mode == "stream":
        ref = st.make_stream_ref(
            Images(), teacher, sched, n, 2, 0, "inception", features=features, kid_subsets=10, ode_samples=2000
        )
        names = ref.names("inception")
        [(_, _, point, _)] = st.stream_points(lambda y, i: student, ref, names, BATCH, features=features)
        value = point.result()[names["fd"]]
    else:
        ref = ev.make_eval_ref(
            Images(), teacher, sched, n, 2, 0, "inception", features=features, kid_subsets=10, ode_samples=2000
        )
        names = ref.names("inception")
        [(_, _, x, _)] = ev.sample_points(lambda y, i: student, ref.noise, None, BATCH)
        value = ev.evaluate(x, ref, names, features(x), 10)[names["fd"]]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"mode": mode, "n": n, "seconds": time.perf_counter() - t0, "peak_bytes": peak, "fd": value}


def bench_memory(stream_n: int = 50_000, memory_ns: tuple[int, ...] = (5_000, 10_000)) -> dict:
    """The streamed evaluation at stream_n and the in-memory one at each of memory_ns, each in its own process."""
    runs = []
    for mode, n in [("stream", stream_n), *(("memory", m) for m in memory_ns)]:
        env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "1048576"}  # as the sweep workers run (sweep/ray_runtime.py)
        cmd = [sys.executable, "-m", "multistep.bench.memory", mode, str(n)]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            runs.append({"mode": mode, "n": n, "error": (p.stderr.strip().splitlines() or ["?"])[-1]})
            continue
        runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return {"shape": list(SHAPE), "dim": DIM, "goal_bytes": GOAL_BYTES, "runs": runs}


if __name__ == "__main__":
    print(json.dumps(_run(sys.argv[1], int(sys.argv[2]))))
