"""Results table (Parquet + CSV) and the metric-versus-steps plot. Written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


HIGHER_IS_BETTER = ("precision", "recall", "clip_score")  # metric name prefixes whose best trial has the highest value
LINEAR_SCALE = (
    "kid",
    "cls_err",
    "precision",
    "recall",
    "modes_missed",
    "mode_tv",
    "clip_score",
)  # can be <= 0: linear axes


def best_by_steps(rows: list[dict], metric: str) -> dict[str, dict[int, float]]:
    """{method: {steps: best value}} for one metric: the lowest, or the highest for precision and recall."""
    pick, start = (max, -float("inf")) if metric.startswith(HIGHER_IS_BETTER) else (min, float("inf"))
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        if r["metric"] == metric and r["value"] is not None:
            cur = out.setdefault(r["method"], {})
            cur[r["student_steps"]] = pick(cur.get(r["student_steps"], start), r["value"])
    return out


def plot(rows: list[dict], metrics: list[str], floor: dict[str, float], path: Path, title: str) -> Path:
    """Metric versus steps (log steps; log values, linear for KID, cls_err and diversity), one line per method, teacher dashed,
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
        ax.set_yscale("linear" if metric.startswith(LINEAR_SCALE) else "log")
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


SCATTER_ROWS = 2000  # points of a 2-D sample scatter


