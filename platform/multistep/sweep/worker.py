"""The trial's training function: build, (resume,) train, evaluate, report.

It runs in one of two places (docs/architecture.md, "Trial runners"):
- on each Ray Train worker of a TorchTrainer (`worker_main`): rank 0 logs to MLflow, every rank
  reports to Ray Train (only rank 0's metrics reach Tune), a restarted worker group resumes from
  ray.train.get_checkpoint();
- in the Tune trial's own process for single-worker trials (`run_trial(cfg, tune_session(...))`): no worker group
  to start, reports and checkpoints go straight to Tune, a restarted trial resumes from ray.tune.get_checkpoint().
Rank 0 logs per-interval training metrics and the evaluation curve into the trial's MLflow run either way.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path

import torch

from multistep.data import data_kind
from multistep.logs import configure
from multistep.metrics import evaluator
from multistep.teachers import teacher_kind
from multistep.tracking import tags as tag
from multistep.train import checkpoint as checkpoint_file

log = logging.getLogger(__name__)

CKPT_FILE = "state.pt"  # written and read by train/checkpoint.py (sha256 trailer)
CKPT_VERSION = 1
STORAGE_FULL = "a trial checkpoint"  # what did not fit: the driver looks for it in the trials' errors
PREFETCH_BATCHES = 2  # Parquet data: batches a reader thread keeps ready (shard reads, shuffles) beside the step
PROMPT_ROWS = 8  # caption data: prompts (rows) of the trial's prompts x points picture


def on_device(batch, device):
    """A batch (x, (x, y) or None) on the trial's device."""
    if isinstance(batch, tuple):
        return tuple(on_device(b, device) for b in batch)
    return None if batch is None else batch.to(device, non_blocking=True)


class Session:
    """Where the trial runs: rank, world size, device, and the Ray API (ray.train or ray.tune) that takes its
    reports and checkpoints and hands back the checkpoint to resume from."""

    def __init__(self, api, rank: int, world: int, device: torch.device):
        self.api, self.rank, self.world, self.device = api, rank, world, device
        self.storage = ""  # the sweep's storage (path or URI), named when a checkpoint does not fit there

    def get_checkpoint(self):
        return self.api.get_checkpoint()

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        try:
            self.api.report(
                metrics, checkpoint=self.api.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
            )
        except OSError as e:  # Ray copies the checkpoint to the storage: a full disk is one line naming it
            if e.errno != errno.ENOSPC or not checkpoint_dir:
                raise
            from multistep.atomic import folder_bytes, no_space

            raise no_space(
                self.storage, folder_bytes(checkpoint_dir), STORAGE_FULL, " (Tune keeps the last 2 of each trial)"
            ) from None


def train_session() -> Session:
    """A Ray Train worker of a TorchTrainer (device: cuda:<local rank> when the trial has GPUs, else cpu)."""
    import ray.train
    from ray.train.torch import get_device

    ctx = ray.train.get_context()
    return Session(ray.train, ctx.get_world_rank(), ctx.get_world_size(), get_device())


