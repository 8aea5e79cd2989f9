"""Time multistep's frechet_distance against the classic scipy.linalg.sqrtm formula at d = 2048.

    python benchmarks/frechet.py [--dim 2048] [--samples 4096] [--repeats 3]

Covariances are sample covariances of `samples` Gaussian vectors (one set mixed by a random matrix),
as FID computes them. Prints both timings (best of --repeats; wall and process CPU time), their ratios and
the relative agreement.
Set OPENBLAS_NUM_THREADS and OMP_NUM_THREADS (torch/MKL) before starting to fix the thread counts.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import scipy
import scipy.linalg

from multistep.metrics.frechet import frechet_distance


def fd_sqrtm(mu1, s1, mu2, s2) -> float:
    """The formula of pytorch-fid / clean-fid: tr of scipy.linalg.sqrtm(S1 S2), real part."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def best_of(fn, repeats: int) -> tuple[float, float, float]:
    """(best wall seconds, best process CPU seconds, result): CPU time is the steadier figure on a shared machine."""
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=2048)      # feature dimension d (Inception: 2048)
    p.add_argument("--samples", type=int, default=4096)  # samples per covariance
    p.add_argument("--repeats", type=int, default=3)     # timed runs per method; the best is reported
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    d, n = a.dim, a.samples
    x = rng.standard_normal((n, d))
    y = rng.standard_normal((n, d)) @ (np.eye(d) + 0.5 * rng.standard_normal((d, d)) / np.sqrt(d)) + 0.1
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    threads = f"openblas={os.environ.get('OPENBLAS_NUM_THREADS', 'default')} omp={os.environ.get('OMP_NUM_THREADS', 'default')} cpus={os.cpu_count()}"
    print(f"d={d} samples={n} repeats={a.repeats} numpy={np.__version__} scipy={scipy.__version__} threads: {threads}")
    w_ours, c_ours, fd_ours = best_of(lambda: frechet_distance(mu1, s1, mu2, s2), a.repeats)
    w_ref, c_ref, fd_ref = best_of(lambda: fd_sqrtm(mu1, s1, mu2, s2), a.repeats)
    print(f"frechet_distance     wall {w_ours:8.3f} s  cpu {c_ours:8.3f} s   FD = {fd_ours:.12g}")
    print(f"scipy sqrtm formula  wall {w_ref:8.3f} s  cpu {c_ref:8.3f} s   FD = {fd_ref:.12g}")
    print(f"speed-up: wall {w_ref / w_ours:.1f}x  cpu {c_ref / c_ours:.1f}x   "
          f"relative difference {abs(fd_ours - fd_ref) / abs(fd_ref):.2e}")

if __name__ == "__main__":
    main()
