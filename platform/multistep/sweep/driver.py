"""The sweep driver: owns the Tuner and every MLflow run's lifecycle (docs/architecture.md).

Flow: validated SweepPlan -> MLflow sweep run + one SCHEDULED child run per trial -> shared assets
(eval reference, teacher curve, warm start, feature extractor; cached) -> Ray Tune, one trial per planned
config, each trial training in its own process (1 worker) or a small train driver that fits a TorchTrainer
-> results table + plot from MLflow (the system of record) -> artifacts on the sweep run -> exit code.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from datetime import datetime
from pathlib import Path

from multistep.config import ConfigError, SweepPlan
from multistep.config.plan import get_path, set_path
from multistep.metrics.diversity import diversity_names, diversity_rows, scores_modes
from multistep.metrics.evaluate import clip_names, metric_names
from multistep.metrics.extractors import file_sha256
from multistep.sweep import ray_runtime, search
from multistep.sweep import results as res
from multistep.sweep.assets import prepare, resolve_teachers
from multistep.sweep.interrupts import Interrupts
from multistep.tracking import mlflow_layout as ml
from multistep.tracking import sweep_runs as sr
from multistep.tracking import tags as tag
from multistep.tracking.runs import close_run
from multistep.train.build import guidance_error, method_label
from multistep.train.checkpoint import content_hash

log = logging.getLogger(__name__)


def trial_driver(config: dict, ctx: dict) -> None:
    """One Tune trial. runner tune: train here, reporting straight to Tune. runner train: build and fit a
    TorchTrainer (its workers run the same function; their reports reach Tune via TuneReportCallback)."""
    from ray import tune

    from multistep.sweep.worker import run_trial, tune_session

    r = ctx["resources"]
    pbt = {k: config[k] for k in ctx["pbt"]}  # scheduler pbt: the values PBT set (a clone: its leader's, perturbed)
    if ctx["adaptive"]:  # the search algorithm's proposal: the trial opens its own MLflow run
        i, doc, run_id = _proposed_trial(config, ctx)
    else:
        i = config["trial_index"]  # a PBT clone: its leader's trial (the MLflow run stays this Ray trial's own)
        doc, run_id = ctx["trials"][i], ctx["run_ids"][i]
        if pbt:
            for k, v in pbt.items():
                doc = set_path(doc, k, v)
            run_id = _own_run(ctx, tune.get_context().get_trial_id()).info.run_id
    loop_cfg = {
        "trial": doc,
        "pbt": pbt,
        "run_id": run_id,  # + eval_ref, init, proxy_samples
        "tracking_uri": ctx["tracking_uri"],
        "storage": ctx["storage"],  # named when a checkpoint does not fit there
        "threads": r["cpus_per_worker"],
        "gpus_per_trial": r["num_workers"] * r["per_worker"].get("GPU", 0),  # for train_gpu_hours
        **ctx["assets"][ctx["asset_keys"][0 if ctx["adaptive"] else i]],
    }
    if ctx["trains_itself"]:
        rv = run_trial(loop_cfg, tune_session(r["use_gpu"]))
    else:
        rv = _fit_trainer(loop_cfg, r, i, ctx["storage"])
    if rv.get("error"):  # e.g. a non-finite loss: fail the trial without retrying it
        tune.report({"error": rv["error"]})


def _proposed_trial(config: dict, ctx: dict) -> tuple[int, dict, str]:
    """(index, trial config, MLflow run id) of an adaptive search's trial: the run the driver opened when Tune
    started the trial (waited for: the callback may still be writing it)."""
    from ray import tune

    doc = ctx["plan"].proposed(dict(config)).doc()
    run = _own_run(ctx, tune.get_context().get_trial_id())
    return int(run.data.tags[tag.TRIAL_INDEX]), doc, run.info.run_id


def _own_run(ctx: dict, trial_id: str):
    """The MLflow run the driver's callback tagged with this Ray trial id when Tune started it (waited for: the
    callback may still be writing it)."""
    client = ml.client(ctx["tracking_uri"])
    for _ in range(240):
        if (run := ml.find_trial_run(client, ctx["sweep"], trial_id)) is not None:
            return run
        time.sleep(0.5)
    raise RuntimeError(f"trial {trial_id}: the driver opened no MLflow run for it in 120 s")


def _fit_trainer(loop_cfg: dict, r: dict, i: int, storage: str) -> dict:
    """Every worker of a TorchTrainer runs worker_main(loop_cfg); rank 0's return value comes back."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from multistep.sweep.worker import worker_main

    trainer = TorchTrainer(
        worker_main,
        train_loop_config=loop_cfg,
        scaling_config=ray.train.ScalingConfig(
            num_workers=r["num_workers"], use_gpu=r["use_gpu"], resources_per_worker=r["per_worker"]
        ),
        run_config=ray.train.RunConfig(
            name=f"trial-{i:03d}",
            storage_path=storage,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=r["max_failures"], controller_failure_limit=3),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    return trainer.fit().return_value or {}


class _TrialRuns:
    """Ray trial id -> (trial index, MLflow run id). A planned trial's run is the one of its config's trial_index when
    Tune first starts it (PBT later gives a clone its leader's trial_index); an adaptive search's proposal gets its
    run when Tune starts it (`opened`); a trial whose run is not found yet is (-1, None)."""

    def __init__(self, client, run_ids: list[str], sweep: dict, adaptive: bool):
        self.client, self.run_ids, self.sweep, self.adaptive = client, run_ids, sweep, adaptive
        self.known: dict[str, tuple[int, str]] = {}

    def of(self, trial) -> tuple[int, str | None]:
        if trial.trial_id not in self.known:
            run = ml.find_trial_run(self.client, self.sweep, trial.trial_id)
            if run is not None:
                self.known[trial.trial_id] = int(run.data.tags[tag.TRIAL_INDEX]), run.info.run_id
            elif not self.adaptive:
                i = trial.config["trial_index"]
                self.known[trial.trial_id] = i, self.run_ids[i]
            else:
                return -1, None
        return self.known[trial.trial_id]

    def start(self, plan, trial) -> tuple[int, object, str]:
        """(index, trial config, what the start line adds) of a trial Tune starts; its run RUNNING (opened first
        for an adaptive search's proposal)."""
        if self.adaptive:
            i, rid, cfg, shown = _open_proposed(self.client, plan, self.sweep, trial)
            self.known[trial.trial_id] = i, rid
            return i, cfg, f" ({trial.trial_id}): {shown}"
        i, rid = self.of(trial)
        sr.mark_running(self.client, rid, trial.trial_id)
        return i, plan.trials[i].cfg, f" ({trial.trial_id})"


def _status_callback(client, run_ids: list[str], n: int, sweep: dict, plan, adaptive: bool = False):
    """The Tune callback that moves each trial's MLflow run through RUNNING -> FINISHED / FAILED / KILLED (early
    stop) and shows the trials' progress (sweep/progress.py)."""
    from ray import tune

    from multistep.sweep.progress import TrialProgress

    runs, progress = _TrialRuns(client, run_ids, sweep, adaptive), TrialProgress(n)

    class MlflowStatus(tune.Callback):
        def __init__(self):
            self.t0: dict[int, float] = {}
            self.failed: list[int] = []
            self.known = runs.known
            self.progress = progress

        def on_trial_start(self, iteration, trials, trial, **info):
            i, cfg, note = runs.start(plan, trial)
            self.t0.setdefault(i, time.time())  # a PBT clone restarting keeps its start time
            progress.started(i, _what(cfg), cfg.train.iterations, note)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "final" not in result and "iteration" in result:
                progress.result(runs.of(trial)[0], result["iteration"], result.get("train_loss"))

        def on_trial_complete(self, iteration, trials, trial, **info):
            i, rid = runs.of(trial)
            last = trial.last_result or {}
            took = f"{time.time() - self.t0.get(i, time.time()):.0f} s"
            if last.get("error") or rid is None:
                self.failed.append(i)
                if rid is not None:
                    close_run(client, rid, "FAILED")
                progress.ended(i, f"FAILED after {took}: {last.get('error', 'it opened no MLflow run')}")
                return
            done = bool(last.get("final"))
            close_run(client, rid, "FINISHED" if done else "KILLED")  # KILLED = stopped early
            progress.ended(i, f"{'finished' if done else 'stopped early by the scheduler'} in {took}")

        def on_trial_error(self, iteration, trials, trial, **info):
            i, rid = runs.of(trial)
            self.failed.append(i)
            where = str(getattr(trial, "error_file", "") or "")
            why = _error_line(where)
            if rid is not None:
                close_run(client, rid, "FAILED", f"{why} (details: {where or 'the Ray logs'})")
            progress.ended(i, f"FAILED: {why}")

    return MlflowStatus()


def _what(cfg) -> str:
    """A trial as its progress line names it: method label and S."""
    return f"{method_label(cfg)} S={cfg.method.student_steps}"


def _open_proposed(client, plan, sweep: dict, trial) -> tuple[int, str, object, str]:
    """(index, run id, trial config, its values shown) of the MLflow run opened for a trial an adaptive search
    proposed."""
    values = dict(trial.config)
    proposal = plan.proposed(values)
    i, rid = ml.proposed_trial_run(client, sweep, trial.trial_id, method_label(proposal.cfg), proposal.doc(), values)
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    return i, rid, proposal.cfg, shown


def _error_line(error_file: str) -> str:
    """The exception line of a Tune trial's error file (e.g. "OSError: [Errno 28] ... No space left on device")."""
    try:
        lines = [ln.strip() for ln in open(error_file, errors="replace").read().splitlines() if ln.strip()]
    except OSError:
        return "see the Ray logs"
    excs = [ln for ln in lines if ln.split(":", 1)[0].replace(".", "").replace("_", "").isalnum() and ": " in ln]
    return (excs[-1] if excs else lines[-1] if lines else "see the Ray logs")[:500]


def _runner(cfg) -> str:
    return "tune" if cfg.resources.trial_trains_itself else "train"


def _protocol(cfg) -> str:
    """What the evaluation's numbers mean: N, the feature space (with the detector file's sha256), the reference."""
    ev = cfg.eval
    space = cfg.feature_space
    if space == "inception":
        import zipfile

        try:  # TorchScript archives carry their code; state dicts do not
            with zipfile.ZipFile(ev.inception_path) as z:
                scripted = any("/code/" in n for n in z.namelist())
        except zipfile.BadZipFile:  # a legacy (non-zip) torch.save file: a state dict
            scripted = False
        resize = "the detector graph's resize" if scripted else "bilinear 299 (metrics/inception.py)"
        space += f" {file_sha256(ev.inception_path)}, resize: {resize}"
    ref = f"reference {file_sha256(ev.reference)}" if ev.reference else "reference: a data sample"
    return f"N={ev.samples}, features {space}, {ref}, stream {ev.streaming}, repeats {ev.repeats}"


def plan_hash(plan: SweepPlan) -> str:
    trials = [{"overrides": t.overrides, "config": t.written} for t in plan.trials]
    if plan.adaptive:  # the base trial, and what the search algorithm may propose
        c = plan.cfg
        return content_hash(
            {"base": trials, "search": plan.doc.get("search"), "alg": c.search_alg.model_dump(), "n": c.num_samples}
        )
    return content_hash(trials)


def resume_target(client, plan: SweepPlan):
    """The sweep run `--resume` continues: the latest of this name, whose plan the file still expands to, run by the
    same runner. ConfigError (exit 2) otherwise; read-only, so the pre-flight asks it before anything starts."""
    cfg = plan.cfg
    exp, sweep = sr.latest_sweep_run(client, cfg.experiment, cfg.name)
    if sweep is None:
        raise ConfigError(
            f"{plan.path}: --resume: no earlier sweep named '{cfg.name}' in experiment '{cfg.experiment}'"
        )
    if sweep.data.tags.get(tag.PLAN_HASH) != plan_hash(plan):
        raise ConfigError(
            f"{plan.path}: --resume: the file no longer expands to the trials of sweep run {sweep.info.run_id}"
        )
    children = ml.child_runs(client, exp.experiment_id, sweep.info.run_id)
    have = {int(r.data.tags[tag.TRIAL_INDEX]) for r in children if tag.TRIAL_INDEX in r.data.tags}
    if not plan.adaptive and (
        missing := [i for i in range(len(plan.trials)) if i not in have]
    ):  # its start died while opening the runs
        raise ConfigError(
            f"{plan.path}: --resume: sweep run {sweep.info.run_id} has no trial run for {len(missing)} of its "
            f"{len(plan.trials)} trials (it stopped while creating them); start the sweep anew, without --resume"
        )
    was = sweep.data.tags.get(tag.RUNNER)
    if was and was != _runner(cfg):  # the other runner keeps its checkpoints elsewhere: trials would start over
        raise ConfigError(
            f"{plan.path}: resources.runner: sweep run {sweep.info.run_id} ran its trials with runner "
            f"{was}, this file gives {_runner(cfg)}; --resume needs the same runner"
        )
    return sweep


def _open_runs(client, plan: SweepPlan, tracking_uri: str, storage: str, resume: bool):
    """New sweep: create the sweep run and SCHEDULED trial runs. Resume: find them again (never duplicate)."""
    cfg = plan.cfg
    exp_id = ml.ensure_experiment(client, cfg.experiment, tracking_uri)
    if resume:
        sweep = resume_target(client, plan)
        srid = sweep.info.run_id
        children = ml.child_runs(client, exp_id, srid)
        by_index = {int(r.data.tags[tag.TRIAL_INDEX]): r.info.run_id for r in children}
        run_ids = [] if plan.adaptive else [by_index[i] for i in range(len(plan.trials))]  # adaptive: by trial id
        statuses = [r.info.status for r in children]
        if sweep.info.status == "FINISHED" and all(st in ("FINISHED", "KILLED") for st in statuses):
            log.info(f"sweep run {srid} ({sweep.data.tags[tag.SWEEP_ID]}) already finished: nothing to resume")
            return None, sweep.data.tags[tag.SWEEP_ID], run_ids
        sr.reopen_sweep_run(client, sweep)
        log.info(f"resuming sweep run {srid} ({sweep.data.tags[tag.SWEEP_ID]})")
        return srid, sweep.data.tags[tag.SWEEP_ID], run_ids

    sweep_id = f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    tags = {tag.KIND: "sweep", tag.SWEEP_NAME: cfg.name, tag.SWEEP_ID: sweep_id, tag.PLAN_HASH: plan_hash(plan)}
    tags |= {tag.RUNNER: _runner(cfg), tag.DATASET: cfg.data.label, tag.TEACHER: cfg.teacher.kind}
    tags |= {tag.STORAGE: f"{storage}/{sweep_id}", "mlflow.note.content": cfg.description}
    tags |= {tag.EVAL_REFERENCE: file_sha256(cfg.eval.reference, 64)} if cfg.eval.reference else {}
    tags |= {tag.EVAL_PROTOCOL: _protocol(cfg)}
    params = {k: v for k, v in plan.doc.items() if k != "search"}
    srid = sr.open_sweep_run(client, tracking_uri, cfg.experiment, sweep_id, tags, params, plan.path)
    trials = [  # adaptive: each trial opens its own run
        (
            f"{method_label(t.cfg)}-S{t.cfg.method.student_steps}-{i:03d}",
            method_label(t.cfg),
            ml.flatten(t.doc()) | {f"search.{k}": str(v) for k, v in t.overrides.items()},
        )
        for i, t in enumerate([] if plan.adaptive else plan.trials)
    ]
    run_ids = sr.open_trial_runs(client, exp_id, srid, cfg.name, trials)
    return srid, sweep_id, run_ids


def split_storage(storage: str) -> tuple[str, Path]:
    """(where Ray keeps Tune/Train state and checkpoints, local folder for caches and result files).

    A local path is both. A URI that pyarrow's filesystems understand (s3://, gs://, file://...) is what a
    multi-node cluster needs: Ray writes there directly; caches and result files are made in ./ray_results
    and the result files are copied to <URI>/<sweep_id>/ at the end (they are MLflow artifacts as well)."""
    if "://" in storage:
        return storage.rstrip("/"), Path("ray_results").resolve()
    local = Path(storage).resolve()
    return str(local), local


def _shared_assets(plan: SweepPlan, client, srid: str, storage_dir: Path, resume: bool):
    """Shared assets, computed once per distinct (data, teacher, student, eval): (assets, key per trial, the first
    trial's). In the main thread, so Ctrl-C stops them at once; the teacher curve goes on the sweep run."""
    assets, asset_keys, eval_rows = {}, [], None
    for trial in plan.trials:
        tc, doc = trial.cfg, trial.doc()
        key = content_hash({k: doc[k] for k in ("data", "teacher", "student", "eval")} | {"seed": tc.train.seed})
        if key not in assets:
            assets[key] = prepare(tc, storage_dir / "cache") | {"proxy_samples": plan.cfg.scheduler.proxy_samples}
            eval_rows = assets[key].pop("eval_rows") or eval_rows  # the same for every trial of one evaluation
        asset_keys.append(key)
        if err := guidance_error(tc, assets[key]["eval_ref"]["labels"] is not None):  # CFG needs a conditional teacher
            raise ConfigError(f"{plan.path}: {err}")
    first = assets[asset_keys[0]]
    if not resume:
        reports = [a["init_report"] for a in assets.values() if a.get("init_report")]
        sr.log_shared_assets(client, srid, first, eval_rows, reports)
    return assets, asset_keys, first


def run_sweep(plan: SweepPlan, tracking_uri: str, storage: str, resume: bool = False, start_ray=None) -> int:
    """Run (or resume) a validated sweep end to end. Returns the exit code: 0 ok, 1 a trial failed; raises
    KeyboardInterrupt (exit 130) after SIGINT / SIGTERM, with the sweep run and its open trial runs KILLED.

    start_ray(): starts or joins Ray in this (the main) thread; default ray_runtime.init_ray. A second thread opens the
    sweep's MLflow runs meanwhile: Ray's ~5 s start-up overlaps that work. Only the main thread imports Ray."""
    with Interrupts() as stop:
        return _run_sweep(plan, tracking_uri, storage, resume, start_ray, stop)


def _run_sweep(plan, tracking_uri, storage, resume, start_ray, stop: Interrupts) -> int:
    """plan -> runs -> assets -> tune -> settle -> report."""
    from mlflow.tracking import MlflowClient

    ray_runtime.apply_env()  # before Ray Tune is imported
    cfg = plan.cfg
    storage, storage_dir = split_storage(storage)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # teachers named by MLflow run come from this store
    resolve_teachers(plan.trials, storage_dir / "cache")  # -> local paths in the trial configs
    client = MlflowClient(tracking_uri)
    t_start = time.time()
    srid, sweep_id, run_ids, started_ray = _runs_and_ray(client, plan, tracking_uri, storage, resume, start_ray, stop)
    if srid is None:  # --resume of a sweep whose every trial had already finished: nothing to do, nothing logged
        ray_runtime.shutdown(started_ray)
        return 0
    out_dir, ray_dir = storage_dir / sweep_id, f"{storage}/{sweep_id}"  # local results; Ray state (path or URI)
    try:
        log.info(
            f"MLflow: experiment '{cfg.experiment}', sweep run {srid} with {len(run_ids)} trial runs ({tracking_uri})"
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        assets, asset_keys, first = _shared_assets(plan, client, srid, storage_dir, resume)
        names = sweep_metric_names(plan, first)
        sweep_ref = {"run_id": srid, "experiment_id": sr.experiment_of(client, srid), "name": cfg.name}
        ctx = _trial_context(plan, run_ids, tracking_uri, ray_dir, assets, asset_keys, sweep_ref)
        tune_at = (storage, ray_dir, sweep_id)
        plan, run_ids, failed = _tune_and_settle(plan, ctx, client, run_ids, names, tune_at, sweep_ref, resume, stop)
        try:
            rc = _finish(client, plan, srid, run_ids, names, first, out_dir, failed, t_start, tracking_uri)
            if ray_dir != str(out_dir):
                _copy_results(out_dir, ray_dir)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise _storage_full(client, run_ids, failed, out_dir) from None
        return rc
    except BaseException as e:
        stop.acknowledge()
        try:
            sr.close_incomplete(client, srid, run_ids, interrupted=isinstance(e, KeyboardInterrupt))
        finally:
            ray_runtime.shutdown(started_ray)
        raise


def _runs_and_ray(client, plan, tracking_uri, storage, resume, start_ray, stop: Interrupts):
    """(sweep run id, sweep id, trial run ids, whether we started Ray): the MLflow runs opened in a second thread
    while Ray starts in this one; an interruption meanwhile closes the runs already opened."""
    from concurrent.futures import ThreadPoolExecutor

    started_ray = False
    with ThreadPoolExecutor(1, thread_name_prefix="sweep-open") as pool:
        opening = pool.submit(_open_runs, client, plan, tracking_uri, storage, resume)
        try:
            start = start_ray or ray_runtime.init_ray  # Ray needs the main thread (its signal handlers)
            started_ray = start() is True
            stop.reclaim()  # Ray's core worker replaced our SIGTERM handler
            import ray.tune  # noqa: F401 - imported (~2 s) while the runs are still being opened

            return (*opening.result(), started_ray)
        except BaseException as e:
            stop.acknowledge()
            if opening.exception() is None:  # waits for it (MLflow calls: seconds); the runs exist, close them
                srid, _, run_ids = opening.result()
                if srid is not None:
                    sr.close_incomplete(client, srid, run_ids, interrupted=isinstance(e, KeyboardInterrupt))
            ray_runtime.shutdown(started_ray)
            raise


def _tune_and_settle(plan, ctx, client, run_ids, names, tune_at, sweep_ref, resume, stop: Interrupts):
    """Ray Tune runs the trials (one per planned config, or as the search proposes them); then every trial run's
    final status: (the plan as it ran, its trial run ids, the failed indices). tune_at: (storage, Ray's folder of
    this sweep, the sweep id)."""
    cfg, adaptive, (storage, ray_dir, sweep_id) = plan.cfg, plan.adaptive, tune_at
    n_trials = cfg.num_samples if adaptive else len(run_ids)
    status = _status_callback(client, run_ids, n_trials, sweep_ref, plan, adaptive)
    tuner, indices = _tuner(plan, ctx, status, client, run_ids, names, storage, ray_dir, sweep_id, resume)
    what = f"{n_trials} trials proposed by {cfg.search_alg.name}" if adaptive else f"{n_trials} trials"
    log.info(f"running {what}, at most {cfg.resources.max_concurrent_trials} at a time; Tune state in {ray_dir}")
    log.info(f"Ray's own messages (a failed trial's traceback, retries): {ray_runtime.ray_messages_to_file()}")
    log.info(f"the trials' own output (Ray worker logs): {ray_runtime.worker_logs()}")
    stop.in_tune = True
    try:
        grid = tuner.fit() if indices else []  # nothing left to run: settle and finish
    except Exception as e:  # Tune ran but could not collect its results (e.g. a full disk)
        log.warning(f"Ray Tune could not collect the trials' results ({type(e).__name__}: {e}); statuses from MLflow")
        grid = []
    finally:
        stop.in_tune = False
        status.progress.close()  # the live lines go; what follows is printed below them
    if stop.signal is not None:  # Tune stopped gracefully on our SIGUSR1: the sweep is not finished
        raise KeyboardInterrupt
    plan, run_ids, last, orphans = _results(client, plan, run_ids, grid, status, sweep_ref)
    failed = sr.settle_trials(client, run_ids, last)
    if orphans:  # trials that failed before they could open an MLflow run
        log.warning(
            f"{orphans} of {cfg.num_samples} proposed trial(s) did not run or opened no MLflow run (see the Ray logs)"
        )
        failed += [-1] * orphans
    return plan, run_ids, failed


def sweep_metric_names(plan, first: dict) -> dict[str, str]:
    """The metrics of the results table: the evaluation's, plus precision / recall (and mode coverage for mixtures
    in identity features) when the assets measured diversity."""
    tc0 = plan.trial_cfg(0)
    ev0, labelled = tc0.eval, first["eval_ref"]["labels"] is not None
    names = metric_names(ev0.samples, tc0.feature_space, labelled, ev0.ode_rows)
    if first.get("diversity_ref") is not None:
        names |= diversity_names(diversity_rows(ev0), scores_modes(tc0))
    if ev0.clip_path and labelled:
        names |= clip_names(ev0.samples)
    return names


def _trial_context(plan, run_ids, tracking_uri, ray_dir, assets, asset_keys, sweep_ref) -> dict:
    """What every trial receives through tune.with_parameters (dicts: what crosses the Ray boundary)."""
    cfg, r = plan.cfg, plan.cfg.resources
    return {
        "trials": [t.doc() for t in plan.trials],
        "run_ids": run_ids,
        "tracking_uri": tracking_uri,
        "storage": ray_dir,
        "resources": r.model_dump() | {"per_worker": r.per_worker},
        "assets": assets,
        "asset_keys": asset_keys,
        "trains_itself": r.trial_trains_itself,  # runner tune: the trial holds the worker's resources, checkpoints
        "adaptive": plan.adaptive,
        "plan": plan,  # an adaptive search's proposals, PBT's values: trial configs in the trial
        "pbt": list(cfg.scheduler.mutations) if cfg.scheduler.name == "pbt" else [],
        "sweep": sweep_ref,
    }


def _tuner(plan, ctx, status, client, run_ids, names, storage, ray_dir, sweep_id, resume):
    """(the Tuner: restored from Tune's state on --resume when readable, else new; the planned trial indices it
    runs). A resume without readable Tune state restarts the trials MLflow does not show finished."""
    import ray
    from ray import tune

    cfg, r, adaptive, itself = plan.cfg, plan.cfg.resources, plan.adaptive, ctx["trains_itself"]
    if itself:
        driver_res = r.per_worker
    else:
        driver_res = {"CPU": 0, "train_driver": 1} if ray.cluster_resources().get("train_driver") else {"CPU": 1}
    trainable = tune.with_resources(tune.with_parameters(trial_driver, ctx=ctx), driver_res)
    indices = list(range(len(plan.trials)))
    restorable = resume and tune.Tuner.can_restore(ray_dir)
    if restorable and (why := _unreadable_tune_state(ray_dir)):  # e.g. the driver was killed mid-write
        restorable = False
        log.warning(f"Tune's state in {ray_dir} is unreadable ({why}); set aside, rebuilding the plan from MLflow")
    if resume and not restorable and adaptive:  # its searcher's state is in Tune's, nowhere else
        raise ConfigError(
            f"{plan.path}: --resume: no readable Tune state in {ray_dir}; an adaptive search (search_alg: "
            f"{cfg.search_alg.name}) resumes from it only. Start the sweep anew, without --resume"
        )
    if resume and not restorable:  # (also a resume whose Tune state is elsewhere): MLflow says what is left
        indices = sr.unfinished(client, run_ids)
        log.info(f"{len(indices)} unfinished trial(s) start again from their first iteration")
    if restorable:
        return tune.Tuner.restore(ray_dir, trainable, resume_unfinished=True, resume_errored=True), indices
    space, search_alg = search.optuna(plan, names) if adaptive else (_grid_space(plan, indices), None)
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            num_samples=cfg.num_samples if adaptive else 1,
            max_concurrent_trials=r.max_concurrent_trials,
            scheduler=_scheduler(plan),
            trial_dirname_creator=_trial_dir if itself else None,
            reuse_actors=itself,  # the next trial skips a process start + imports
        ),
        run_config=tune.RunConfig(
            name=sweep_id,
            storage_path=storage,
            callbacks=[status],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=r.max_failures if itself else 1),
            # PBT: every checkpoint kept (a clone's checkpoint manager would otherwise delete its leader's)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if ctx["pbt"] else 2),
        ),
    )
    return tuner, indices