def save_scatter(x, reference, path: Path, title: str) -> Path:
    """2-D samples over the data's own rows (grey): where a method drops or thins modes (DMD's mode seeking)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    if reference is not None:
        ref = np.asarray(reference)[:SCATTER_ROWS]
        ax.scatter(ref[:, 0], ref[:, 1], s=3, c="0.75", label="data")
    pts = (x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)).reshape(len(x), -1)[:SCATTER_ROWS]
    ax.scatter(pts[:, 0], pts[:, 1], s=3, c="C3", alpha=0.6, label="samples")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    _atomic(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path


def save_prompt_grid(columns: list[tuple[str, object]], prompts: list[str], path: Path) -> Path:
    """A prompts x points mosaic (PNG): row i holds the sample of prompt i (its noise row) at each point, e.g. a
    student and the teacher at each step count; images (N, C, H, W) in [-1, 1], the prompt as the row's title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, cols = len(prompts), len(columns)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols + 2.2, 1.3 * rows), squeeze=False)
    for j, (title, x) in enumerate(columns):
        x = np.clip((x.detach().cpu().double().numpy() + 1) / 2, 0, 1)
        axes[0, j].set_title(title, fontsize=7)
        for i in range(rows):
            img = x[i].transpose(1, 2, 0)
            axes[i, j].imshow(img[..., 0] if img.shape[2] == 1 else img[..., :3], cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
    for i, prompt in enumerate(prompts):
        axes[i, 0].set_ylabel(prompt if len(prompt) <= 28 else prompt[:27] + "...", fontsize=7, rotation=0, ha="right")
    fig.tight_layout()
    _atomic(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return path


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


def pareto_points(rows: list[dict], metric: str) -> list[dict]:
    """Per (method, steps) of the students: the best value of `metric` (and its se), the NFE and the training
    seconds of that trial, and whether the point is on the Pareto front (no other point at most as costly in NFE
    and in training time and better in the metric) of quality against NFE and against training cost."""
    best: dict[tuple[str, int], dict] = {}
    for r in rows:
        if r["metric"] != metric or r["value"] is None or str(r["method"]).startswith("teacher"):
            continue
        k = (r["method"], int(r["student_steps"]))
        if k not in best or r["value"] < best[k]["value"]:
            best[k] = {"method": r["method"], "steps": k[1], "nfe": int(r["nfe"]), "value": float(r["value"]),
                       "se": r.get("se"), "train_seconds": r.get("wall_seconds")}  # fmt: skip
    pts = sorted(best.values(), key=lambda p: (p["nfe"], p["value"]))

    def front(cost: str) -> set[int]:
        c = [float("inf") if p[cost] is None else p[cost] for p in pts]

        def dominates(j: int, i: int) -> bool:  # j at most as costly and as bad, and strictly better in one
            return (
                c[j] <= c[i]
                and pts[j]["value"] <= pts[i]["value"]
                and (c[j], pts[j]["value"]) != (c[i], pts[i]["value"])
            )

        return {i for i in range(len(pts)) if not any(dominates(j, i) for j in range(len(pts)))}

    nfe_front, time_front = front("nfe"), front("train_seconds")
    return [p | {"front_nfe": i in nfe_front, "front_train": i in time_front} for i, p in enumerate(pts)]


def plot_pareto(points: list[dict], metric: str, path: Path, title: str) -> Path:
    """Quality against NFE and against training seconds; front points joined, marked and labelled (method, S)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2))
    for ax, cost, flag, xlabel in (
        (axes[0], "nfe", "front_nfe", "network evaluations per sample (NFE)"),
        (axes[1], "train_seconds", "front_train", "training seconds (wall)"),
    ):
        usable = [p for p in points if p[cost] is not None]
        for i, method in enumerate(sorted({p["method"] for p in usable})):
            mine = [p for p in usable if p["method"] == method]
            ax.errorbar([p[cost] for p in mine], [p["value"] for p in mine], yerr=[p["se"] or 0 for p in mine],
                        fmt="o", ms=4, color=f"C{i}", label=method, alpha=0.6)  # fmt: skip
        front = sorted((p for p in usable if p[flag]), key=lambda p: p[cost])
        ax.plot([p[cost] for p in front], [p["value"] for p in front], "k-", lw=1, label="Pareto front")
        for p in front:
            ax.annotate(f"{p['method']} S={p['steps']}", (p[cost], p["value"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
        ax.set(xlabel=xlabel, ylabel=metric)
        xs = [p[cost] for p in usable if p[cost] > 0]
        if xs and max(xs) >= 10 * min(xs):  # a log axis only where costs span a decade or more
            ax.set_xscale("log")
        if cost == "nfe" and xs:
            ax.set_xticks(sorted(set(xs)))  # the NFE values themselves (1, 2, 4, 8, ...), not 3 x 10^0
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    _atomic(path, lambda p: fig.savefig(p, dpi=120))
    plt.close(fig)
    return path


def write_csv(rows: list[dict], path: Path, fields: list[str] | None = None) -> Path:
    import csv

    def write(p):
        with open(p, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields or (list(rows[0]) if rows else ["method"]))
            w.writeheader()
            w.writerows(rows)

    _atomic(path, write)
    return path


def write_pareto(points: list[dict], path: Path) -> Path:
    return write_csv(
        points, path, ["method", "steps", "nfe", "value", "se", "train_seconds", "front_nfe", "front_train"]
    )


def summary_table(trials: list[dict], metric: str) -> list[dict]:
    """One row per (method, student steps) from the trials' flat run metrics (final/<metric>, nfe, train_seconds,
    train_gpu_hours, params): how many trials, the best and the mean (std over trials: seeds, settings) of the
    final metric, the NFE, the mean training seconds, the GPU-hours in all, the parameter count."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for t in trials:
        if f"final/{metric}" in t:
            groups.setdefault((t["method"], int(t["student_steps"])), []).append(t)
    out = []
    for (method, steps), ts in sorted(groups.items()):
        vals = np.array([t[f"final/{metric}"] for t in ts])
        out.append(
            {"method": method, "student_steps": steps, "trials": len(ts), f"best {metric}": float(vals.min()),
             f"mean {metric}": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else None,
             "nfe": ts[0].get("nfe"), "train_seconds": float(np.mean([t.get("train_seconds", np.nan) for t in ts])),
             "train_gpu_hours": float(sum(t.get("train_gpu_hours", 0.0) for t in ts)), "params": ts[0].get("params")}
        )  # fmt: skip
    return out
