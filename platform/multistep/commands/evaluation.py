"""`multistep eval CHECKPOINT`: metric-versus-steps of one teacher or student checkpoint, here, without Ray.

A teacher checkpoint (teacher.pt of `multistep teacher`) brings its net, schedule and data line: its DDIM
and aDDIM are evaluated at each --steps on fixed noise against a sample of that data (Frechet and sliced
Wasserstein distances; with the teacher run's eval seed and sample count the DDIM numbers are the ones the
teacher run logged). A student checkpoint (state.pt in a sweep trial's Ray checkpoint folder) records its
trial config; --config overrides it (older checkpoints need it): a trial config, or the sweep file (the
trial is then picked by --trial or by the `trial-NNN` folder of the checkpoint). Its EMA weights are sampled with the method's own sampler(s)
on the reference the sweep used (same data sample, same noise, same teacher ODE solutions), so the numbers
reproduce the trial's final metrics. Writes results.parquet/.csv, metric_vs_steps.png, eval.json and, with
--grid, an 8x8 sample grid per (method, steps) for image data.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

from multistep.config import ConfigError
from multistep.metrics.reference import load_for
from multistep.train.student import load_student

log = logging.getLogger(__name__)


def parse_steps(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        steps = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        steps = []
    if not steps or min(steps) < 1:
        raise ConfigError(f"--steps: expected positive integers separated by commas (e.g. 1,2,4,8), got {text!r}")
    return sorted(set(steps))


def make_reference(args) -> int:
    """`multistep eval --make-reference DATA --out REF.npz`: mu and sigma (float64, and with --features the features)
    of every row of Parquet shards DATA in the --extractor's features (default pixel; inception with --inception),
    accumulated batch by batch."""
    import numpy as np
    import torch
    from pydantic import ValidationError

    from multistep.config import DataCfg, EvalCfg, TrialCfg, describe, extractor_error
    from multistep.metrics import reference
    from multistep.metrics.stats import StatsAccumulator

    if not args.out or not args.out.endswith(".npz"):
        raise ConfigError("--out: --make-reference writes an .npz file, e.g. --out ref.npz")
    try:
        d = DataCfg(kind="parquet", path=args.make_reference)
        ev = EvalCfg.model_validate({k: v for k, v in eval_opts(args).items() if k != "reference"})
    except ValidationError as e:
        raise ConfigError(f"--make-reference: {describe(e)}") from None
    if err := extractor_error(d, ev):
        raise ConfigError(f"--extractor: {err}")
    from multistep.data.parquet import list_shards, read_shard

    tc = TrialCfg.model_construct(data=d, eval=ev)
    first = read_shard(list_shards(d.path)[0])[0]
    from multistep.data import ImageData

    space, features, _, key = feature_setup(tc, ImageData(torch.from_numpy(first[:1].transpose(0, 3, 1, 2).copy())))
    acc, kept = StatsAccumulator(), []
    for p in list_shards(d.path):
        x = torch.from_numpy(read_shard(p)[0].transpose(0, 3, 1, 2).copy()).double().div_(127.5).sub_(1.0)
        for i in range(0, len(x), 512):
            f = (
                x[i : i + 512].reshape(len(x[i : i + 512]), -1).numpy()
                if features is None
                else features(x[i : i + 512])
            )
            acc.update(f)
            if args.features:
                kept.append(np.asarray(f, np.float64))
        log.info(f"{p.name}: {acc.n} rows")
    mu, sigma = acc.mean_cov()
    reference.write(args.out, mu, sigma, np.concatenate(kept) if kept else None)
    log.info(f"reference of {acc.n} rows in {space} features ({key}) -> {args.out}")
    return 0


def _check_args(args) -> None:
    if args.samples is not None and args.samples < 2:
        raise ConfigError(f"--samples: need at least 2 samples for a covariance, got {args.samples}")
    if args.trial is not None and args.trial < 0:
        raise ConfigError(f"--trial: expected an index >= 0, got {args.trial}")
    if args.inception and not Path(args.inception).expanduser().is_file():
        raise ConfigError(f"--inception: file not found: {args.inception}")


def _resolve_file(path: str) -> Path:
    """The checkpoint file: the path itself, or state.pt / teacher.pt inside a folder."""
    p = Path(path)
    if p.is_dir():
        for name in ("state.pt", "teacher.pt"):
            if (p / name).is_file():
                return p / name
        raise ConfigError(f"{p}: folder holds no state.pt or teacher.pt")
    if not p.is_file():
        raise ConfigError(f"{p}: checkpoint not found")
    return p


def eval_teacher(p: Path, steps: list[int], samples: int, seed: int, eval_opts: dict | None = None):
    """(rows, floor, metric names, shape, {(method, steps): samples}) of a teacher's DDIM and aDDIM."""
    from pydantic import ValidationError

    from multistep.config import DataCfg, EvalCfg, ScheduleCfg, TrialCfg, describe, extractor_error
    from multistep.diffusion.schedules import make_schedule
    from multistep.metrics.evaluate import fixed_draws, metric_rows, teacher_points
    from multistep.nets.mlp import VDenoiser
    from multistep.sweep.results import GRID
    from multistep.train.build import make_data
    from multistep.train.teacher import load_teacher

    try:
        net, info = load_teacher(p)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    meta = info["meta"]
    if not isinstance(meta.get("data"), dict):
        raise ConfigError(
            f"{p}: the checkpoint records no data line (meta.data); it predates `multistep teacher`'s format"
        )
    try:
        dcfg = DataCfg.model_validate(meta["data"])
        sc = ScheduleCfg.model_validate(meta.get("schedule") or {})
    except ValidationError as e:
        raise ConfigError(f"{p}: meta.{describe(e)}") from None
    if not meta.get("schedule"):
        log.warning(f"note: {p} records no schedule; using the default ({sc.name})")
    data = make_data(dcfg)
    if meta.get("shape") is not None and tuple(meta["shape"]) != tuple(data.shape):
        raise ConfigError(
            f"{p}: trained on samples of shape {tuple(meta['shape'])}, but its data ({dcfg.label}) has shape {tuple(data.shape)}"
        )
    sched = make_schedule(sc.name, **sc.params)
    f = VDenoiser(net, sched)
    try:
        ev = EvalCfg.model_validate(eval_opts or {})
    except ValidationError as e:
        raise ConfigError(f"--extractor/--inception: {describe(e)}") from None
    if err := extractor_error(dcfg, ev):
        raise ConfigError(f"--extractor: {err}")
    from multistep.sweep.preflight import check_eval

    check_eval(TrialCfg.model_construct(data=dcfg, eval=ev), tuple(data.shape))  # before any sampling
    space, features, _, key = feature_setup(
        TrialCfg.model_construct(data=dcfg, eval=ev), data
    )  # unconditional: no cls_err
    stats = load_for(ev)
    noise, names, dist, floor = fixed_draws(
        data, samples, seed, space, features, ev.kid_subsets, stats
    )  # + KID: the teacher run's curve
    rows, kept = [], {}
    for label, n, x, nfe in teacher_points(f, sched, data, noise, steps, seed=seed):  # as the sweeps' teacher curve
        kept[(label, n)] = x[: GRID**2]
        rows += [{"method": label, "student_steps": n, "nfe": nfe} | r for r in metric_rows(dist(x), names)]
    info = {
        "kind": "teacher",
        "data": dcfg.label,
        "teacher_name": meta.get("name"),
        "teacher_run_id": meta.get("run_id"),
        "extractor": key,
        "reference_sha256": stats and stats.sha256,
    }
    return rows, floor, [m for k, m in names.items() if k != "ode" and m in floor], tuple(data.shape), kept, info