def _results(client, plan, run_ids, grid, status, sweep_ref):
    """(plan, run ids, {trial index: last result}, orphans) after Tune: an adaptive search's trials as MLflow recorded
    them (the system of record), and how many proposed trials never opened a run."""
    if plan.adaptive:
        plan, run_ids, position = _proposed_plan(client, plan, sweep_ref)
        last = {
            position[res.metrics["trial_id"]]: res.metrics for res in grid if res.metrics.get("trial_id") in position
        }
        return plan, run_ids, last, plan.cfg.num_samples - len(run_ids)
    index = lambda res: status.known.get(res.metrics.get("trial_id"), (res.config["trial_index"],))[0]
    return plan, run_ids, {index(res): res.metrics for res in grid if res.metrics}, 0


def _unreadable_tune_state(ray_dir: str) -> str | None:
    """Why the newest experiment_state-*.json of a Tune experiment does not parse (None when it does). An unreadable
    one is renamed *.corrupt, so neither this resume nor a later one trips over it."""
    import json

    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(ray_dir) if "://" in ray_dir else (pafs.LocalFileSystem(), ray_dir)
    states = sorted(
        i.path
        for i in fs.get_file_info(pafs.FileSelector(root))
        if i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json")
    )
    if not states:  # tuner.pkl without any snapshot: killed before Tune's first one
        return "no experiment_state file"
    try:
        with fs.open_input_stream(states[-1]) as f:
            json.loads(f.read())
        return None
    except (ValueError, OSError) as e:
        fs.move(states[-1], states[-1] + ".corrupt")
        return f"{states[-1].rsplit('/', 1)[-1]}: {type(e).__name__}"


