"""`multistep claims --merge`: sweeps of one budget split to fit a time slot, decided as one benchmark."""

import numpy as np
import pytest

from multistep.commands.claims import _merged
from multistep.config import ConfigError


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
