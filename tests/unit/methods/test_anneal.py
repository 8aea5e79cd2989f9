"""Teacher-step annealing (methods/anneal.py, Appendix A.1-A.3): the paper's tables, and the MCM grids they give."""

import pytest

from multistep.methods.anneal import cm_sqrt, ict_doubling, loglinear
from multistep.methods.mcm import MCM
from unit.methods.test_mcm import COS

pytestmark = pytest.mark.usefixtures("one_thread")


A1 = {
    0: (64.00, [64, 32, 16, 8, 4]),
    25_000: (135.34, [135, 68, 34, 17, 8]),
    50_000: (286.22, [286, 143, 72, 36, 18]),
    75_000: (605.27, [605, 303, 151, 76, 38]),
    100_000: (1280.0, [1280, 640, 320, 160, 80]),
    150_000: (1280.0, [1280, 640, 320, 160, 80]),
    200_000: (1280.0, [1280, 640, 320, 160, 80]),
}


@pytest.mark.parametrize("i", sorted(A1))
def test_loglinear_table_a1(i):
    n_teacher, n_seg = A1[i]
    assert abs(loglinear(i, 200_000, 64, 1280, 0.5) - n_teacher) < 0.005
    for S, want in zip([1, 2, 4, 8, 16], n_seg):
        m = MCM(COS, S, anneal="loglinear", anneal_params={"start": 64, "end": 1280, "fraction": 0.5})
        assert m.grid(i, 200_000) == (want, S * want)  # N_seg = round(N / S), T = S N_seg
        assert MCM(COS, S).grid(i, 200_000) == (want, S * want)  # the defaults are the paper's
    assert loglinear(i // 100, 2_000) == pytest.approx(loglinear(i, 200_000), rel=1e-12)  # scaled to the run's length


A2 = {0: 2, 1_000: 8, 10_000: 23, 100_000: 72, 400_000: 143, 800_000: 201}

A3 = {
    0: 11,
    49_999: 11,
    50_000: 21,
    100_000: 41,
    150_000: 81,
    200_000: 161,
    250_000: 321,
    300_000: 641,
    349_999: 641,
    350_000: 1281,
    399_999: 1281,
    400_000: 1281,
}


@pytest.mark.parametrize("k", sorted(A2))
def test_cm_sqrt_table_a2(k):
    """N(k) boundaries = cm_sqrt + 1 (cm_sqrt returns the number of teacher steps)."""
    assert cm_sqrt(k, 800_000, s0=2, s1=200) + 1 == A2[k]


@pytest.mark.parametrize("k", sorted(A3))
def test_ict_doubling_table_a3(k):
    assert ict_doubling(k, 400_000, s0=10, s1=1280) + 1 == A3[k]
    m = MCM(COS, 4, anneal="ict_doubling", anneal_params={"s0": 10, "s1": 1280})
    assert m.grid(k, 400_000)[0] == round((A3[k] - 1) / 4)
