"""Results table (Parquet + CSV) and the metric-versus-steps plot. Written atomically."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from multistep.atomic import write_with

GRID = 8  # sample grids are GRID x GRID images
COLUMNS = [
    "method",
    "student_steps",
    "nfe",
    "metric",
    "value",
    "trial_id",
    "run_id",
    "anneal",
    "learning_rate",
    "train_iterations",
    "wall_seconds",
    "se",
]  # se: KID's own / bootstrap standard error, else null


def trial_cells(tc) -> dict:
    """The cells of a results row that come from the trial's config (the driver's and `multistep eval`'s rows)."""
    anneal = tc.method.anneal.model_dump() if tc.method.name == "mcm" else {}
    return {"anneal": " ".join(f"{k}={v}" for k, v in anneal.items()), "learning_rate": tc.train.learning_rate}


def _atomic(path: Path, write) -> None:
    write_with(path, write)


def write_table(rows: list[dict], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = {c: [r.get(c) for r in rows] for c in COLUMNS}
    table = pa.table(
        cols,
        schema=pa.schema(
            [
                ("method", pa.string()),
                ("student_steps", pa.int64()),
                ("nfe", pa.int64()),
                ("metric", pa.string()),
                ("value", pa.float64()),
                ("trial_id", pa.string()),
                ("run_id", pa.string()),
                ("anneal", pa.string()),
                ("learning_rate", pa.float64()),
                ("train_iterations", pa.int64()),
                ("wall_seconds", pa.float64()),
                ("se", pa.float64()),
            ]
        ),
    )
    paths = {"parquet": out_dir / "results.parquet", "csv": out_dir / "results.csv"}
    _atomic(paths["parquet"], lambda p: pq.write_table(table, p))
    _atomic(paths["csv"], lambda p: pacsv.write_csv(table, p))
    return paths


def best_by_steps(rows: list[dict], metric: str) -> dict[str, dict[int, float]]:
    """{method: {steps: best (lowest) value}} for one metric."""
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        if r["metric"] == metric and r["value"] is not None:
            cur = out.setdefault(r["method"], {})
            cur[r["student_steps"]] = min(cur.get(r["student_steps"], float("inf")), r["value"])
    return out


def plot(rows: list[dict], metrics: list[str], floor: dict[str, float], path: Path, title: str) -> Path:
    """Metric versus steps (log steps; log values, linear for KID and cls_err), one line per method, teacher dashed,
    error bars where rows carry `se` (KID's subset standard error, or the bootstrap's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        se = {(r["method"], r["student_steps"], r["value"]): r.get("se") for r in rows if r["metric"] == metric}
        for method, pts in sorted(best_by_steps(rows, metric).items()):
            xs = sorted(pts)
            teacher = method.startswith("teacher")
            yerr = [se.get((method, x, pts[x])) or 0.0 for x in xs]  # standard error (KID's, or eval.bootstrap's)
            ax.errorbar(
                xs,
                [pts[x] for x in xs],
                yerr=yerr if any(yerr) else None,
                fmt="--" if teacher else "-o",
                capsize=3,
                label=method,
                alpha=0.7 if teacher else 1.0,
            )
        if floor.get(metric):
            ax.axhline(floor[metric], color="grey", ls=":", label="two-sample floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("linear" if metric.startswith(("kid", "cls_err")) else "log")  # KID can be < 0, cls_err 0
        ax.set_xlabel("sampling steps (NFE)")
        ax.set_ylabel(metric)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _atomic(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path


def format_table(rows: list[dict], metrics: list[str]) -> str:
    """Pivot: one line per (method, steps), one column per metric (best over trials)."""
    keys = sorted(
        {(r["method"], r["student_steps"]) for r in rows}, key=lambda k: (k[0].startswith("teacher"), k[0], k[1])
    )
    best = {m: best_by_steps(rows, m) for m in metrics}
    head = f"{'method':<15}{'steps':>6}" + "".join(f"{m:>18}" for m in metrics)
    lines = [head, "-" * len(head)]
    for method, steps in keys:
        vals = [best[m].get(method, {}).get(steps) for m in metrics]
        lines.append(
            f"{method:<15}{steps:>6}" + "".join(f"{v:>18.5f}" if v is not None else f"{'-':>18}" for v in vals)
        )
    return "\n".join(lines)


def save_grid(x, path: Path, grid: int = GRID) -> Path:
    """A grid x grid mosaic of the first grid**2 samples (C, H, W in [-1, 1]) as a PNG (written whole, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.clip((x.detach().cpu().double().numpy() + 1) / 2, 0, 1)[: grid * grid]
    n, C, H, W = x.shape
    canvas = np.ones((grid * (H + 1) + 1, grid * (W + 1) + 1, C))
    for i in range(n):
        r, c = divmod(i, grid)
        canvas[1 + r * (H + 1) : 1 + r * (H + 1) + H, 1 + c * (W + 1) : 1 + c * (W + 1) + W] = x[i].transpose(1, 2, 0)
    scale = max(1, 256 // canvas.shape[0])  # small images upscaled (nearest) so the PNG is viewable
    canvas = canvas.repeat(scale, 0).repeat(scale, 1)
    _atomic(
        path,
        lambda p: plt.imsave(
            p,
            canvas[..., 0] if C == 1 else canvas[..., :3],
            cmap="gray" if C == 1 else None,
            vmin=0,
            vmax=1,
            format="png",
        ),
    )
    return path
