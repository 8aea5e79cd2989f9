"""regress/compare.py: a results table against a baseline table, pure: identical tables pass, a point beyond its
tolerance regresses and is named, missing and non-finite points regress, new ones do not, and the statistical
tolerance uses both standard errors."""

import math

from multistep.config import ToleranceCfg
from multistep.regress.compare import compare, describe, failing

METRICS = ("fd_identity_400", "swd_400", "ode_l2_400")


def rows(scale: dict | None = None, se: float | None = None, drop=()) -> list[dict]:
    """A results table: mcd at S = 1, 2 and the teacher at 1, 2, 4; value = f(method, S, metric) x scale[point]."""
    scale = scale or {}
    out = []
    pts = [("mcd", s) for s in (1, 2)] + [("teacher_ddim", s) for s in (1, 2, 4)]
    for method, s in pts:
        for k, metric in enumerate(METRICS):
            if (method, s, metric) in drop:
                continue
            v = (0.5 + k) / (s + 1) * (2.0 if method.startswith("teacher") else 1.0)
            out.append(
                {
                    "method": method,
                    "student_steps": s,
                    "nfe": s,
                    "metric": metric,
                    "value": v * scale.get((method, s, metric), 1.0),
                    "run_id": "r",
                    "se": se,
                }
            )
    return out


TOL = {"fd": ToleranceCfg(abs=0.001, rel=0.05), "swd": ToleranceCfg(rel=0.05), "ode": ToleranceCfg(abs=0.001)}


# -- the comparison (pure) ----------------------------------------------------------------------------
def test_identical_tables_pass():
    pts = compare(rows(), rows(), TOL)
    assert len(pts) == 15 and not failing(pts)
    assert {p.verdict for p in pts} == {"ok"} and all(p.diff == 0 for p in pts)


def test_worse_point_beyond_tolerance_regresses_and_is_named():
    bad, mild, good = ("mcd", 2, "fd_identity_400"), ("mcd", 1, "fd_identity_400"), ("teacher_ddim", 4, "swd_400")
    pts = compare(rows(), rows({bad: 1.2, mild: 1.04, good: 0.8}), TOL)
    by = {(p.method, p.steps, p.metric): p for p in pts}
    assert [(p.method, p.steps, p.metric) for p in failing(pts)] == [bad]
    assert by[bad].verdict == "REGRESSION" and by[bad].basis == "rel"
    assert math.isclose(by[bad].tolerance, 0.05 * by[bad].baseline)
    assert by[mild].verdict == "ok"  # 4 % worse: inside rel 0.05
    assert by[good].verdict == "better"
    assert describe(by[bad]).startswith("mcd S=2 fd_identity_400: ")
    # teacher: false leaves the teacher's points out; a family without a tolerance is not compared
    only = compare(rows(), rows({("teacher_ddim", 1, "swd_400"): 3.0}), {"swd": ToleranceCfg()}, teacher=False)
    assert {p.metric for p in only} == {"swd_400"} and {p.method for p in only} == {"mcd"} and not failing(only)


def test_missing_and_nonfinite_points_regress_new_points_do_not():
    gone = ("mcd", 2, "swd_400")
    cur = rows(drop=[gone]) + [{"method": "mcd", "student_steps": 8, "metric": "swd_400", "value": 9.0}]
    cur[0]["value"] = float("nan")  # mcd S=1 fd: a NaN evaluation
    pts = compare(rows(), cur, TOL)
    verdicts = {(p.method, p.steps, p.metric): p.verdict for p in pts}
    assert verdicts[gone] == "MISSING" and verdicts[("mcd", 1, "fd_identity_400")] == "REGRESSION"
    assert verdicts[("mcd", 8, "swd_400")] == "new"
    assert len(failing(pts)) == 2


def test_statistical_tolerance_uses_both_standard_errors():
    key = ("mcd", 1, "fd_identity_400")
    tol = {"fd": ToleranceCfg(abs=0.001, rel=0.01, ci=0.95)}
    base_v = rows()[0]["value"]  # 0.25
    se = 0.01  # allowance 1.96 * sqrt(2) * 0.01 = 0.0277
    within = compare(rows(se=se), rows({key: (base_v + 0.02) / base_v}, se=se), tol)
    beyond = compare(rows(se=se), rows({key: (base_v + 0.04) / base_v}, se=se), tol)
    p_in = next(p for p in within if (p.method, p.steps, p.metric) == key)
    p_out = next(p for p in beyond if (p.method, p.steps, p.metric) == key)
    assert (
        p_in.verdict == "ok"
        and p_in.basis == "ci"
        and math.isclose(p_in.tolerance, 1.959964 * math.sqrt(2) * se, rel_tol=1e-5)
    )
    assert p_out.verdict == "REGRESSION"
    # without standard errors in a table the ci allowance is not available: abs / rel decide
    no_se = compare(rows(), rows({key: (base_v + 0.02) / base_v}, se=se), tol)
    assert next(p for p in no_se if (p.method, p.steps, p.metric) == key).verdict == "REGRESSION"
