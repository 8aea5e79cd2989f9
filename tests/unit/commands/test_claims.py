"""`multistep claims` (commands/claims.py): --merge decides sweeps of one budget, split to fit a time slot, as one
benchmark; the budget plot; budget changes paired only on the same rows."""

import numpy as np
import pytest

from multistep.commands.claims import _merged
from multistep.config import ConfigError
from unit.regress.test_claims import REF, point


def _sweep(name, students, ref, teacher_rows):
    points = {("teacher_ddim", 1): {-1: teacher_rows}, ("floor", 0): {-1: teacher_rows + 1}}
    points |= {key: {0: np.full_like(ref, v)} for key, v in students.items()}
    return name, f"run-{name}", (points, ref, {key: 10_000 for key in students})


def test_merge_pools_the_points_of_sweeps_on_the_same_rows():
    ref, t = np.zeros((6, 2)), np.ones((6, 2))
    a = _sweep("a", {("dmd", 1): 1.0, ("scd", 1): 2.0}, ref, t)
    b = _sweep("b", {("rcm", 1): 3.0, ("rcm", 2): 4.0}, ref.copy(), t.copy())
    name, sweep, (points, merged_ref, iterations) = _merged([a, b])
    assert name == "a + b" and sweep == "run-a" and merged_ref is ref
    assert set(points) == {("teacher_ddim", 1), ("floor", 0), ("dmd", 1), ("scd", 1), ("rcm", 1), ("rcm", 2)}
    assert points[("rcm", 2)][0][0, 0] == 4.0 and points[("teacher_ddim", 1)][-1] is t  # the first sweep's teacher
    assert set(iterations) == {("dmd", 1), ("scd", 1), ("rcm", 1), ("rcm", 2)}


@pytest.mark.parametrize(
    "b_students, b_ref, message",
    [
        ({("dmd", 1): 5.0}, np.zeros((6, 2)), "--merge: dmd S=1 is in both a and b"),
        ({("rcm", 1): 3.0}, np.zeros((5, 2)), "--merge: b was evaluated on other rows than a"),
        ({("rcm", 1): 3.0}, np.full((6, 2), 0.5), "--merge: b was evaluated on other rows than a"),
    ],
)
def test_merge_refuses_what_cannot_be_paired(b_students, b_ref, message):
    a = _sweep("a", {("dmd", 1): 1.0}, np.zeros((6, 2)), np.ones((6, 2)))
    with pytest.raises(ConfigError, match=message):
        _merged([a, _sweep("b", b_students, b_ref, np.ones((6, 2)))])


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


def test_the_claims_command_pairs_budgets_only_on_the_same_rows(tmp_path, capsys):
    from multistep.commands.claims import _budget_changes, _write
    from multistep.regress import claims

    a, b = {("mcd", 8): point(0.3)}, {("mcd", 8): point(0.1)}
    loaded = [(a, {("mcd", 8): 3000}, REF), (b, {("mcd", 8): 30000}, REF.copy())]
    [change] = _budget_changes(loaded, 20, claims)
    _write(str(tmp_path), [], [], None, [change])
    assert change.diff.hi < 0 and abs(change.diff.value + 0.16) < 0.05  # 0.3^2*2 -> 0.1^2*2, plus sampling noise
    assert f"| mcd | 8 | 3000 -> 30000 | {change.diff.value:+.4g} [" in (tmp_path / "claims.md").read_text()
    assert _budget_changes([loaded[0], (b, {("mcd", 8): 30000}, REF + 1)], 20, claims) == []
    assert "evaluated on different rows" in capsys.readouterr().out
