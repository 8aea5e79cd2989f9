"""`multistep claims`: the paper's six claims decided on benchmark sweeps (regress/claims.py), from MLflow."""

from __future__ import annotations

import argparse

HELP = """\
Decide the MCM paper's claims on one or more finished benchmark sweeps (e.g. sweeps/paper_gmm_3k.yaml, _10k,
_30k): every point's FD with its 95% interval, and for each claim the paired comparisons behind its verdict
(holds / fails / undecided / not measured). The sweeps must keep their evaluation rows (eval.keep_rows > 0):
a comparison resamples the same noise rows of both methods and pairs their training seeds. Labels read: mcd,
mct, tract, pd, mcd_fixed<N>, mcd_ddim. With several sweeps of one benchmark at different budgets it also pairs
each point with itself at the next longer budget (did more training help, with an interval). --out DIR writes
claims.md and claims.csv, and with several sweeps budget.png (FD against training iterations at S = 4 and 8).
Exit codes: 0 decided, 2 bad input."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser(
        "claims",
        help="the paper's six claims decided on benchmark sweeps (paired, with intervals)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("sweeps", nargs="+", metavar="RUN_OR_SWEEP", help="sweep run ids or sweep names")
    s.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples per interval (default 200)")
    s.add_argument(
        "--pair",
        action="append",
        default=[],
        metavar="A,B",
        help="also compare method A with method B (or a teacher curve, e.g. teacher_ddim) at every S both have, "
        "paired (repeatable; e.g. --pair scd,mcd --pair scd,teacher_ddim)",
    )
    s.add_argument(
        "--diversity-rows",
        type=int,
        default=5000,
        metavar="N",
        help="precision / recall (and, for mixture data, mode coverage) of every point and --pair on its first N kept "
        "rows, with paired intervals (default 5000; 0: off)",
    )
    s.add_argument(
        "--merge",
        action="store_true",
        help="decide the sweeps as one: sweeps of one budget split to fit a time slot (e.g. dmd_gmm_10k and "
        "rcm_gmm_10k), evaluated on the same rows, each method in one of them; --pair then pairs across them",
    )
    s.add_argument("--out", default=None, help="folder for claims.md, claims.csv, budget.png (default: print only)")
    s.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)")
    return s


def run(args) -> int:
    from multistep.config import ConfigError

    if args.n_boot < 20:
        raise ConfigError(f"--n-boot {args.n_boot}: an interval needs at least 20 resamples")
    if args.diversity_rows < 0 or 0 < args.diversity_rows < 2 * 3 + 1:
        raise ConfigError(f"--diversity-rows {args.diversity_rows}: 0 (off) or at least 7 rows (k-NN with k = 3)")
    from multistep.regress import claims
    from multistep.regress.baseline import sweep_run_or_latest
    from multistep.sweep.preflight import tracking_uri
    from multistep.tracking import eval_rows
    from multistep.tracking import mlflow_layout as ml

    pairs = [tuple(p.split(",")) for p in args.pair]
    if bad := [p for p, q in zip(args.pair, pairs) if len(q) != 2 or not all(q)]:
        raise ConfigError(f"--pair {bad[0]}: expected two method labels separated by a comma, e.g. scd,mcd")
    client = ml.client(tracking_uri(args.tracking_uri))
    loaded = [_load(client, a, sweep_run_or_latest(client, a), eval_rows) for a in args.sweeps]
    if args.merge:
        loaded = [_merged(loaded)]
    sections, table, budget = [], [], {}
    for name, sweep, (points, ref, iterations) in loaded:
        print(f"{name}: {len(points)} points, {len(ref)} rows each; {args.n_boot} paired resamples", flush=True)
        rows = claims.point_table(points, ref, args.n_boot)
        verdicts = claims.decide(points, ref, args.n_boot)
        text = claims.format_verdicts(verdicts)
        print(text + "\n")
        compared = [c for a, b in pairs for c in claims.compare_methods(points, ref, a, b, args.n_boot)]
        for c in compared:
            print(f"  {c.describe()}")
        diversity = _diversity(client, sweep, points, ref, pairs, args) if args.diversity_rows else ([], [])
        for r in rows:
            r |= {"sweep": name, "train_iterations": iterations.get((r["method"], r["student_steps"]))}
            budget.setdefault((r["method"], r["student_steps"]), []).append(r)
        table += rows
        sections.append((name, rows, verdicts, compared, diversity))
    loaded = [rows for _, _, rows in loaded]
    changes = _budget_changes(loaded, args.n_boot, claims) if len(loaded) > 1 else []
    if args.out:
        _write(args.out, table, sections, budget if len(loaded) > 1 else None, changes)
    return 0


def _load(client, arg: str, sweep, eval_rows) -> tuple[str, object, tuple]:
    """(the sweep's name as the tables show it, its run, (points, ref, iterations)); exit 2 without kept rows."""
    from multistep.config import ConfigError

    points, ref, iterations = eval_rows.load(client, sweep)
    if ref is None:
        raise ConfigError(
            f"RUN_OR_SWEEP {arg}: sweep run {sweep.info.run_id} kept no evaluation rows (set eval.keep_rows)"
        )
    name = sweep.data.tags.get("multistep.sweep_id", sweep.info.run_id)
    if sweep.info.status != "FINISHED":  # decided on what finished, and said so wherever the verdicts go
        name += f" (sweep {sweep.info.status}: only its finished trials count)"
    return name, sweep, (points, ref, iterations)


def _merged(loaded: list) -> tuple[str, object, tuple]:
    """Several sweeps as one: the same reference rows, every student point from one sweep only (the teacher's
    curve and the floor, the same rows in each, from the first)."""
    import numpy as np

    from multistep.config import ConfigError

    name, sweep, (points, ref, iterations) = loaded[0]
    points, iterations, names = dict(points), dict(iterations), [name]
    for other, _, (more, other_ref, more_iterations) in loaded[1:]:
        if other_ref.shape != ref.shape or not np.array_equal(other_ref, ref):
            raise ConfigError(f"--merge: {other} was evaluated on other rows than {name} (eval seed, data or size)")
        for key, by_seed in more.items():
            if key not in points:
                points[key] = by_seed
            elif key in iterations and key in more_iterations:
                raise ConfigError(
                    f"--merge: {key[0]} S={key[1]} is in both {names[0]} and {other}; merge sweeps whose methods differ"
                )
        iterations |= more_iterations
        names.append(other)
    return " + ".join(names), sweep, (points, ref, iterations)


def _mixture(client, sweep):
    """The sweep's Gaussian mixture when its data is one scored in identity features (mode coverage), else None."""
    import tempfile

    from multistep.config import load_sweep
    from multistep.metrics.diversity import scores_modes
    from multistep.tracking import find
    from multistep.train.build import make_data

    with tempfile.TemporaryDirectory() as d:
        files = find.artifact_names(client, sweep.info.run_id, (".yaml", ".yml"))
        if not files:
            return None
        tc = load_sweep(find.artifact_file(client, sweep.info.run_id, files[0], d)).trial_cfg(0)
        return make_data(tc.data) if scores_modes(tc) else None


def _diversity(client, sweep, points, ref, pairs, args) -> tuple[list, list]:
    """(every point's diversity with intervals, the --pair comparisons on each diversity metric), printed."""
    from multistep.regress import claims

    gmm = _mixture(client, sweep)
    n = min(args.diversity_rows, len(ref))
    print(f"diversity on the first {n} rows" + (" (+ mode coverage of the data's mixture)" if gmm else ""), flush=True)
    table = claims.diversity_table(points, ref, gmm, n, args.n_boot)
    compared = [c for a, b in pairs for c in claims.compare_diversity(points, ref, a, b, gmm, n, args.n_boot)]
    for by_metric in compared:
        for m, c in by_metric.items():
            print(f"  {m}: {c.describe()}")
    return table, compared


def _diversity_md(table: list[dict], compared: list[dict]) -> list[str]:
    if not table:
        return []
    metrics = [m for m in table[0] if m not in ("method", "student_steps")]
    md = [
        "",
        "| method | S | " + " | ".join(f"{m} (95% CI)" for m in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    md += [
        f"| {r['method']} | {r['student_steps'] or '-'} | " + " | ".join(r[m].describe() for m in metrics) + " |"
        for r in table
    ]
    if compared:
        md += ["", "| diversity comparison (paired, 95% CI) | outcome |", "|---|---|"]
        md += [
            f"| {m}: {c.diff.describe(*(f'{lb} S={k}' for lb, k in (c.a, c.b)))} | {c.outcome} |"
            for by_metric in compared
            for m, c in by_metric.items()
        ]
    return md


def _budget_changes(loaded: list, n_boot: int, claims) -> list:
    """Paired FD changes between budgets, when every sweep was evaluated on the same rows (same eval seed and
    reference); otherwise the sweeps cannot be paired and only their intervals compare."""
    import numpy as np

    ref = loaded[0][2]
    if any(r.shape != ref.shape or not np.array_equal(r, ref) for _, _, r in loaded[1:]):
        print(
            "budget: the sweeps were evaluated on different rows, so their changes are not paired (compare the intervals)"
        )
        return []
    print(f"budget: paired changes between sweeps ({n_boot} resamples)", flush=True)
    return claims.budget_changes([(p, it) for p, it, _ in loaded], ref, n_boot)


def _write(out_dir: str, table: list[dict], sections: list, budget: dict | None, changes: list) -> None:
    from pathlib import Path

    from multistep.atomic import write_with
    from multistep.sweep.results import write_csv

    out = Path(out_dir)

    md = []
    for name, rows, verdicts, compared, (div_rows, div_compared) in sections:
        md += [f"### {name}", "", "| method | S | seeds | FD (95% CI) |", "|---|---|---|---|"]
        md += [
            f"| {r['method']} | {r['student_steps'] or '-'} | {r['seeds']} | {r['fd']:.4g} [{r['lo']:.4g}, {r['hi']:.4g}] |"
            for r in rows
        ]
        md += ["", "| claim | verdict | comparisons |", "|---|---|---|"]
        md += [
            f"| ({v.number}) {v.claim} | **{v.verdict}** | {'<br>'.join(c.describe() for c in v.comparisons) or '-'} |"
            for v in verdicts
        ]
        if compared:
            md += ["", "| comparison (paired, 95% CI) | outcome |", "|---|---|"]
            md += [f"| {c.diff.describe(*(f'{lb} S={k}' for lb, k in (c.a, c.b)))} | {c.outcome} |" for c in compared]
        md += _diversity_md(div_rows, div_compared)
        md.append("")  # fmt: skip
    if changes:
        md += [
            "### budget: paired FD change to the next longer budget",
            "",
            "| method | S | iterations | change (95% CI) |",
        ]
        md += ["|---|---|---|---|"] + [
            f"| {c.point[0]} | {c.point[1]} | {c.iterations[0]} -> {c.iterations[1]} | {c.diff.value:+.4g} "
            f"[{c.diff.lo:.4g}, {c.diff.hi:.4g}]{'' if c.diff.detected else ' (no difference detected)'} |"
            for c in changes
        ]
        md.append("")
    write_csv(table, out / "claims.csv")
    write_with(out / "claims.md", lambda p: p.write_text("\n".join(md)))
    written = [out / "claims.csv", out / "claims.md"]
    if budget:
        written.append(_plot_budget(budget, out / "budget.png"))
    print("wrote " + ", ".join(str(p) for p in written))


def _plot_budget(budget: dict, path):
    """FD against training iterations, one line per method, at S = 4 and 8, with the intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    from multistep.atomic import write_with

    colour = {m: f"C{j % 10}" for j, m in enumerate(sorted({m for m, _ in budget}))}  # one colour per method
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, steps in zip(axes, (4, 8)):
        for (method, s), rows in sorted(budget.items()):
            pts = sorted((r["train_iterations"], r) for r in rows if s == steps and r["train_iterations"])
            if not pts:
                continue
            xs = [x for x, _ in pts]
            ys = [r["fd"] for _, r in pts]
            # an interval near the floor can sit above its point (docs/results.md): no negative bar
            err = [[max(0.0, r["fd"] - r["lo"]) for _, r in pts], [max(0.0, r["hi"] - r["fd"]) for _, r in pts]]
            ax.errorbar(xs, ys, yerr=err, marker="o", ms=3, capsize=2, color=colour[method], label=method)
        ax.set(xscale="log", yscale="log", xlabel="training iterations", title=f"S = {steps}")
        ax.set_xticks(
            sorted({r["train_iterations"] for rows in budget.values() for r in rows if r["train_iterations"]})
        )
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7)
    axes[0].set_ylabel("FD (mean over seeds, 95% CI)")
    fig.tight_layout()
    write_with(path, lambda p: fig.savefig(p, dpi=120))
    plt.close(fig)
    return path
