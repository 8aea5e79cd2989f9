"""Evaluation figures: metrics.frechet_distance versus the scipy.linalg.sqrtm formula at d = 2048."""

from __future__ import annotations

import statistics
import time

from multistep.bench.training import GOAL_FD_AGREEMENT, GOAL_FD_SPEEDUP


def sqrtm_frechet(mu1, s1, mu2, s2) -> float:
    """The usual FID formula (pytorch-fid / TTUR) with scipy.linalg.sqrtm, for comparison."""
    import numpy as np
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean[0] if isinstance(covmean, tuple) else covmean
    if not np.isfinite(covmean).all():
        off = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean)))


def bench_evaluation(d: int, seed: int = 0, repeats: int = 3, device=None) -> dict:
    """Two full-rank d x d covariances like Inception statistics (Wishart, 1.5 d samples).

    Both formulas run once on a small problem first (library and thread-pool start-up is not part of either);
    frechet_distance is then timed `repeats` times (median), the much slower sqrtm formula once. With a `device`
    (e.g. cuda) the torch path `frechet_distance_torch` is timed there too (median of `repeats`, after a warm-up)."""
    import numpy as np

    from multistep.metrics.frechet import frechet_distance, frechet_distance_torch
    from multistep.train.perf import synchronize

    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(2):
        w = rng.standard_normal((d, d + d // 2)) / np.sqrt(d)
        stats += [rng.standard_normal(d) * 0.1, w @ w.T]
    mu1, s1, mu2, s2 = stats
    small = [a[:64] if a.ndim == 1 else a[:64, :64] for a in stats]
    frechet_distance(*small), sqrtm_frechet(*small)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fd = frechet_distance(mu1, s1, mu2, s2)
        times.append(time.perf_counter() - t0)
    t_fd = statistics.median(times)
    t0 = time.perf_counter()
    ref = sqrtm_frechet(mu1, s1, mu2, s2)
    t_ref = time.perf_counter() - t0
    out = {
        "d": d,
        "frechet_s": t_fd,
        "frechet_s_all": times,
        "sqrtm_s": t_ref,
        "speedup": t_ref / t_fd,
        "fd": fd,
        "fd_sqrtm": ref,
        "relative_difference": abs(fd - ref) / abs(ref),
        "goal_speedup": GOAL_FD_SPEEDUP,
        "goal_agreement": GOAL_FD_AGREEMENT,
    }
    if device is not None:
        frechet_distance_torch(*small, device=device)
        dev_times = []
        for _ in range(repeats):
            synchronize(device)
            t0 = time.perf_counter()
            fd_dev = frechet_distance_torch(mu1, s1, mu2, s2, device=device)  # ends in a host read: synchronised
            dev_times.append(time.perf_counter() - t0)
        t_dev = statistics.median(dev_times)
        out["torch"] = {
            "device": str(device),
            "seconds": t_dev,
            "seconds_all": dev_times,
            "fd": fd_dev,
            "speedup_over_sqrtm": t_ref / t_dev,
            "speedup_over_cpu_path": t_fd / t_dev,
            "relative_difference_cpu_path": abs(fd_dev - fd) / abs(fd),
            "relative_difference_sqrtm": abs(fd_dev - ref) / abs(ref),
        }
    return out