def _proposed_plan(client, plan: SweepPlan, sweep: dict) -> tuple[SweepPlan, list[str], dict[str, int]]:
    """The plan of an adaptive sweep once it ran: its trials rebuilt from their runs' proposals, by index; their
    run ids; each Ray trial id's position."""
    import json

    children = ml.child_runs(client, sweep["experiment_id"], sweep["run_id"])
    runs = sorted(
        (r for r in children if tag.SEARCH_VALUES in r.data.tags), key=lambda r: int(r.data.tags[tag.TRIAL_INDEX])
    )
    trials = [plan.proposed(json.loads(r.data.tags[tag.SEARCH_VALUES])) for r in runs]
    position = {r.data.tags["ray.trial_id"]: i for i, r in enumerate(runs)}
    return SweepPlan(plan.path, plan.cfg, plan.doc, trials), [r.info.run_id for r in runs], position


def _storage_full(client, run_ids: list[str], failed: list[int], out_dir: Path) -> OSError:
    """The sweep's storage filled up: one line naming it, from the trials' own errors when a checkpoint did not fit
    (its size and the free space), else about the result files that did not."""
    from multistep.atomic import no_space
    from multistep.sweep.worker import STORAGE_FULL

    errors = sr.trial_errors(client, run_ids, failed)
    full = [e for e in errors if STORAGE_FULL in e]
    if not full:
        return no_space(str(out_dir), None, "the sweep's result files")
    line = full[0].split("] ", 1)[-1].split(" (details: ")[0]  # "OSError: [Errno 28] <the worker's line> (details: ..)"
    return OSError(errno.ENOSPC, f"{line}; {len(full)} of {len(run_ids)} trial(s) failed on it")


