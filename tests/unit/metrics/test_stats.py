"""Mergeable feature statistics (metrics/stats.py): StatsAccumulator merges and all-reduces, and the reference
statistics' disk cache."""

import multiprocessing as mp

import numpy as np
import pytest
import torch

from multistep.metrics import gaussian_stats
from multistep.metrics.stats import StatsAccumulator, cache_path, reference_stats


def test_accumulator_merge_equals_stats_of_concatenation():
    rng = np.random.default_rng(5)
    batches = [rng.standard_normal((k, 7)) * 2 + 3 for k in (5, 17, 1, 30)]
    a = StatsAccumulator().update(batches[0]).update(torch.from_numpy(batches[1]).float())
    b = StatsAccumulator(7).update(batches[2]).update(batches[3])
    mu, cov = a.merge(b).mean_cov()
    allf = np.concatenate([batches[0], torch.from_numpy(batches[1]).float().double().numpy(), *batches[2:]])
    mu_ref, cov_ref = gaussian_stats(allf)
    assert a.n == 53 and a.sum.dtype == np.float64
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-12)
    np.testing.assert_allclose(cov, cov_ref, rtol=1e-10, atol=1e-12)
    back = StatsAccumulator.from_state(a.state())
    np.testing.assert_array_equal(back.mean_cov()[1], cov)
    with pytest.raises(ValueError, match="dimension"):
        a.update(np.zeros((2, 6)))


def _ddp_rank(rank, path, feats, q):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    acc = StatsAccumulator().update(feats[rank::2]).all_reduce()
    dist.destroy_process_group()
    q.put((acc.n, acc.sum, acc.outer))


def test_accumulator_all_reduce_across_two_gloo_ranks(tmp_path):
    feats = np.random.default_rng(6).standard_normal((41, 5))
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_ddp_rank, args=(r, tmp_path / "store", feats, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    for n, s, outer in results:  # every rank holds the statistics of all 41 rows
        assert n == 41
        np.testing.assert_allclose(s, feats.sum(0), rtol=1e-12)
        np.testing.assert_allclose(outer, feats.T @ feats, rtol=1e-12)


def test_reference_stats_cache(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return gaussian_stats(np.random.default_rng(len(calls)).standard_normal((100, 4)))

    key = {"dataset": "gmm16", "extractor": {"name": "identity"}, "samples": 100}
    mu, sigma, h = reference_stats(key, compute, tmp_path)
    mu2, sigma2, h2 = reference_stats(dict(reversed(list(key.items()))), compute, tmp_path)  # same key, other order
    assert len(calls) == 1 and h2 == h and len(h) == 16
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    assert [p.name for p in tmp_path.iterdir()] == [cache_path(key, tmp_path).name]  # no temp files left
    with np.load(cache_path(key, tmp_path), allow_pickle=False) as z:
        assert str(z["hash"]) == h
    _, _, h3 = reference_stats({**key, "dataset": "gmm16-v2"}, compute, tmp_path)  # changed dataset recomputes
    _, _, h4 = reference_stats({**key, "samples": 50}, compute, tmp_path)  # changed sample count recomputes
    assert len(calls) == 3 and len({h, h3, h4}) == 3
    cache_path(key, tmp_path).write_bytes(b"not an npz")  # a corrupt file is recomputed, not trusted
    reference_stats(key, compute, tmp_path)
    assert len(calls) == 4
    acc = StatsAccumulator().update(np.arange(12.0).reshape(4, 3))  # compute_fn may return an accumulator
    mu5, _, _ = reference_stats({**key, "dataset": "acc"}, lambda: acc, tmp_path)
    np.testing.assert_allclose(mu5, [4.5, 5.5, 6.5])
    with pytest.raises(ValueError, match="samples"):
        reference_stats({"dataset": "x", "extractor": "identity"}, compute, tmp_path)