# -- student (trial) checkpoints --------------------------------------------------------------------
def _reference(tc, c, ev, seed: int, space: str, features):
    """The evaluation reference a sweep builds for this trial (noise, labels or fixed prompts, teacher ODE, data)."""
    from multistep.metrics.evaluator import reference_builder
    from multistep.sweep.assets import prompt_ids
    from multistep.train.build import uses_labels

    labelled = uses_labels(c.teacher, getattr(c.data, "labels", None) is not None)
    make = reference_builder(ev)
    args = (c.data, c.teacher, c.schedule, ev.samples, ev.ode_steps, seed, space, labelled, features)
    prompts = prompt_ids(tc) if labelled else None
    return make(*args, ev.kid_subsets, ev.ode_rows, load_for(tc.eval), prompts=prompts)


def _student_evaluations(tc, method, ema, schedule, steps, with_teacher: bool):
    """The trial's method.evaluations, plus an MCM student at the other --steps (rows <label>_S<S>); a flow map
    at every --steps."""
    from multistep.diffusion.samplers import mcm_sample
    from multistep.methods.base import conditioned
    from multistep.train.build import method_label

    S, label, extra = tc.method.student_steps, method_label(tc), []
    if steps:
        if tc.method.name == "mcm":  # Algorithm 2 is defined at any step count; off its training grid: <label>_S<S>
            extra = [n for n in steps if n != S]
        elif hasattr(method, "eval_steps"):  # a flow map: one student for every step count, its own curve
            method.eval_steps = tuple(steps)
        elif not with_teacher:
            log.info(
                f"note: {tc.method.name} samples only at the steps it was trained for; --steps is used by --with-teacher only"
            )

    def evaluations(y, seed):
        return method.evaluations(ema, y, seed) + [
            (f"{label}_S{S}", n, lambda noise, n=n: mcm_sample(conditioned(ema, y), schedule, noise, n)) for n in extra
        ]

    return evaluations


