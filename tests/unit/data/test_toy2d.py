"""The toy 2-D samplers (data/toy2d.py): seeded, shaped, and each one's geometry."""

from __future__ import annotations

import numpy as np
import pytest

from multistep.data import toy2d

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.mark.parametrize("name", list(toy2d.SAMPLERS))
def test_toy_samplers_seeded_shapes(name):
    a, b, c = toy2d.sample(name, 4000, 0), toy2d.sample(name, 4000, 0), toy2d.sample(name, 4000, 1)
    assert a.shape == (4000, 2) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a).max() < 3 and np.abs(a.mean(0)).max() < 0.15  # centred, in about [-2, 2]^2
    if name == "checkerboard":
        cells = np.floor(a).astype(int)
        assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all() and len({tuple(r) for r in cells}) == 8
    if name == "eight_gaussians":
        k = np.round(np.arctan2(a[:, 1], a[:, 0]) / (2 * np.pi / 8)) % 8
        centres = 2.0 * np.stack([np.cos(2 * np.pi * k / 8), np.sin(2 * np.pi * k / 8)], 1)
        assert np.abs(a - centres).max() < 0.6 and len(set(k)) == 8
    if name == "two_moons":
        assert np.percentile(np.linalg.norm(a, axis=1), 5) > 0.2  # a hole in the middle, unlike a Gaussian blob
    with pytest.raises(ValueError, match="unknown toy"):
        toy2d.sample("spiral", 3)
