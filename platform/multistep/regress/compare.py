"""Regression check of a results table against a baseline table (pure: no Ray, no MLflow).

A point is one (method, student_steps, metric) of the results table; when several trials share a point
the best (lowest) value counts, as in the sweep's own curves. Every metric is a distance, so lower is
better and diff = current - baseline > 0 means worse. A point regresses when

    diff > tolerance = max(abs, rel * |baseline|, z * sqrt(se_baseline^2 + se_current^2))

where the last term is used only when the metric's tolerance sets `ci` (z = the two-sided normal quantile,
1.96 for ci 0.95) and both tables carry the point's bootstrap standard error (column se, eval.bootstrap > 0).
A point of the baseline that the current table lacks (a failed trial) or whose value is not finite also
regresses; a point only the current table has is "new" and never fails the check.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist

FAMILY_PREFIX = {
    "fd": ("fd_", "fid_"),
    "kid": ("kid_",),
    "swd": ("swd_",),
    "ode": ("ode_l2_",),
}  # family -> prefixes of its names
FAILING = ("REGRESSION", "MISSING")  # verdicts that fail the check


def metric_family(metric: str) -> str | None:
    """fd_identity_5k, fid_50k -> fd; kid_pixel_1k -> kid; swd_5k -> swd; ode_l2_5k -> ode; None for anything else."""
    return next((f for f, p in FAMILY_PREFIX.items() if metric.startswith(p)), None)


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def best_points(rows: list[dict]) -> dict[tuple[str, int, str], tuple[float, float]]:
    """{(method, steps, metric): (value, se)}: the lowest finite value per point, with its row's se (nan if none)."""
    out: dict[tuple[str, int, str], tuple[float, float]] = {}
    for r in rows:
        key = (str(r["method"]), int(r["student_steps"]), str(r["metric"]))
        v, se = _num(r.get("value")), _num(r.get("se"))
        old = out.get(key)
        if old is None or (math.isfinite(v) and not (math.isfinite(old[0]) and old[0] <= v)):
            out[key] = (v, se)
    return out


@dataclass
class Point:
    method: str
    steps: int
    metric: str
    baseline: float  # nan: only in the current table
    current: float  # nan: missing from the current table (or not finite)
    diff: float  # current - baseline (> 0 is worse)
    tolerance: float  # allowed worsening
    verdict: str  # ok, better, new, REGRESSION, MISSING
    basis: str  # which allowance set the tolerance: abs, rel, ci


def tolerance(baseline: float, se_b: float, se_c: float, tol) -> tuple[float, str]:
    """(allowed worsening, the allowance that set it) for one point; `tol` has abs, rel, ci (ToleranceCfg)."""
    allow = {"abs": tol.abs, "rel": tol.rel * abs(baseline)}
    if tol.ci is not None and math.isfinite(se_b) and math.isfinite(se_c):
        allow["ci"] = NormalDist().inv_cdf((1 + tol.ci) / 2) * math.hypot(se_b, se_c)
    basis = max(allow, key=allow.get)
    return allow[basis], basis


def compare(baseline_rows: list[dict], current_rows: list[dict], tolerances: dict, teacher: bool = True) -> list[Point]:
    """Every point of either table whose metric family has a tolerance (teacher rows only if `teacher`), sorted."""
    base, cur = best_points(baseline_rows), best_points(current_rows)
    points = []
    for key in sorted(set(base) | set(cur), key=lambda k: (k[0].startswith("teacher"), k[0], k[2], k[1])):
        method, steps, metric = key
        tol = tolerances.get(metric_family(metric))
        if tol is None or (not teacher and method.startswith("teacher")):
            continue
        b, se_b = base.get(key, (math.nan, math.nan))
        c, se_c = cur.get(key, (math.nan, math.nan))
        if key not in base or not math.isfinite(b):
            points.append(Point(method, steps, metric, b, c, math.nan, math.nan, "new", ""))
            continue
        allowed, basis = tolerance(b, se_b, se_c, tol)
        diff = c - b
        if key not in cur:
            verdict = "MISSING"
        elif not math.isfinite(c) or diff > allowed:
            verdict = "REGRESSION"
        elif diff < -allowed:
            verdict = "better"
        else:
            verdict = "ok"
        points.append(Point(method, steps, metric, b, c, diff, allowed, verdict, basis))
    return points


def failing(points: list[Point]) -> list[Point]:
    return [p for p in points if p.verdict in FAILING]