def eval_student(p: Path, blob: dict, args, steps: list[int] | None):
    from multistep.metrics.diversity import diversity_rows
    from multistep.metrics.evaluate import metric_rows, repeated_teacher_curve
    from multistep.metrics.evaluator import final_points, first_rows, teacher_curve_of
    from multistep.sweep.assets import teacher_diversity
    from multistep.sweep.preflight import check_eval
    from multistep.sweep.results import GRID, trial_cells
    from multistep.sweep.worker import trial_diversity
    from multistep.train.build import method_label

    tc, trial, args.config, c, method, state = load_student(p, blob, args.config, args.trial, eval_opts(args))
    check_eval(tc, tuple(c.data.shape))  # detector and reference statistics, before any sampling
    samples = args.samples or tc.eval.samples
    seed = tc.eval.seed if args.seed is None else args.seed
    log.info(f"evaluation reference: {samples} samples, seed {seed}, {tc.eval.ode_steps}-step teacher ODE")
    space, features, checks, key = feature_setup(tc, c.data)
    ev = tc.eval.model_copy(update={"samples": samples, "bootstrap": 0})
    if ev.streaming:
        log.info("streaming evaluation (eval.stream; memory bounded in the sample count)")
    ref = _reference(tc, c, ev, seed, space, features)  # as in sweeps
    n_div = diversity_rows(ev)  # precision / recall (/ mode coverage) against the first rows, as in sweeps
    div_ref = first_rows(c, ref, ev, features, n_div) if n_div else None
    as_run = tc.model_copy(update={"eval": ev})  # the trial config with this evaluation's sample count
    div_names, diversity = trial_diversity(as_run, c.data, div_ref)
    names = ref.names(space, ref.labels is not None) | div_names  # as the trial's evaluator names them
    names |= checks.names(ref.rows) if checks and ref.labels is not None else {}
    cells = {"trial_id": f"trial-{trial:03d}" if trial is not None else "", "run_id": "", **trial_cells(tc)}
    cells |= {"train_iterations": state.iteration, "wall_seconds": state.wall_seconds}
    evaluations = _student_evaluations(tc, method, state.ema.eval(), c.schedule, steps, args.with_teacher)
    rows, kept = [], {}
    no_features = lambda x: None
    points = final_points(evaluations, ref, names, ev, "cpu", features or no_features, checks, 0, diversity)
    for lb, n, x, values, nfe, _ in points:
        kept[(lb, n)] = x[: GRID**2]
        rows += [{"method": lb, "student_steps": n, "nfe": nfe, **cells} | r for r in metric_rows(values, names)]
    if args.with_teacher:  # the same noise seeds as the student's points
        curve = teacher_curve_of(ev)
        t_steps = steps or sorted({n for _, n, *_ in points})
        t_rows, t_kept = repeated_teacher_curve(
            curve, c.teacher, c.schedule, c.data, ref, t_steps, ev.repeats, ev.seed, extractor=space,
            features=features, kid_subsets=ev.kid_subsets, checks=checks, keep=n_div,
        )  # fmt: skip
        rows += t_rows + (teacher_diversity(as_run, c.data, div_ref, t_rows, t_kept) if n_div else [])
    info = {
        "kind": "student",
        "data": tc.data.label,
        "method": method_label(tc),
        "student_steps": tc.method.student_steps,
        "iteration": state.iteration,
        "config": str(Path(args.config).resolve()),
        "trial": trial,
        "ode_steps": tc.eval.ode_steps,
        "extractor": key,
        "reference_sha256": ref.reference and ref.reference.sha256,
    }
    return rows, ref.floor, list(names.values()), tuple(c.data.shape), kept, info, samples, seed


