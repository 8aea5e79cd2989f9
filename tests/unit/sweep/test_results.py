"""sweep/results.py: the Pareto front of quality against NFE and against training cost."""

from multistep.sweep.results import pareto_points, plot_pareto, write_pareto

M = "fd_identity_400"


def row(method, steps, value, seconds):
    return {
        "method": method,
        "student_steps": steps,
        "nfe": steps,
        "metric": M,
        "value": value,
        "se": None,
        "wall_seconds": seconds,
    }


def test_the_front_keeps_only_points_no_other_beats_in_both(tmp_path):
    rows = [
        row("mcd", 1, 0.30, 10.0),
        row("mcd", 4, 0.05, 10.0),
        row("mcd", 8, 0.03, 10.0),
        row("pd", 4, 0.04, 30.0),  # better than mcd S=4 at equal NFE, but slower to train
        row("pd", 8, 0.05, 30.0),  # beaten by mcd S=8 on both counts
        row("mcd", 4, 0.06, 12.0),  # a worse trial of the same point: the best is kept
        row("teacher_ddim", 8, 0.01, None),  # teachers are not students
        {**row("mcd", 2, 0.1, 10.0), "metric": "swd_400"},  # another metric
    ]
    pts = {(p["method"], p["steps"]): p for p in pareto_points(rows, M)}
    assert set(pts) == {("mcd", 1), ("mcd", 4), ("mcd", 8), ("pd", 4), ("pd", 8)}
    assert pts[("mcd", 4)]["value"] == 0.05
    assert {k for k, p in pts.items() if p["front_nfe"]} == {("mcd", 1), ("pd", 4), ("mcd", 8)}
    assert {k for k, p in pts.items() if p["front_train"]} == {("mcd", 8)}  # at 10 s nothing beats 0.03
    assert write_pareto(list(pts.values()), tmp_path / "p.csv").read_text().count("\n") == 6
    assert plot_pareto(list(pts.values()), M, tmp_path / "p.png", "t").stat().st_size > 0


def test_a_2d_scatter_draws_samples_over_the_data(tmp_path):
    """save_scatter: a whole PNG of 2-D samples over the reference rows; the table's best precision is the highest."""
    import matplotlib.image as mpimg
    import numpy as np

    from multistep.sweep.results import best_by_steps, save_scatter

    rng = np.random.default_rng(0)
    path = save_scatter(rng.normal(size=(300, 2)), rng.normal(size=(300, 2)), tmp_path / "s.png", "dmd, 1 steps")
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and not list(tmp_path.glob("*.tmp*"))
    rows = [
        {"method": "dmd", "student_steps": 1, "metric": m, "value": v}
        for m, v in (("precision_5k", 0.2), ("precision_5k", 0.7), ("fd_identity_5k", 0.3), ("fd_identity_5k", 0.1))
    ]
    assert best_by_steps(rows, "precision_5k") == {"dmd": {1: 0.7}}
    assert best_by_steps(rows, "fd_identity_5k") == {"dmd": {1: 0.1}}


def test_sweep_plot_draws_standard_errors(tmp_path):
    """The metric-versus-steps plot draws the rows' bootstrap standard errors as error bars."""
    from multistep.sweep.results import plot

    rows = [{"method": "mcd", "student_steps": s, "metric": "fd", "value": 1 / s, "se": 0.2 / s} for s in (1, 2, 4)]
    bare = [{**r, "se": None} for r in rows]
    a, b = plot(rows, ["fd"], {}, tmp_path / "se.png", "t"), plot(bare, ["fd"], {}, tmp_path / "bare.png", "t")
    assert a.read_bytes() != b.read_bytes()
