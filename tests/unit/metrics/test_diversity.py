"""Diversity metrics (metrics/diversity.py) on hand-made point sets: identical sets, a set missing modes, coverage
against a mixture with known weights, and paired intervals that see a dropped mode."""

import numpy as np
import pytest
import torch

from multistep.data.gmm import GaussianMixture
from multistep.metrics.diversity import (
    coverage,
    diversity,
    diversity_intervals,
    diversity_names,
    knn_radii,
    manifold_hits,
    mixture_assign,
    paired_diversity,
)

MEANS = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]], dtype=torch.float64)


def _clusters(counts, seed=0) -> np.ndarray:
    """Rows around the four far-apart means (std 0.5), counts[m] rows of mode m."""
    rng = np.random.default_rng(seed)
    return np.concatenate([MEANS[m].numpy() + 0.5 * rng.standard_normal((c, 2)) for m, c in enumerate(counts)])


def test_identical_sets_have_precision_and_recall_one():
    x = _clusters([50, 50, 50, 50])
    prec, rec = manifold_hits(x, x)
    assert prec.mean() == 1.0 and rec.mean() == 1.0


@pytest.mark.parametrize("counts, kept, recall", [([50, 50, 50, 50], [0, 1], 0.5), ([80, 40, 40, 40], [0, 1, 2], 0.8)])
def test_a_set_missing_modes_loses_their_share_of_recall(counts, kept, recall):
    """Generated rows = the real rows of some modes: precision 1, recall = the real rows' share in those modes."""
    real = _clusters(counts)
    edges = np.cumsum([0, *counts])
    fake = np.concatenate([real[edges[m] : edges[m + 1]] for m in kept])
    prec, rec = manifold_hits(fake, real)
    assert prec.mean() == 1.0 and rec.mean() == pytest.approx(recall, abs=1e-12)
    prec, rec = manifold_hits(real, fake)  # the other way round: precision is what drops
    assert prec.mean() == pytest.approx(recall, abs=1e-12) and rec.mean() == 1.0


def test_knn_radius_is_the_kth_other_row():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 6.0]


def _mixture():
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    return GaussianMixture(MEANS[:3].clone(), torch.full((3, 2), 0.5, dtype=torch.float64), w, (2,))


def test_mode_coverage_against_known_weights():
    gmm = _mixture()
    assert mixture_assign(gmm, MEANS[:3]).tolist() == [0, 1, 2]
    x = gmm.sample(20000, torch.Generator().manual_seed(0))
    cov = coverage(mixture_assign(gmm, x), gmm.weights.numpy())
    assert cov["modes_missed"] == 0 and cov["mode_tv"] < 0.01
    only_first = gmm.means[0] + 0.5 * torch.randn(
        1000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    cov = coverage(mixture_assign(gmm, only_first), gmm.weights.numpy())
    assert cov == {"modes_missed": 2.0, "mode_tv": pytest.approx(0.5)}  # 0.5 (|1 - 0.5| + 0.3 + 0.2)
    names = diversity_names(1000, mixture=True)
    values = diversity(only_first.numpy(), gmm.sample(1000, torch.Generator().manual_seed(2)).numpy(), names, gmm)
    assert values["modes_missed_1k"] == 2.0 and values["recall_1k"] < 0.6 and values["precision_1k"] > 0.9


def test_paired_intervals_see_a_dropped_mode_and_not_a_reseeded_twin():
    gmm = _mixture()
    ref = gmm.sample(1500, torch.Generator().manual_seed(3)).numpy()
    full = [gmm.sample(1500, torch.Generator().manual_seed(10 + k)).numpy() for k in range(2)]
    twin = [gmm.sample(1500, torch.Generator().manual_seed(20 + k)).numpy() for k in range(2)]
    dropped = [
        np.where(mixture_assign(gmm, x)[:, None] == 2, x - np.array([0.0, 10.0]), x)  # mode 2 moved onto mode 0
        for x in full
    ]
    d = paired_diversity(dropped, full, ref, gmm, n_boot=50)
    assert d["recall"].detected and d["recall"].value < -0.1
    assert d["modes_missed"].value == 1.0 and d["mode_tv"].detected
    same = paired_diversity(twin, full, ref, gmm, n_boot=50)
    assert not same["recall"].detected and not same["modes_missed"].detected
    est = diversity_intervals(full, ref, gmm, n_boot=50)
    assert est["recall"].lo <= est["recall"].value <= est["recall"].hi and est["recall"].value > 0.9
