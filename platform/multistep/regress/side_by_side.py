"""`multistep compare`: several sweeps side by side (pure: tables in, table and plot out).

Each sweep's results table gives one value per (method, steps) of the chosen metric (the best over its trials, with
its standard error where the sweep measured one: KID's subsets, `eval.bootstrap`). Every later sweep is compared
with the first: the difference and whether it exceeds their combined standard error sqrt(se_a^2 + se_b^2)."""

from __future__ import annotations

import math
from pathlib import Path

from multistep.regress.compare import best_points


def default_metric(rows: list[dict]) -> str | None:
    """The first Frechet-distance metric of a table (fid_*, fd_*), else its first metric."""
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    return next((m for m in metrics if m.startswith(("fid_", "fd_"))), metrics[0] if metrics else None)


def side_by_side(tables: dict[str, list[dict]], metric: str) -> list[dict]:
    """One row per (method, steps) in any table: each sweep's value and se, and against the first sweep the
    difference (later - first; < 0 is better for a distance), the combined se and the verdict."""
    labels = list(tables)
    points = {
        label: {(m, s): v for (m, s, k), v in best_points(rows).items() if k == metric}
        for label, rows in tables.items()
    }
    keys = sorted({k for p in points.values() for k in p}, key=lambda k: (k[0].startswith("teacher"), k[0], k[1]))
    out = []
    for method, steps in keys:
        row = {"method": method, "steps": steps}
        base = points[labels[0]].get((method, steps), (math.nan, math.nan))
        for label in labels:
            v, se = points[label].get((method, steps), (math.nan, math.nan))
            row |= {f"{label}": v, f"{label} se": se}
            if label == labels[0]:
                continue
            diff = v - base[0]
            se_c = math.sqrt(base[1] ** 2 + se**2) if math.isfinite(base[1]) and math.isfinite(se) else math.nan
            if not math.isfinite(diff):
                verdict = "missing"
            elif not math.isfinite(se_c):
                verdict = "no se"
            else:
                verdict = ("lower" if diff < 0 else "higher") if abs(diff) > se_c else "within se"
            row |= {f"{label} - {labels[0]}": diff, f"{label} combined se": se_c, f"{label} verdict": verdict}
        out.append(row)
    return out


def format_table(rows: list[dict], labels: list[str]) -> str:
    def f(v) -> str:
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.5g}"

    head = f"{'method':<15}{'steps':>6}" + "".join(f"{lb[:14]:>16}" for lb in labels)
    head += "".join(f"{'diff ' + lb[:9]:>16}{'verdict':>11}" for lb in labels[1:])
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['method']:<15}{r['steps']:>6}" + "".join(f"{f(r[lb]):>16}" for lb in labels)
        line += "".join(f"{f(r[f'{lb} - {labels[0]}']):>16}{r[f'{lb} verdict']:>11}" for lb in labels[1:])
        lines.append(line)
    return "\n".join(lines)


def plot(tables: dict[str, list[dict]], metric: str, path: Path) -> Path:
    """The metric against steps, one line per (sweep, method), one colour per sweep; error bars where se exists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from multistep.atomic import write_with

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, (label, rows) in enumerate(tables.items()):
        pts = {(m, s): v for (m, s, k), v in best_points(rows).items() if k == metric}
        for j, method in enumerate(sorted({m for m, _ in pts})):
            xs = sorted(s for m, s in pts if m == method)
            ys = [pts[(method, s)][0] for s in xs]
            es = [pts[(method, s)][1] if math.isfinite(pts[(method, s)][1]) else 0.0 for s in xs]
            style = "--" if method.startswith("teacher") else ["-", "-.", ":"][j % 3]
            ax.errorbar(xs, ys, yerr=es, fmt=style, marker="o", ms=3, color=f"C{i}", label=f"{label}: {method}")
    ax.set_xscale("log", base=2)
    if not metric.startswith("kid"):
        ax.set_yscale("log")
    ax.set(xlabel="sampling steps", ylabel=metric, title=f"{metric}: {', '.join(tables)}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_with(path, lambda p: fig.savefig(p, dpi=120))
    plt.close(fig)
    return path
