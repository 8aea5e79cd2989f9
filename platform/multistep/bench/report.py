"""The table `multistep bench` prints from its result dict."""

from __future__ import annotations


def fmt(v, spec=".3g") -> str:
    """A figure, or "-" when it was not measured."""
    return "-" if v is None else format(v, spec)


def _training(tr: dict) -> list[str]:
    lines = [
        f"\ntraining  batch {tr['batch']}, {tr['params_millions']:.3g}M params, {tr['forward_gflop_per_image']:.3g} GFLOP/img forward",
        f"  {'step':<10}{'ms/step':>10}{'img/s':>10}{'TFLOP/s':>10}{'MFU':>8}{'compile s':>11}{'peak MiB':>10}",
    ]
    for k in ("diffusion", "mcd", "scd"):
        r = tr[k]
        lines.append(
            f"  {k:<10}{r['step_s'] * 1e3:>10.2f}{r['img_per_s']:>10.1f}{fmt(r['tflops']):>10}"
            f"{fmt(r['mfu'] and 100 * r['mfu'], '.1f') + ('%' if r['mfu'] else ''):>8}{r['compile_s']:>11.2f}"
            f"{r['peak_memory_bytes'] / 2**20:>10.0f}"
        )
    lines.append(
        f"  MCD / diffusion step: {tr['mcd_over_diffusion']:.3f} (FLOP ideal {tr['flop_ideal_ratio']:.3f}, goal <= {tr['goal_ratio']})"
    )
    lines.append(
        f"  sCD / diffusion step: {tr['scd_over_diffusion']:.3f} (FLOP ideal {tr['scd_flop_ideal_ratio']:.3f}, "
        f"goal <= {tr['scd_goal_ratio']})"
    )
    return lines


def _sampling(sa: dict) -> list[str]:
    lines = [
        f"\nsampling  batch {sa['batch']}: teacher {sa['teacher_steps']} aDDIM steps {sa['teacher']['img_per_s']:.3g} img/s",
        f"  {'S':>3}{'img/s':>12}{'speedup':>10}{'goal':>8}{'of goal':>9}",
    ]
    for S, r in sa["student"].items():
        lines.append(
            f"  {S:>3}{r['img_per_s']:>12.4g}{r['speedup']:>10.1f}{r['goal']:>8.1f}{r['speedup_over_goal']:>9.2f}"
        )
    return lines


def _teacher(te: dict) -> list[str]:
    return [
        f"\nteacher  batch {te['batch']}: bare network {te['bare_s'] * 1e3:.2f} ms, through the adapter "
        f"{te['adapter_s'] * 1e3:.2f} ms, ratio {te['ratio']:.3f} (goal <= {te['goal_ratio']})"
    ]


def _evaluation(ev: dict) -> list[str]:
    return [
        f"\nevaluation  d = {ev['d']}: frechet_distance {ev['frechet_s']:.3f} s (median of {len(ev['frechet_s_all'])}), sqrtm formula {ev['sqrtm_s']:.3f} s, "
        f"speedup {ev['speedup']:.1f}x (goal {ev['goal_speedup']:.0f}x), relative difference {ev['relative_difference']:.2e}"
    ]


def _memory(me: dict) -> list[str]:
    lines = [
        f"\nmemory  {'x'.join(map(str, me['shape']))} images, {me['dim']}-d features (goal < {me['goal_bytes'] / 2**30:.0f} GiB at 50k, streamed)"
    ]
    for r in me["runs"]:
        lines.append(
            f"  {r['mode']:<7} N = {r['n']:>6}: "
            + (
                f"peak {r['peak_bytes'] / 2**30:.2f} GiB, {r['seconds']:.1f} s"
                if "error" not in r
                else f"failed: {r['error']}"
            )
        )
    return lines


def _data(da: dict) -> list[str]:
    w = da["wait_ms_per_batch"]
    return [
        f"\ndata  Parquet, batch {da['batch']} x {da['image']}, beside a {da['step_ms']:g} ms step: the step waits "
        + ", ".join(f"{v:.2f} ms/batch with prefetch {k}" for k, v in w.items())
    ]


def _orchestration(orc: dict) -> list[str]:
    lines = [
        f"\norchestration (runner {orc['runner']})  4 trials of {orc['iterations']} iterations: sweep {orc['sweep_s']:.1f} s, plain "
        f"{orc['plain_s']:.1f} s, ratio {orc['ratio']:.2f}; per trial overhead {orc['overhead_per_trial_s']:.1f} s "
        f"(load average {', '.join(f'{k} {v:.1f}' for k, v in orc['load_average_1min'].items())})"
    ]
    lines.append(
        f"  fixed cost per trial (median, all but the loop): {orc['fixed_per_trial_median_s']:.1f} s; "
        f"implied ratio for 30 s loops {orc['estimated_ratio_30s_trials']:.2f} (goal <= {orc['goal_ratio']})"
    )
    lines.append(f"  processes (actors) the trials started: {orc['ray_actors']}")
    lines.append(f"  {'before the first trial (Ray start, MLflow, assets)':<52}{orc['before_first_trial_s']:>8.2f} s")
    lines += [f"  {'per trial: ' + k:<52}{v:>8.2f} s" for k, v in orc["breakdown_mean_s"].items()]
    lines.append(f"  {'after the last trial (results, plot, artifacts)':<52}{orc['after_last_trial_s']:>8.2f} s")
    lines += [f"  {'fresh process, ' + k:<52}{v:>8.2f} s" for k, v in orc["import_s"].items()]
    return lines


PARTS = {
    "training": _training,
    "sampling": _sampling,
    "teacher": _teacher,
    "evaluation": _evaluation,
    "memory": _memory,
    "data": _data,
    "orchestration": _orchestration,
}  # the result's parts, in the order printed


def table(res: dict) -> str:
    lines = [
        f"multistep bench: size {res['config']['size']} on {res['machine'].get('gpu') or res['machine']['cpu']} "
        f"({res['config']['precision']}, compile {res['config']['compile']}, channels_last {res['config']['channels_last']})"
    ]
    for name, lines_of in PARTS.items():
        if res.get(name):
            lines += lines_of(res[name])
    return "\n".join(lines)