def tune_session(use_gpu: bool) -> Session:
    """The Tune trial's own process, the trial's only worker (Ray sets CUDA_VISIBLE_DEVICES for its GPU)."""
    import logging

    from ray import tune

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no "Checkpoint successfully created" line per checkpoint
    return Session(tune, 0, 1, torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu"))


def load_checkpoint(ckpt) -> tuple[dict, str | None]:
    """(payload, None) of a Ray checkpoint's state.pt; when its checksum fails, the newest sound earlier checkpoint of
    the same trial folder instead, with a note saying so. CorruptCheckpoint when none is sound."""
    from ray.train import Checkpoint

    try:
        with ckpt.as_directory() as d:
            return checkpoint_file.load(os.path.join(d, CKPT_FILE)), None
    except (checkpoint_file.CorruptCheckpoint, OSError) as e:  # corrupt, or state.pt missing from the folder
        bad = e
    import pyarrow.fs as pafs

    fs, here = ckpt.filesystem, ckpt.path.rstrip("/")
    parent, name = here.rsplit("/", 1)
    earlier = sorted(
        (i.path for i in fs.get_file_info(pafs.FileSelector(parent)) if i.type == pafs.FileType.Directory),
        reverse=True,
    )
    for path in [p for p in earlier if p.rsplit("/", 1)[1].startswith("checkpoint_") and p.rsplit("/", 1)[1] < name]:
        try:
            with Checkpoint(path, filesystem=fs).as_directory() as d:
                sd = checkpoint_file.load(os.path.join(d, CKPT_FILE))
            return sd, f"{bad}; resumed from the earlier {path.rsplit('/', 1)[1]} instead"
        except (checkpoint_file.CorruptCheckpoint, OSError):
            continue
    raise bad


def pbt_exploit(state, sd: dict, cfg: dict, logger) -> None:
    """A PBT clone starts from its leader's checkpoint `sd`: its own learning rate (the rest of the new config is read
    from cfg by the method), a random stream of its own, and the parent recorded on its run: tags naming the leader's
    run and iteration, and pbt/exploit_<iteration>.json with the leader's config and the values this trial now uses."""
    import json
    import zlib

    from multistep.config.plan import get_path

    lr = cfg["trial"]["train"]["learning_rate"]
    for group in state.opt.param_groups:
        group["lr"] = lr
    state.gen.manual_seed(zlib.crc32(f"{cfg['run_id']}:{state.iteration}".encode()))  # not the leader's batches
    if logger is None:
        return
    parent = {"run_id": sd["run_id"], "iteration": state.iteration, "config": sd["trial"]}
    parent["values"] = {k: get_path(sd["trial"], k) for k in cfg["pbt"]}
    logger.tag(tag.PBT_PARENT_RUN, sd["run_id"])  # the latest exploit's
    logger.tag(tag.PBT_PARENT_ITERATION, str(state.iteration))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"exploit_{state.iteration:07d}.json"
        path.write_text(json.dumps({"parent": parent, "values": cfg["pbt"]}, indent=1, sort_keys=True))
        logger.artifact(str(path), "pbt")


def worker_main(cfg: dict) -> dict:
    """The TorchTrainer's train function (every Ray Train worker)."""
    return run_trial(cfg, train_session())


def summary_metrics(final: dict, names: dict, state, gpus: float) -> dict[str, float]:
    """Flat per-trial figures beside the step-keyed curve (MLflow's run table shows a metric's last step only):
    final/<metric> at the trial's own S, its nfe, training wall time, GPU-hours and parameter count."""
    out = {f"final/{m}": final[m] for m in names.values() if m in final}
    n_params = sum(p.numel() for p in state.student.parameters())
    return (
        out
        | ({"nfe": final["nfe"]} if "nfe" in final else {})
        | {
            "train_seconds": state.wall_seconds,
            "train_gpu_hours": gpus * state.wall_seconds / 3600,
            "params": n_params,
        }
    )


def trial_diversity(tc, data, reference) -> tuple[dict, object]:
    """(metric names, rows -> metrics) of a trial's diversity measurement against the shared reference rows; the
    mode coverage where the data is a Gaussian mixture scored on the samples themselves. ({}, None): off."""
    from multistep.metrics.diversity import diversity, diversity_names, diversity_rows, scores_modes

    n = diversity_rows(tc.eval) if reference is not None else 0
    if not n:
        return {}, None
    gmm = data if scores_modes(tc) else None
    names = diversity_names(n, gmm is not None)
    return names, lambda rows, n_boot=0: diversity(rows, reference, names, gmm, tc.eval.knn_k, n_boot)


def run_trial(cfg: dict, session: Session) -> dict:
    """One trial on one rank, as named steps (docs/architecture.md, "The trial as steps")."""
    configure()  # this worker's messages as lines on its stdout (Ray's worker-*.out)
    trial = Trial(cfg, session)
    trial.set_up()
    trial.resume()
    trial.data()
    trial.evaluator()
    if error := trial.train():
        return {"error": error}
    return trial.report(trial.evaluate())


class Trial:
    """A trial's job on one rank: set_up (components, method, state, logger) -> resume (a checkpoint, PBT) -> data
    (the batch stream) -> evaluator (reference, metric names, features, proxy) -> train (fit with its hooks) ->
    evaluate (the final curve, logged with its pictures and kept rows) -> report (to Tune and the run table)."""

    def __init__(self, cfg: dict, session: Session):
        from multistep.config import TrialCfg

        self.cfg, self.session = cfg, session
        self.rank, self.world, self.device = session.rank, session.world, session.device
        session.storage = cfg.get("storage", "")
        torch.set_num_threads(max(1, int(cfg["threads"])))
        self.tc = TrialCfg.model_validate(cfg["trial"])
        # each rank reads only its slice of the shards (a latent teacher's latents are in memory instead)
        self.stream = data_kind(self.tc.data).files and not teacher_kind(self.tc.teacher).latent(self.tc)
        self.last_proxy: dict[str, float] = {}
        self.last_loss: float | None = None  # the latest logged mean training loss (progress lines)

    def set_up(self) -> None:
        from multistep.tracking.mlflow_layout import RunLogger
        from multistep.train.build import build, make_method
        from multistep.train.loop import new_state
        from multistep.train.perf import apply_fast_paths
        from multistep.train.replicas import Replicas

        tc, t, rank = self.tc, self.tc.train, self.rank
        torch.manual_seed(t.seed + 1000 * rank)  # global RNG (e.g. dropout): the same in a fresh or a reused process
        comps = build(tc, load_data=not self.stream, check_teacher=False)  # the driver's shared assets checked it
        if self.cfg.get("init") is not None:
            comps.student.net.load_state_dict(self.cfg["init"])
        comps.student.to(self.device)
        comps.teacher.to(self.device)
        for note in apply_fast_paths(
            [comps.student, comps.teacher], self.device, t.precision, t.channels_last, t.compile
        ):
            log.warning(note)
        self.replicas = Replicas() if self.world > 1 else None  # data parallel: averaged gradients, identical replicas
        if self.replicas:
            self.replicas.broadcast(comps.student.net)
        self.comps, self.method = comps, make_method(tc, comps)
        self.state = new_state(comps.student, t.learning_rate, t.seed + 1000 * rank, self.method)
        self.logger = RunLogger(self.cfg["tracking_uri"], self.cfg["run_id"]) if rank == 0 else None

    def resume(self) -> None:
        """A restarted worker group (or trial) continues the same curve; a PBT clone starts from its leader's."""
        cfg, state, logger = self.cfg, self.state, self.logger
        ckpt = self.session.get_checkpoint()
        if ckpt is not None:
            sd, fallback = load_checkpoint(ckpt)
            if fallback and logger:  # the latest checkpoint was corrupt: say so where the trial's results are
                logger.tag(tag.CHECKPOINT_FALLBACK, fallback)
            if fallback:
                log.warning(f"trial {cfg['run_id']}: {fallback}")
            if sd.get("version") != CKPT_VERSION:
                raise RuntimeError(f"checkpoint version {sd.get('version')} is not {CKPT_VERSION}")
            state.load_state_dict(sd["state"])
            if len(sd.get("rng_per_rank", [])) == self.world:  # each rank its own random stream again, not rank 0's
                gen, cpu_rng = sd["rng_per_rank"][self.rank]
                state.gen.set_state(gen)
                torch.set_rng_state(cpu_rng)
            if logger:
                logger.tag(tag.RESUMED_FROM_ITERATION, str(state.iteration))
            if sd.get("run_id") not in (None, cfg["run_id"]):  # PBT cloned a leader's checkpoint into this trial
                pbt_exploit(state, sd, cfg, logger)
        if logger:  # a restart (with or without a checkpoint) redoes work: points the run holds are not logged again
            logger.resume()
        if logger and cfg.get("pbt"):  # the values PBT set, step = the iteration they apply from (a chart per value)
            logger.metrics(state.iteration, {f"pbt/{k}": float(v) for k, v in cfg["pbt"].items()})

    def data(self) -> None:
        """self.sample(g): the next training batch on the device, x or (x, y) (labelled: a class-conditional teacher)."""
        from multistep.metrics.streaming import load_ref

        self.ref = load_ref(self.cfg["eval_ref"])  # an EvalRef, or a StreamRef (eval.stream): noise drawn per batch
        self.labelled = self.ref.labels is not None  # batches (x, y), students conditioned on y
        local_batch, labelled, data = self.tc.train.batch_size // self.world, self.labelled, self.comps.data
        self.batches = None
        if self.stream:  # reshuffled every epoch; a resumed trial continues after the last batch it drew
            seed = self.tc.train.seed + 1000 * self.rank
            shards = data_kind(self.tc.data).stream(self.tc.data, self.rank, self.world, seed, local_batch)
            self.batches = shards.batches(start=self.state.iteration, prefetch=PREFETCH_BATCHES, device=self.device)
            draw = lambda g: next(self.batches) if labelled else next(self.batches)[0]
        else:
            draw = lambda g: data.sample_labelled(local_batch, g) if labelled else data.sample(local_batch, g)
        self.sample = lambda g: on_device(draw(g), self.device)

    def evaluator(self) -> None:
        """Metric names, features, the diversity measurement and the proxy's reference (rank 0 evaluates)."""
        from multistep.metrics.extractors import DecodedExtractor, features_fn, from_spec, label_checks
        from multistep.sweep.assets import alignment_for

        tc, ref = self.tc, self.ref
        self.names = ref.names(tc.feature_space, self.labelled)
        div_names, self.diversity = trial_diversity(tc, self.comps.data, self.cfg.get("diversity_ref"))
        self.names |= div_names
        spec = self.cfg.get("extractor")  # classifier / inception features (None: the samples themselves)
        ext = from_spec(spec, self.device) if spec and self.rank == 0 else None
        self.features = features_fn(ext, ref.sample_shape) if ext else (lambda x: None)
        root = teacher_kind(tc.teacher).latent(tc) if self.rank == 0 else None  # a latent teacher's samples
        # the decoder of pictures and CLIP: the FD extractor's VAE (eval.extractor pixel), else its own
        decode = getattr(ext, "decode", None) or (DecodedExtractor(root, self.device).decode if root else None)
        self.to_images = decode or (lambda x: x)
        kind = data_kind(tc.data)
        self.captions = kind.captions(tc.data) if kind.captions and self.labelled else None  # the prompts grid's
        align = alignment_for(tc, self.device, decode) if self.labelled and self.rank == 0 else None
        self.checks = label_checks(ext, align)  # cls_err (classifier), clip_score (eval.clip_path)
        self.names |= self.checks.names(ref.rows) if self.checks else {}
        self.proxy_ref = ref.head(min(self.cfg.get("proxy_samples", 1000), ref.rows))
        self.proxy_names = {k: f"proxy_{v}" for k, v in self.proxy_ref.names(tc.feature_space, self.labelled).items()}

    def proxy(self) -> dict[str, float]:
        """Cheap in-training evaluation (few samples, current EMA): what ASHA compares; never the final number."""
        from multistep.metrics.evaluate import evaluate, sample_points

        first = lambda y, seed: self.method.evaluations(self.state.ema, y, seed)[:1]  # the method's own sampler
        ref = self.proxy_ref
        points = sample_points(first, ref.noise, ref.labels, self.tc.eval.batch_size, self.device)
        if not points:
            return {}
        x = points[0][2]
        return evaluate(x, ref, self.proxy_names, self.features(x), checks=self.checks)

    def log(self, it: int, means: dict[str, float]) -> None:
        self.last_loss = means.get("loss")
        if self.logger:
            wall = {"train/wall_seconds": self.state.wall_seconds}
            self.logger.metrics(it, {f"train/{k}": v for k, v in means.items()} | wall)

    def checkpoint(self, it: int, sd: dict) -> None:
        """Proxy metrics, then the checkpoint reported with them (rank 0 writes it; every rank reports)."""
        if self.rank == 0:  # the replicas are identical: one rank evaluates (only rank 0's metrics reach Tune)
            self.last_proxy.update(self.proxy())
        st = self.state
        rngs = self.replicas.gather((st.gen.get_state(), torch.get_rng_state())) if self.replicas else []  # all ranks
        metrics = {"iteration": it, **self.last_proxy}
        if it < self.tc.train.iterations:  # PBT's clock: a decision at the end would only replace finished weights
            metrics["checkpoint_iteration"] = it
        if self.logger:  # step = iteration
            self.logger.metrics(
                it, {k: v for k, v in metrics.items() if k not in ("iteration", "checkpoint_iteration")}
            )
        if self.last_loss is not None:  # the driver's progress line (not an MLflow metric: train/loss is)
            metrics["train_loss"] = self.last_loss
        with tempfile.TemporaryDirectory() as d:
            if self.rank != 0:
                self.session.report(metrics)
                return
            payload = {
                "format": checkpoint_file.TRIAL_FORMAT,
                "version": CKPT_VERSION,
                "state": sd,
                "rng_per_rank": rngs,
                "trial": self.cfg["trial"],
                "run_id": self.cfg["run_id"],  # the trial's MLflow run (`multistep export --register` links it)
            }
            checkpoint_file.save(os.path.join(d, CKPT_FILE), payload)  # atomic, with its sha256
            self.session.report(metrics, d)

    def train(self) -> str | None:
        """fit with the trial's hooks; a non-finite loss is the trial's error (deterministic: no retry)."""
        from multistep.train.loop import Hooks, NonFiniteLoss, fit

        t = self.tc.train
        try:
            fit(
                self.state,
                self.method,
                self.sample,
                t.iterations,
                t.grad_clip,
                t.eval_ema,
                t.log_every,
                t.checkpoint_every,
                Hooks(self.log, self.checkpoint),
                self.replicas,
            )
        except NonFiniteLoss as e:
            if self.logger:
                self.logger.tag(tag.ERROR, str(e))
            return str(e)
        finally:
            if self.batches is not None:
                self.batches.close()  # the reader thread stops now, not at the end of the evaluation
        return None

    def evaluate(self) -> dict:
        """The curve at the trial's step count(s), with the eval-EMA weights, on the sweep's fixed noise; returns the
        metrics of the trial's own point. The method's own label logs under the plain metric name, extra samplers
        under "<metric>/<label>"."""
        from multistep.train.build import method_label

        tc, state, method = self.tc, self.state, self.method
        state.ema.eval()
        if self.rank == 0:
            log.info(f"final evaluation: {tc.eval.samples} samples, {method_label(tc)} S={tc.method.student_steps}")
        final: dict = {}
        evaluations = lambda y, seed: method.evaluations(state.ema, y, seed)
        args = (self.ref, self.names, tc.eval, self.device, self.features, self.checks, self.rank, self.diversity)
        columns = []  # caption data: the first prompts' samples at every point
        for label, steps, x, metrics, nfe, kept in evaluator.final_points(evaluations, *args):
            # metrics: + "<kid>_se" (the table's se column), + "<metric>_se" of the others with eval.bootstrap
            if self.logger:
                self.log_point(label, steps, x, metrics, kept)
                if self.captions and x.ndim == 4:
                    columns.append((f"{label}, {steps} steps", self.to_images(x[:PROMPT_ROWS])))
            if steps == tc.method.student_steps and label == method.label:
                final = {**metrics, "nfe": nfe}
        if columns:
            self.log_prompt_grid(columns)
        return final

    def log_prompt_grid(self, columns: list) -> None:
        """samples/prompts.png: the first prompts (rows) at every point of the trial (columns)."""
        from multistep.sweep.results import save_prompt_grid

        prompts = [([*self.captions, ""])[i] or "(empty prompt)" for i in self.ref.labels[:PROMPT_ROWS].tolist()]
        with tempfile.TemporaryDirectory() as d:
            self.logger.artifact(str(save_prompt_grid(columns, prompts, Path(d) / "prompts.png")), "samples")

    def log_point(self, label: str, steps: int, x, metrics: dict, kept) -> None:
        """One point in the trial's run: metrics at step = sampling steps, its picture, its kept rows."""
        from multistep.metrics.paired import EVAL_ROWS, save_rows
        from multistep.sweep.results import save_grid, save_scatter
        from multistep.train.build import method_label

        logger, own = self.logger, label == self.method.label
        logger.metrics(steps, {f"{k}{'' if own else '/' + label}": v for k, v in metrics.items()})
        picture = f"{label}_{steps}steps.png"  # artifact samples/<label>_<steps>steps.png, named as in the table
        with tempfile.TemporaryDirectory() as d:
            if x.ndim == 4:  # images: an 8x8 grid of the first samples (a latent teacher's: decoded)
                logger.artifact(str(save_grid(self.to_images(x), Path(d) / picture)), "samples")
            elif x.ndim == 2 and x.shape[1] == 2:  # 2-D data: the samples over the data (modes kept or dropped)
                scatter = save_scatter(x, self.cfg.get("diversity_ref"), Path(d) / picture, f"{label}, {steps} steps")
                logger.artifact(str(scatter), "samples")
            if kept is not None:  # the rows `multistep claims` compares, paired by noise row
                name = method_label(self.tc) if own else label  # as in the results table
                logger.artifact(save_rows(kept, Path(d), name, steps), EVAL_ROWS)

    def report(self, final: dict) -> dict:
        state = self.state
        final |= {**self.last_proxy, "iteration": state.iteration, "wall_seconds": state.wall_seconds, "final": 1}
        if self.logger:
            self.logger.metrics(state.iteration, {"wall_seconds": state.wall_seconds})
            summary = summary_metrics(final, self.names, state, self.cfg.get("gpus_per_trial", 0))
            self.logger.metrics(0, summary)  # the run table's columns
        self.session.report(final)
        return final
