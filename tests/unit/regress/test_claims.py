"""regress/claims.py: the six claims decided from paired rows (shared noise rows z, each point z shifted)."""

import numpy as np

from multistep.regress.claims import budget_changes, compare_methods, decide, format_verdicts, point_table

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


def test_two_methods_compared_at_every_shared_step_count():
    """--pair scd,mcd: one paired comparison per S both measured, saying which is lower; a teacher curve pairs its
    one set of rows with every seed."""
    points = {
        ("scd", 1): point(0.2),
        ("scd", 2): point(0.3),
        ("scd", 4): point(0.1),  # no mcd S = 4: not compared
        ("mcd", 1): point(0.6),
        ("mcd", 2): point(0.3),
        ("teacher_ddim", 2): {-1: Z[0] + 0.8},
    }
    got = compare_methods(points, REF, "scd", "mcd", n_boot=50)
    assert [(c.a, c.b) for c in got] == [(("scd", 1), ("mcd", 1)), (("scd", 2), ("mcd", 2))]
    assert [c.outcome for c in got] == ["scd lower", "no difference"]
    assert got[0].diff.hi < 0 and got[1].diff.lo <= 0 <= got[1].diff.hi
    (teacher,) = compare_methods(points, REF, "scd", "teacher_ddim", n_boot=50)
    assert teacher.outcome == "scd lower" and teacher.b == ("teacher_ddim", 2)
    assert compare_methods(points, REF, "mcd", "scd", n_boot=50)[0].outcome == "scd lower"


def test_a_far_teacher_fails_claim_two_and_points_carry_intervals():
    points = {("mcd", 8): point(0.5), ("teacher_addim", 64): {-1: Z[0]}}
    [two] = [x for x in decide(points, REF, n_boot=50) if x.number == 2]
    assert two.verdict == "fails" and "64-step" in two.claim
    rows = point_table(points, REF, n_boot=50)
    mcd = next(r for r in rows if r["method"] == "mcd")
    assert mcd["seeds"] == 2 and mcd["lo"] < mcd["fd"] < mcd["hi"]
    assert abs(mcd["fd"] - 0.5) < 0.1  # FD of a shifted copy: |shift|^2 over 2 dims = 0.5, plus sampling noise


def test_budget_changes_pair_each_point_with_itself_at_the_next_budget():
    short = {("mcd", 4): point(0.4), ("tract", 4): point(0.2), ("teacher_addim", 512): {-1: Z[0]}}
    long = {("mcd", 4): point(0.1), ("tract", 4): point(0.2), ("pd", 4): point(0.1), ("teacher_addim", 512): {-1: Z[0]}}
    its = lambda pts, n: {k: n for k in pts if not k[0].startswith("teacher")}
    changes = budget_changes([(long, its(long, 10000)), (short, its(short, 3000))], REF, n_boot=50)
    by = {c.point: c for c in changes}
    assert set(by) == {("mcd", 4), ("tract", 4)}  # pd has one budget, the teacher is the same everywhere
    mcd, tract = by[("mcd", 4)], by[("tract", 4)]
    assert mcd.iterations == (3000, 10000) and mcd.diff.hi < 0  # 0.4^2*2 -> 0.1^2*2: FD fell by ~0.3
    assert abs(mcd.diff.value + 0.3) < 0.05
    assert tract.diff.value == 0 and not tract.diff.detected  # identical rows: no difference, exactly
    assert mcd.describe().startswith("mcd S=4 at 10000 lower than at 3000 iterations by")


def test_diversity_of_each_point_and_of_a_pair():
    """A point squeezed to a quarter of the spread loses recall, not precision; --pair sees it, paired per S."""
    from multistep.regress.claims import compare_diversity, diversity_table

    points = {("wide", 1): point(0.0), ("narrow", 1): {k: z * 0.25 for k, z in point(0.0).items()}}
    table = {r["method"]: r for r in diversity_table(points, REF, rows=1000, n_boot=50)}
    assert table["narrow"]["recall"].value < 0.5 < table["wide"]["recall"].value
    assert table["narrow"]["precision"].value > 0.9 and "modes_missed" not in table["wide"]  # no mixture given
    (by_metric,) = compare_diversity(points, REF, "narrow", "wide", rows=1000, n_boot=50)
    assert by_metric["recall"].outcome == "narrow lower" and by_metric["recall"].diff.hi < 0