# -- features ---------------------------------------------------------------------------------------
def eval_opts(args) -> dict:
    """eval.* overrides from --extractor / --inception / --reference."""
    opts = {
        "extractor": "inception" if args.inception and not args.extractor else args.extractor,
        "inception_path": args.inception,
        "reference": args.reference,
    }
    return {k: v for k, v in opts.items() if v is not None}


def feature_setup(tc, data):
    """(metric space name, features fn or None, LabelChecks or None, the extractor's key) of tc.eval.extractor;
    the classifier is cached in the user cache."""
    from multistep.metrics.extractors import features_fn, label_checks
    from multistep.sweep.assets import alignment_for, make_extractor_for
    from multistep.train.build import DEFAULT_CACHE

    ext = make_extractor_for(tc, data, DEFAULT_CACHE)
    key = ext.key if ext else {"name": tc.feature_space}  # recorded in eval.json (the detector's / weights' hash)
    decode = getattr(ext, "decode", None)  # a latent teacher's VAE, loaded once for FD and CLIP
    checks = label_checks(ext, alignment_for(tc, decode=decode) if getattr(data, "labels", None) is not None else None)
    return tc.feature_space, None if ext is None else features_fn(ext, data.shape), checks, key


# -- outputs ----------------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    from multistep.atomic import check_output_folder, staged_folder

    if args.make_reference:
        return make_reference(args)
    if not args.checkpoint:
        raise ConfigError("CHECKPOINT: give a teacher.pt or a trial's state.pt (or --make-reference DATA)")
    steps = parse_steps(args.steps)
    _check_args(args)
    out = Path(args.out or f"eval-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    from multistep.train.checkpoint import open_checkpoint

    opened = open_checkpoint(_resolve_file(args.checkpoint))
    p = opened.path
    check_output_folder(out, "--out")  # before the (long) evaluation; written whole at the end
    import torch

    from multistep.sweep import results as res

    if opened.kind == "teacher":
        samples, seed = args.samples or 1000, 1234 if args.seed is None else args.seed
        rows, floor, metrics, shape, kept, info = eval_teacher(p, steps or [1, 2, 4, 8], samples, seed, eval_opts(args))
        rows = [{"trial_id": "", "run_id": info.get("teacher_run_id") or "", **r} for r in rows]
    else:
        rows, floor, metrics, shape, kept, info, samples, seed = eval_student(p, opened.blob, args, steps)
    with staged_folder(out, "--out") as tmp:  # the results appear in OUT whole, or not at all
        written = res.write_table(rows, tmp)
        res.plot(rows, metrics, floor, tmp / "metric_vs_steps.png", f"{p.name}: metric versus sampling steps")
        grids = []
        if args.grid:
            if len(shape) == 3:
                grids = [res.save_grid(x, tmp / f"grid_{m}_{n}steps.png") for (m, n), x in sorted(kept.items())]
            else:
                log.info(f"--grid: samples of shape {shape} are not images; no sample grids")
        from multistep.metrics.extractors import file_sha256

        meta = {
            **info,
            "checkpoint": str(p.resolve()),
            "checkpoint_sha256": file_sha256(p, 64),
            "samples": samples,
            "seed": seed,
            "steps": sorted({r["student_steps"] for r in rows}),
            "metrics": metrics,
            "noise_floor": floor,
            "torch": torch.__version__,
            "created": datetime.now().isoformat(timespec="seconds"),
        }
        (tmp / "eval.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    paths = {k: out / v.name for k, v in written.items()}
    png = out / "metric_vs_steps.png"
    log.info(res.format_table(rows, metrics))
    log.info("\nnoise floor (two data sample sets): " + ", ".join(f"{k} {v:.5f}" for k, v in floor.items() if v))
    log.info(
        f"results: {paths['parquet']}, {paths['csv']}, {png}" + (f", {len(grids)} sample grid(s)" if grids else "")
    )
    return 0
