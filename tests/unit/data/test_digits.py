"""The digits dataset (data/digits.py): range, shape, upsampling and batches."""

from __future__ import annotations

import pytest
import torch

from multistep.data.digits import batches, load_digits

pytestmark = pytest.mark.usefixtures("one_thread_module")


def test_digits_range_shape_and_upsampling():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() == -1 and x.max() == 1 and set(y.tolist()) == set(range(10))
    x16, _ = load_digits(16, "nearest")
    assert x16.shape == (1797, 1, 16, 16) and torch.equal(x16[:, :, ::2, ::2], x)
    x32, _ = load_digits(32, "bilinear")
    assert x32.shape == (1797, 1, 32, 32) and x32.min() >= -1 and x32.max() <= 1
    assert abs(float(x32.mean() - x.mean())) < 0.02
    xb, yb = next(batches(x, y, 100, seed=0))
    assert xb.shape == (100, 1, 8, 8) and yb.shape == (100,)
    with pytest.raises(ValueError):
        load_digits(12)