def describe(p: Point) -> str:
    """One point in words, e.g. `mcd S=2 fd_identity_2k: 0.0312 -> 0.0450 (+0.0138 > tolerance 0.0016)`."""
    where = f"{p.method} S={p.steps} {p.metric}"
    if p.verdict == "MISSING":
        return f"{where}: missing from the current run (baseline {p.baseline:.6g}; did its trial fail?)"
    return f"{where}: {p.baseline:.6g} -> {p.current:.6g} ({p.diff:+.4g} > tolerance {p.tolerance:.4g})"


def _f(v: float, fmt: str = ".6f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


HEADER = ["method", "steps", "metric", "baseline", "current", "difference", "tolerance", "verdict"]


def _cells(p: Point) -> list[str]:
    tol = f"{_f(p.tolerance)} ({p.basis})" if p.basis else "-"
    return [p.method, str(p.steps), p.metric, _f(p.baseline), _f(p.current), _f(p.diff, "+.6f"), tol, p.verdict]


def format_table(points: list[Point]) -> str:
    rows = [HEADER] + [_cells(p) for p in points]
    width = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    line = lambda r: "  ".join(c.ljust(w) if i < 3 or i == 7 else c.rjust(w) for i, (c, w) in enumerate(zip(r, width)))
    return "\n".join([line(rows[0]), "-" * len(line(rows[0]))] + [line(r) for r in rows[1:]])


def markdown(points: list[Point], facts: dict[str, str], plot_name: str | None) -> str:
    """The report: verdict, what was compared with what (facts: label -> value), the failing points, the table."""
    bad = failing(points)
    head = (
        f"FAIL: {len(bad)} of {len(points)} points regressed"
        if bad
        else f"PASS: none of {len(points)} points regressed"
    )
    out = [f"# Regression check: {facts.get('sweep', '')}", "", f"**{head}**", ""]
    out += [f"- {k}: {v}" for k, v in facts.items()]
    if bad:
        out += ["", "## Regressed points", ""] + [f"- {describe(p)}" for p in bad]
    if plot_name:
        out += ["", f"![baseline (dashed) and current (thick) curves]({plot_name})"]
    out += ["", "## All points", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += [
        "| " + " | ".join(c if i != 7 or c not in FAILING else f"**{c}**" for i, c in enumerate(_cells(p))) + " |"
        for p in points
    ]
    out += [
        "",
        "A point regresses when current - baseline > tolerance = max(abs, rel x |baseline|, "
        "z x sqrt(se_baseline^2 + se_current^2) when `ci` is set); lower is better for every metric; "
        "a point the current run lacks regresses (MISSING). See docs/regression.md.",
        "",
    ]
    return "\n".join(out)


def plot(points: list[Point], path: Path, title: str) -> Path:
    """Baseline (dashed, open markers) and current (thick, light) curve of every method, one panel per metric;
    regressed points circled in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({p.metric for p in points})
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(5.4 * max(1, len(metrics)), 4.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = sorted({p.method for p in points}, key=lambda m: (m.startswith("teacher"), m))
    for ax, metric in zip(axes[0], metrics):
        for k, method in enumerate(methods):
            pts = sorted((p for p in points if p.metric == metric and p.method == method), key=lambda p: p.steps)
            if not pts:
                continue
            col = colors[k % len(colors)]
            for attr, style in (
                ("current", dict(ls="-", lw=3, alpha=0.45, ms=8)),
                ("baseline", dict(ls="--", lw=1.2, mfc="none")),
            ):
                xy = [(p.steps, getattr(p, attr)) for p in pts if math.isfinite(getattr(p, attr))]
                if xy:  # current thick and light underneath, baseline dashed on top: both visible when equal
                    ax.plot(*zip(*xy), marker="o", color=col, label=f"{method} ({attr})", **style)
            for p in pts:
                if p.verdict in FAILING:
                    y = p.current if math.isfinite(p.current) else p.baseline
                    ax.plot([p.steps], [y], "o", ms=14, mfc="none", mec="red", mew=2)
                    ax.annotate(
                        p.verdict, (p.steps, y), textcoords="offset points", xytext=(6, 8), color="red", fontsize=8
                    )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sampling steps (NFE)")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return path


def read_table(path: str | Path) -> list[dict]:
    """Rows of a results table written by a sweep (results.parquet or results.csv)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    table = pacsv.read_csv(path) if path.suffix == ".csv" else pq.read_table(path)
    missing = {"method", "student_steps", "metric", "value"} - set(table.column_names)
    if missing:
        raise ValueError(f"not a results table: no column {', '.join(sorted(missing))}")
    return table.to_pylist()


def to_rows(points: list[Point]) -> list[dict]:
    return [asdict(p) for p in points]
