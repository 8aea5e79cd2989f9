"""Evaluation metrics: Fréchet distance, mergeable statistics and their cache, KID, bootstrap CI, extractors."""

import multiprocessing as mp
import re
import time

import numpy as np
import pytest
import scipy.linalg
import torch

from conftest import TinyDetector
from multistep.metrics import bootstrap_fd_ci, frechet_distance, gaussian_stats, kid, make_extractor
from multistep.metrics.kid import mmd2_unbiased
from multistep.metrics.stats import StatsAccumulator, cache_path, reference_stats


def fd_sqrtm(mu1, s1, mu2, s2) -> float:
    """The classic formula (pytorch-fid / clean-fid): tr of scipy.linalg.sqrtm(S1 S2), real part."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def sample_stats(rng, n, d, scale=1.0, shift=0.0):
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    return gaussian_stats(rng.standard_normal((n, d)) @ (np.eye(d) + a) * scale + shift)


# ---------- Fréchet distance ----------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fd_matches_sqrtm_on_random_covariances(seed):
    rng = np.random.default_rng(seed)
    for d in (3, 32, 128):
        mu1, s1 = sample_stats(rng, 4 * d, d)
        mu2, s2 = sample_stats(rng, 4 * d, d, scale=1.3, shift=0.1)
        ours, ref = frechet_distance(mu1, s1, mu2, s2), fd_sqrtm(mu1, s1, mu2, s2)
        assert isinstance(ours, float) and np.isfinite(ours)
        assert ours == pytest.approx(ref, rel=1e-6)
    b = rng.standard_normal((16, 16))  # a general PSD pair (not from samples), far apart
    assert frechet_distance(np.zeros(16), b @ b.T, np.ones(16), np.eye(16)) == pytest.approx(
        fd_sqrtm(np.zeros(16), b @ b.T, np.ones(16), np.eye(16)), rel=1e-6
    )


def test_fd_rank_deficient_covariances():
    rng = np.random.default_rng(3)
    for d, n in [(64, 20), (64, 40), (100, 30)]:  # fewer samples than dimensions: rank n - 1
        mu1, s1 = gaussian_stats(rng.standard_normal((n, d)))
        mu2, s2 = gaussian_stats(rng.standard_normal((n, d)) * 1.3 + 0.2)
        assert np.linalg.matrix_rank(s1) == n - 1
        ours = frechet_distance(mu1, s1, mu2, s2)
        assert np.isfinite(ours) and ours == pytest.approx(fd_sqrtm(mu1, s1, mu2, s2), rel=1e-6)
    # Both covariances on one 10-dim subspace of R^64, against the exact value from the 10x10 problem:
    # S1 = P P^T, S2 = P D P^T -> tr (S1 S2)^1/2 = sum sqrt eig(G D G), G = P^T P. (sqrtm itself is only ~1e-6 good here.)
    p = rng.standard_normal((64, 10))
    dg = np.diag(rng.uniform(0.5, 2.0, 10))
    s1, s2, g = p @ p.T, p @ dg @ p.T, p.T @ p
    exact = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.linalg.eigvals(g @ dg @ g).real).sum()
    assert frechet_distance(np.zeros(64), s1, np.zeros(64), s2) == pytest.approx(exact, rel=1e-10)
    # Two different low-rank subspaces: tr (PP^T QQ^T)^1/2 is the nuclear norm of P^T Q.
    q = rng.standard_normal((64, 7))
    exact = np.trace(s1) + np.trace(q @ q.T) - 2 * np.linalg.svd(p.T @ q, compute_uv=False).sum()
    assert frechet_distance(np.zeros(64), s1, np.zeros(64), q @ q.T) == pytest.approx(exact, rel=1e-8)
    # A zero covariance (e.g. a collapsed generator) is valid: FD = ||dmu||^2 + tr S.
    assert frechet_distance(np.zeros(64), np.zeros((64, 64)), np.ones(64), s1) == pytest.approx(64 + np.trace(s1))


def test_fd_factor_takes_plain_cholesky_only_at_full_rank():
    from multistep.metrics.frechet import _cholesky_factor

    rng = np.random.default_rng(5)
    _, full = sample_stats(rng, 200, 50)
    lo, s2, r = _cholesky_factor(full, full)
    assert r == 50 and np.allclose(lo @ lo.T, full, rtol=0, atol=1e-12) and np.array_equal(s2, full)  # unpermuted
    _, low = gaussian_stats(rng.standard_normal((20, 50)))  # rank 19: plain Cholesky would keep round-off pivots
    lo, s2, r = _cholesky_factor(low, full)
    assert r == 19 and not np.array_equal(s2, full)  # pivoted: S2 permuted to match
    assert np.all(lo[:, 19:] == 0)


def test_fd_identical_inputs_and_guards():
    rng = np.random.default_rng(4)
    mu, s = sample_stats(rng, 200, 50)
    assert frechet_distance(mu, s, mu, s) == 0.0
    assert frechet_distance(mu, s, mu.copy(), s.copy()) == 0.0
    near = frechet_distance(mu, s, mu, s * (1 + 1e-12))
    assert 0.0 <= near < 1e-8
    assert frechet_distance(np.zeros(3), np.zeros((3, 3)), np.array([3.0, 4.0, 0.0]), np.zeros((3, 3))) == 25.0
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(mu, np.full_like(s, np.nan), mu, s)
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(mu, s, mu[:-1], s[:-1, :-1])


# ---------- statistics accumulator and its cache ----------


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


# ---------- KID and bootstrap ----------


def test_kid_unbiased_on_same_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((1000, 16)), rng.standard_normal((1000, 16))
    k0, se0 = kid(a, b, num_subsets=10, subset_size=100)  # disjoint subsets
    assert se0 > 0 and abs(k0) < 3 * se0
    k1, se1 = kid(a, rng.standard_normal((1000, 16)) + 0.5, num_subsets=10, subset_size=100)
    assert k1 > 10 * se1 and k1 > 20 * abs(k0)
    # Unbiasedness itself: the per-subset estimates average to ~0 over many independent pairs (a biased
    # V-statistic would sit at +O(1/m)).
    vals = [mmd2_unbiased(rng.standard_normal((20, 4)), rng.standard_normal((20, 4))) for _ in range(400)]
    assert abs(np.mean(vals)) < 3 * np.std(vals) / np.sqrt(len(vals))
    k2, se2 = kid(a, b, num_subsets=50, subset_size=200)  # overlapping subsets: a finite, positive SE
    assert np.isfinite(k2) and se2 > 0


def test_bootstrap_fd_ci_covers_the_estimate():
    rng = np.random.default_rng(8)
    a = rng.standard_normal((2000, 4))
    b = rng.standard_normal((2000, 4)) + np.array([1.0, 0, 0, 0])  # true FD = 1
    point = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    low, high = bootstrap_fd_ci(a, b, n_boot=100, alpha=0.1, seed=0)
    assert low < point < high and low < 1.0 < high and high - low < 0.5
    assert bootstrap_fd_ci(a, b, n_boot=100, alpha=0.1, seed=0) == (low, high)  # seeded


# ---------- extractors ----------


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_extractor(tmp_path):
    path = tmp_path / "tiny-detector.pt"
    torch.jit.script(TinyDetector()).save(str(path))
    ext = make_extractor("inception", path=path, batch_size=3)
    assert ext.name == "inception" and len(ext.key["sha256"]) == 16
    imgs = torch.randint(0, 256, (7, 3, 5, 5), dtype=torch.uint8)
    f = ext(imgs)
    assert f.shape == (7, 6) and f.dtype == np.float64
    np.testing.assert_allclose(f[:, :3], imgs.double().mean(dim=(2, 3)).numpy(), rtol=1e-6)
    floats = imgs.float() / 127.5 - 1  # [-1, 1] floats map back to the same uint8 images
    np.testing.assert_allclose(ext(floats), f)
    gray = ext(imgs[:, :1])  # one channel is repeated to three
    np.testing.assert_allclose(gray[:, 0], gray[:, 2])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "missing.pt"))):
        make_extractor("inception", path=tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage, not a TorchScript archive")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        make_extractor("inception", path=bad)


def test_no_download_code_in_metrics():
    from conftest import REPO

    src = REPO / "platform" / "multistep" / "metrics"
    text = "\n".join(p.read_text() for p in src.glob("*.py"))
    for needle in ("urllib", "requests", "http://", "https://", "hub.load", "download_url", "urlretrieve"):
        assert needle not in text


def test_identity_and_unknown_extractor():
    f = make_extractor("identity")(torch.ones(4, 2, 3))
    assert f.shape == (4, 6) and f.dtype == np.float64
    with pytest.raises(ValueError, match="unknown extractor"):
        make_extractor("clip")


def test_classifier_extractor_on_digits(tmp_path):
    from multistep.data.digits import load_digits

    t0 = time.perf_counter()
    ext = make_extractor("classifier", dataset="digits", cache_dir=tmp_path)
    train_s = time.perf_counter() - t0
    assert ext.trained and ext.accuracy > 0.9 and train_s < 30
    x, _ = load_digits()
    f = ext(x[:300])
    assert f.shape == (300, 64) and f.dtype == np.float64 and np.isfinite(f).all()
    np.testing.assert_array_equal(ext(x[:300].reshape(300, 64)), f)  # flattened input works too
    again = make_extractor("classifier", dataset="digits", cache_dir=tmp_path)  # same settings: read from disk
    assert not again.trained and again.key == ext.key
    np.testing.assert_array_equal(again(x[:300]), f)
    other = make_extractor("classifier", dataset="digits", cache_dir=tmp_path, epochs=1)  # new settings: new file
    assert other.trained and other.key["sha256"] != ext.key["sha256"]
    other.path.write_bytes(b"truncated")  # an unreadable cached model is retrained, not trusted
    assert make_extractor("classifier", dataset="digits", cache_dir=tmp_path, epochs=1).trained
    # The features see digits: two halves of the data are far closer than data and noise.
    real = frechet_distance(*gaussian_stats(ext(x[:800])), *gaussian_stats(ext(x[800:1600])))
    noise = frechet_distance(*gaussian_stats(ext(x[:800])), *gaussian_stats(ext(torch.rand(800, 1, 8, 8) * 2 - 1)))
    assert noise > 10 * real


def test_cls_err_counts_samples_off_their_conditioning_label():
    import torch

    from multistep.metrics.evaluate import EvalRef, LabelChecks, evaluate, metric_names

    ref = EvalRef(np.random.default_rng(0).normal(size=(4, 2)), torch.zeros(4, 2), None, {}, torch.tensor([0, 1, 1, 0]))
    names = metric_names(4, "classifier", labelled=True)
    assert names["cls_err"] == "cls_err_4" and "cls_err" not in metric_names(4, "classifier")
    out = evaluate(np.array([[1.0, 0], [0, 1], [1, 0], [1, 0]]), ref, names, checks=LabelChecks(lambda f: f.argmax(1)))
    assert out["cls_err_4"] == 0.25 and "ode_l2_4" not in out  # predicted 0, 1, 0, 0 against 0, 1, 1, 0


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_extractor_specs_rebuild_the_same_features(tmp_path):
    """What the sweep driver ships to trials (spec) rebuilds the same extractor there, without data or cache."""
    from multistep.data.digits import load_digits
    from multistep.metrics.extractors import from_spec

    x = load_digits(8)[0][:50]
    clf = make_extractor("classifier", dataset="digits", cache_dir=tmp_path, epochs=1)
    again = from_spec(clf.spec())
    np.testing.assert_array_equal(again(x), clf(x))
    np.testing.assert_array_equal(again.predict(again(x)), clf.model(x.reshape(50, -1)).argmax(1).numpy())
    path = tmp_path / "tiny-detector.pt"
    torch.jit.script(TinyDetector()).save(str(path))
    det = make_extractor("inception", path=path)
    np.testing.assert_array_equal(from_spec(det.spec())(x), det(x))


def test_fixed_prompts_cycle_over_the_noise_rows_in_memory_and_streamed():
    """eval.prompts: row i is conditioned on prompts[i mod len], in both reference builders (no labels drawn)."""
    import torch

    from multistep.data.kinds import ImageData
    from multistep.metrics.evaluate import make_eval_ref
    from multistep.metrics.streaming import make_stream_ref

    data = ImageData(torch.rand(20, 1, 4, 4) * 2 - 1, torch.arange(20) % 5, captions=[str(i) for i in range(5)])
    teacher = lambda z, t, y=None: 0 * z
    from multistep.diffusion.schedules import make_schedule

    sched = make_schedule("cosine")
    for make in (make_eval_ref, make_stream_ref):
        ref = make(data, teacher, sched, 7, 2, 0, "pixel", True, ode_samples=0, prompts=torch.tensor([4, 1, 3]))
        assert ref.labels.tolist() == [4, 1, 3, 4, 1, 3, 4], make.__name__