def _trial_dir(trial) -> str:
    """trial-NNN: where a self-training trial keeps its checkpoints (a TorchTrainer run has the same name)."""
    return f"trial-{trial.config['trial_index']:03d}" if "trial_index" in trial.config else f"trial-{trial.trial_id}"


def _copy_results(out_dir: Path, uri: str) -> None:
    """The result files next to the sweep's Ray state at a storage URI (each written whole, then complete)."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    fs.create_dir(root, recursive=True)
    for f in ("results.parquet", "results.csv", "metric_vs_steps.png"):
        pafs.copy_files(
            str(out_dir / f), f"{root}/{f}", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
        )
    log.info(f"results copied to {uri}/")


def _grid_space(plan: SweepPlan, indices: list[int]) -> dict:
    """Tune's param_space of a planned sweep: one trial per index; with scheduler pbt, also the values PBT perturbs,
    each trial starting from its own."""
    from ray import tune

    space = {"trial_index": tune.grid_search(indices)}
    for k in plan.cfg.scheduler.mutations if plan.cfg.scheduler.name == "pbt" else ():
        start = [get_path(t.doc(), k) for t in plan.trials]
        space[k] = tune.sample_from(lambda config, start=start: start[config["trial_index"]])
    return space


def _scheduler(plan: SweepPlan):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    sc = plan.cfg.scheduler
    if sc.name == "fifo":
        return FIFOScheduler()
    cfgs = [plan.trial_cfg(i) for i in range(len(plan.trials))]
    every = min(c.train.checkpoint_every for c in cfgs)
    proxy = f"proxy_{metric_names(min(sc.proxy_samples, cfgs[0].eval.samples), cfgs[0].feature_space)['fd']}"
    if sc.name == "pbt":  # time: checkpoint_iteration, reported at every checkpoint but the last (worker.py)
        import logging

        logging.getLogger("ray.tune.schedulers.pbt").setLevel(logging.ERROR)  # not "no time_attr" for final reports
        return PopulationBasedTraining(
            time_attr="checkpoint_iteration",
            require_attrs=False,  # the final report (and a PBT-restarted trial's first) carries no checkpoint_iteration
            metric=proxy,
            mode="min",
            perturbation_interval=sc.perturb_checkpoints * every,
            hyperparam_mutations={k: search.domain(a) for k, a in sc.mutations.items()},
            quantile_fraction=sc.quantile_fraction,
            resample_probability=sc.resample_probability,
            synch=sc.synch,
        )
    # max_t one past the end: reaching the last iteration must not stop a trial before its final evaluation
    return ASHAScheduler(
        time_attr="iteration",
        metric=proxy,
        mode="min",
        max_t=max(c.train.iterations for c in cfgs) + 1,
        grace_period=sc.grace_checkpoints * every,
        reduction_factor=sc.reduction_factor,
    )


def _finish(client, plan, srid, run_ids, names, first, out_dir, failed, t_start, tracking_uri) -> int:
    """Results from MLflow (the system of record): table, per-method curves, plot, artifacts, exit code."""
    cfg = plan.cfg
    tcs = [plan.trial_cfg(i) for i in range(len(run_ids))]
    own = [(method_label(tc), res.trial_cells(tc), tc.train.iterations) for tc in tcs]
    rows = sr.collect_rows(client, run_ids, own, names) + [
        {
            "se": None,
            **row,
            "trial_id": "",
            "run_id": srid,
            "anneal": "",
            "learning_rate": None,
            "train_iterations": None,
            "wall_seconds": None,
        }
        for row in first["teacher_rows"]
    ]
    for metric in names.values():
        for method, pts in res.best_by_steps(rows, metric).items():
            if not method.startswith("teacher"):
                ml.log_curve(client, srid, f"{metric}/{method}", sorted(pts.items()))
    paths = res.write_table(rows, out_dir)
    floor = first["eval_ref"]["floor"]
    png = res.plot(
        rows, list(names.values()), floor, out_dir / "metric_vs_steps.png", f"{cfg.name}: metric versus sampling steps"
    )
    main_metric = names["fd"]
    front = res.pareto_points(rows, main_metric)
    pareto = [res.write_pareto(front, out_dir / "pareto.csv")]
    if front:
        pareto.append(res.plot_pareto(front, main_metric, out_dir / "pareto.png", f"{cfg.name}: {main_metric}"))
    trials = [  # the flat per-trial summary metrics, one row per method x S on the sweep run
        {"method": label, "student_steps": tc.method.student_steps} | m
        for (label, _, _), tc, m in zip(own, tcs, sr.trial_metrics(client, run_ids))
    ]
    summary = res.write_csv(res.summary_table(trials, main_metric), out_dir / "summary.csv")
    failed = sorted(set(failed))
    exp_id = sr.finish_sweep_run(client, srid, t_start, failed, [*paths.values(), png, *pareto, summary])
    log.info("")
    log.info(res.format_table(rows, list(names.values())))
    log.info("\nnoise floor (two data sample sets): " + ", ".join(f"{k} {v:.5f}" for k, v in floor.items() if v))
    log.info(f"results: {paths['parquet']}, {paths['csv']}, {png}")
    if failed:
        log.error(
            f"{len(failed)} trial(s) failed: " + ", ".join(f"#{i + 1} (run {run_ids[i]})" for i in failed if i >= 0)
        )
        return 1
    log.info(f"sweep finished in {time.time() - t_start:.0f} s; {ml.ui_hint(tracking_uri, exp_id)}")
    return 0
