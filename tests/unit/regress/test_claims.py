"""regress/claims.py: the six claims decided from paired rows (shared noise rows z, each point z shifted)."""

import numpy as np

from multistep.regress.claims import decide, format_verdicts, point_table

RNG = np.random.default_rng(0)
REF = RNG.normal(size=(2000, 2))
Z = [RNG.normal(size=(2000, 2)) for _ in range(2)]  # each training seed's noise rows, shared by every method


def point(shift: float) -> dict:
    return {seed: z + shift for seed, z in enumerate(Z)}


def test_verdicts_follow_the_paired_intervals():
    points = {
        ("mcd", 1): point(1.0),
        ("mcd", 2): point(0.5),
        ("mcd", 4): point(0.2),
        ("mcd", 8): point(0.05),
        ("teacher_addim", 512): {-1: Z[0] + 0.05},
        ("tract", 4): point(0.4),  # MCD lower: as claimed; the other S are not measured
        ("mcd_fixed16", 4): point(0.2),  # the same as annealed: no difference, undecided
        ("mcd_fixed256", 4): point(0.6),
        ("mct", 1): point(0.5),  # CT below CD at S = 1: against claim 6
    }
    v = {x.number: x for x in decide(points, REF, n_boot=50)}
    assert v[1].verdict == "holds" and [c.outcome for c in v[1].comparisons] == ["as claimed"] * 3
    assert v[2].verdict == "holds"  # 8-step MCD within 10% of the teacher (the same shift, seed 0 identical)
    assert v[3].verdict == "undecided" and "pd S=1" in v[3].missing  # only TRACT at S = 4 measured
    assert [c.outcome for c in v[3].comparisons] == ["as claimed"]
    assert v[4].verdict == "undecided" and [c.outcome for c in v[4].comparisons] == ["undecided", "as claimed"]
    assert v[5].verdict == "not measured"
    assert v[6].verdict == "fails" and v[6].comparisons[0].diff.lo > 0
    text = format_verdicts(list(v.values()))
    assert "(6) CD <= CT at S = 1 [Table 1]: FAILS" in text and "mcd S=1 higher than mct S=1 by" in text


def test_a_far_teacher_fails_claim_two_and_points_carry_intervals():
    points = {("mcd", 8): point(0.5), ("teacher_addim", 64): {-1: Z[0]}}
    [two] = [x for x in decide(points, REF, n_boot=50) if x.number == 2]
    assert two.verdict == "fails" and "64-step" in two.claim
    rows = point_table(points, REF, n_boot=50)
    mcd = next(r for r in rows if r["method"] == "mcd")
    assert mcd["seeds"] == 2 and mcd["lo"] < mcd["fd"] < mcd["hi"]
    assert abs(mcd["fd"] - 0.5) < 0.1  # FD of a shifted copy: |shift|^2 over 2 dims = 0.5, plus sampling noise


def test_budget_plot_draws_each_method_over_iterations(tmp_path):
    from multistep.commands.claims import _plot_budget

    budget = {
        (m, s): [
            {"train_iterations": it, "fd": f, "lo": 0.8 * f, "hi": 1.2 * f} for it, f in ((3000, 0.02), (10000, 0.01))
        ]
        for m in ("mcd", "tract")
        for s in (4, 8)
    }
    path = _plot_budget(budget, tmp_path / "budget.png")
    assert path.stat().st_size > 10_000
