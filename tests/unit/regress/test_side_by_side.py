"""regress/side_by_side.py (`multistep compare`): sweeps side by side: the values, the difference and the
combined-se verdict."""

import math

import pytest

from multistep.regress.side_by_side import side_by_side

M = "fd_identity_400"


def rows(points: dict) -> list[dict]:
    return [
        {"method": m, "student_steps": s, "nfe": s, "metric": M, "value": v, "se": se, "trial_id": "", "run_id": ""}
        for (m, s), (v, se) in points.items()
    ]


def test_differences_and_verdicts_against_the_first_sweep():
    a = rows({("mcd", 4): (0.040, 0.002), ("mcd", 8): (0.030, 0.002), ("pd", 4): (0.05, None)})
    b = rows({("mcd", 4): (0.030, 0.002), ("mcd", 8): (0.031, 0.002), ("pd", 4): (0.04, 0.001)})
    got = {(r["method"], r["steps"]): r for r in side_by_side({"A": a, "B": b}, M)}
    r4 = got[("mcd", 4)]
    assert r4["B - A"] == pytest.approx(-0.010) and r4["B combined se"] == pytest.approx(math.sqrt(2) * 0.002)
    assert r4["B verdict"] == "lower"  # 0.010 > 0.0028: a difference the se can see
    assert got[("mcd", 8)]["B verdict"] == "within se"  # 0.001 < 0.0028
    assert got[("pd", 4)]["B verdict"] == "no se"  # A measured none
    c = rows({("mcd", 4): (0.05, 0.001)})
    only = {(r["method"], r["steps"]): r for r in side_by_side({"A": a, "C": c}, M)}
    assert only[("mcd", 8)]["C verdict"] == "missing" and only[("mcd", 4)]["C verdict"] == "higher"
