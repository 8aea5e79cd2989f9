"""`multistep teacher FILE`: train a network teacher through Ray Train and log it to MLflow.

This process (the driver) validates the file, opens the teacher's MLflow run (tag multistep.kind =
teacher) and fits a TorchTrainer (1 CPU worker by default). Rank 0 logs the loss curve (step =
iteration), saves the EMA weights with `save_teacher` as <storage>/teachers/<name>/teacher.pt (a
retrained teacher of the same name replaces it), logs that file as the run's `teacher.pt` artifact, and logs the teacher's DDIM FD-versus-steps curve
(step = steps). Gradients of several workers are averaged (train/replicas.py). A sweep then names the
teacher by path (`kind: checkpoint`) or by run (`kind: mlflow`); see the lines this command prints.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import datetime
from pathlib import Path

import yaml

from multistep.config import TEACHER_ARTIFACT, ConfigError, TeacherFileCfg
from multistep.data import data_kind
from multistep.tracking import tags as tag

log = logging.getLogger(__name__)


def net_config(cfg: TeacherFileCfg, shape: tuple[int, ...], captions: list[str] | None = None) -> dict:
    """The `build_net` config of the file's net for samples of `shape` (a caption-conditional UNet: one class per
    caption of the data's vocabulary, the text encoder's width)."""
    n = cfg.net.model_dump()
    if n["kind"] == "mlp":
        return {**n, "dim": math.prod(shape)}
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"unet needs square images (C, H, H), the data has shape {shape}")
    if encoder := n.pop("text_encoder"):
        if not captions:
            raise ValueError(f"text_encoder: {cfg.data.label} has no captions (caption data: a caption column)")
        if n["num_classes"] is not None:
            raise ValueError("num_classes: a caption-conditional net has one class per caption; leave it out")
        width = json.loads((Path(encoder) / "config.json").read_text()).get("hidden_size")
        n |= {"num_classes": len(captions), "text_dim": int(width)}
    return {**n, "in_ch": shape[0], "resolution": shape[1]}


def check(cfg: TeacherFileCfg, file: str) -> tuple[dict, int, dict | None]:
    """(net config, parameter count, captions) ; a net that cannot be built for the data is bad input. captions, for
    a caption-conditional net: {"captions": the data's vocabulary, "text_encoder": its folder, "table": the
    vocabulary's pooled encodings and the null prompt's}, encoded here once."""
    from multistep.train.build import sample_shape
    from multistep.train.teacher import build_net

    shape = sample_shape(cfg.data, where=f"{file}: ")
    kind = data_kind(cfg.data)
    encoder = getattr(cfg.net, "text_encoder", None)
    try:
        vocabulary = kind.captions(cfg.data) if encoder and kind.captions else None
        net_cfg = net_config(cfg, shape, vocabulary)
        n_params = sum(p.numel() for p in build_net(net_cfg).parameters())
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{file}: net: {e}") from None
    if cfg.train.batch_size < cfg.resources.num_workers:
        raise ConfigError(f"{file}: train.batch_size {cfg.train.batch_size} is smaller than resources.num_workers")
    captions = None
    if encoder:
        from multistep.nets.text import TextEncoder, caption_table

        try:
            table = caption_table(TextEncoder(encoder), vocabulary, "pooled")
        except ValueError as e:
            raise ConfigError(f"{file}: net.text_encoder: {e}") from None
        captions = {"captions": vocabulary, "text_encoder": encoder, "table": table}
    return net_cfg, n_params, captions


# -- driver: MLflow run lifecycle + TorchTrainer ----------------------------------------------------
def run_teacher(cfg: TeacherFileCfg, file: str, net_cfg: dict, tracking_uri: str, storage: Path, captions=None) -> dict:
    """Train, log and save one teacher; returns {status, run_id, path, history, curve}."""
    from mlflow.tracking import MlflowClient

    from multistep.sweep import ray_runtime
    from multistep.tracking.runs import close_run, open_run

    ray_runtime.apply_env()  # before Ray Train is imported
    import ray.train
    from ray.train.torch import TorchTrainer

    storage = Path(storage).resolve()
    client = MlflowClient(tracking_uri)
    teacher_id = f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path = storage / "teachers" / cfg.name / TEACHER_ARTIFACT  # stable for sweep files; each run's copy: its artifact
    tags = {tag.KIND: "teacher", tag.TEACHER_NAME: cfg.name, tag.DATASET: cfg.data.label, tag.NET: net_cfg["kind"]}
    tags |= {tag.STORAGE: str(path), "mlflow.note.content": cfg.description}
    rid = open_run(client, tracking_uri, cfg.experiment, teacher_id, tags, cfg.model_dump(mode="json"), [file])
    log.info(f"MLflow: experiment '{cfg.experiment}', teacher run {rid} ({tracking_uri})")
    r = cfg.resources
    t0 = time.time()
    try:
        ray_runtime.init_ray()
        trainer = TorchTrainer(
            teacher_worker,
            train_loop_config={
                "cfg": cfg.model_dump(mode="json"),
                "net": net_cfg,
                "run_id": rid,
                "tracking_uri": tracking_uri,
                "path": str(path),
                "threads": r.cpus_per_worker,
                "captions": captions,
            },
            scaling_config=ray.train.ScalingConfig(
                num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=r.per_worker
            ),
            run_config=ray.train.RunConfig(
                name=teacher_id,
                storage_path=str(storage),
                failure_config=ray.train.FailureConfig(max_failures=r.max_failures),
            ),
        )
        log.info(f"training teacher '{cfg.name}' ({cfg.train.iterations} iterations, {r.num_workers} worker(s))")
        out = trainer.fit().return_value or {}
    except Exception as e:  # a failed training is exit 1 with the reason, not a traceback
        close_run(client, rid, "FAILED", f"{type(e).__name__}: {e}")
        log.error(
            f"teacher training FAILED: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        )
        return {"status": "FAILED", "run_id": rid}
    except BaseException:
        close_run(client, rid, "KILLED")
        raise
    close_run(client, rid, "FINISHED", metrics={"wall_seconds": time.time() - t0})
    _say_how_to_use(cfg, rid, path, out)
    return {"status": "FINISHED", "run_id": rid, "path": str(path), **out}


def _say_how_to_use(cfg: TeacherFileCfg, rid: str, path: Path, out: dict) -> None:
    """The teacher's DDIM curve and the two lines that distil it in a sweep file."""
    fd = [row for row in out["curve"] if row["metric"].startswith("fd_")]
    log.info(
        "teacher DDIM curve: "
        + ", ".join(f"{row['steps']} steps {row['value']:.4g}" for row in fd)
        + f"  ({fd[0]['metric']}; noise floor {out['floor'][fd[0]['metric']]:.4g})"
    )
    log.info(f"teacher checkpoint: {path}")
    log.info(f"MLflow run id: {rid}")
    log.info(
        "to distil it, put these two lines in a sweep file (or name it by run: "
        f"teacher: {{kind: mlflow, run_id: {rid}}}):"
    )
    log.info(
        f"  data: {yaml.safe_dump(data_kind(cfg.data).identity(cfg.data), default_flow_style=True, width=1000).strip()}"
    )
    log.info(f"  teacher: {{kind: checkpoint, path: {path}}}")


# -- worker: one Ray Train rank ---------------------------------------------------------------------
def _save_and_curve(cfg: TeacherFileCfg, config: dict, ema_net, sched, data, history: list, logger, device):
    """Rank 0 after training: teacher.pt (with its data line, shape and captions) as the run's artifact, then its
    DDIM curve (step = steps) and noise floor on the run; returns (curve rows, floor)."""
    from multistep.metrics.evaluate import ddim_curve
    from multistep.nets.mlp import VDenoiser
    from multistep.tracking.mlflow_layout import log_curve, log_params
    from multistep.train.teacher import save_teacher

    meta = {
        "name": cfg.name,
        "run_id": config["run_id"],
        "schedule": cfg.schedule.model_dump(mode="json"),
        "data": data_kind(cfg.data).identity(cfg.data),
        "shape": list(data.shape),
        "iterations": cfg.train.iterations,
        "final_loss": history[-1]["loss"],
    }
    if captions := config.get("captions"):  # ids 0 .. K-1 of the net's conditions are these captions (K: "")
        meta |= {"captions": captions["captions"], "text_encoder": captions["text_encoder"]}
    path = save_teacher(config["path"], config["net"], ema_net.state_dict(), meta)
    logger.artifact(str(path))  # -> artifact "teacher.pt"
    ev = cfg.eval
    rows, floor = ddim_curve(
        VDenoiser(ema_net, sched), sched, data, ev.samples, ev.steps, ev.seed, cfg.data.fd_space, device
    )
    for metric in dict.fromkeys(row["metric"] for row in rows):  # step = number of DDIM steps
        points = [(row["steps"], row["value"]) for row in rows if row["metric"] == metric]
        log_curve(logger.client, config["run_id"], metric, points)
    log_params(logger.client, config["run_id"], {f"noise_floor.{k}": f"{v:.6g}" for k, v in floor.items()})
    return rows, floor


def _batches(cfg: TeacherFileCfg, data, rank: int, world: int, device):
    """Endless training batches of this rank's share (x or (x, y)) on `device`, as the data kind draws them."""
    from multistep.sweep.worker import on_device

    b, seed = cfg.train.batch_size // world, cfg.train.seed + 1000 * rank
    for batch in data_kind(cfg.data).training_batches(cfg.data, data, rank, world, b, seed):
        yield on_device(batch, device)


def teacher_worker(config: dict) -> dict:
    import ray.train
    import torch

    from multistep.diffusion.schedules import make_schedule
    from multistep.tracking.mlflow_layout import RunLogger
    from multistep.train.build import make_data
    from multistep.train.replicas import Replicas
    from multistep.train.teacher import build_net, train_teacher

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config["threads"])))
    cfg = TeacherFileCfg.model_validate(config["cfg"])
    t = cfg.train
    device = torch.device("cpu")
    if cfg.resources.use_gpu:
        from ray.train.torch import get_device

        device = get_device()
    sched = make_schedule(cfg.schedule.name, **cfg.schedule.params)
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    net = build_net(config["net"])
    if captions := config.get("captions"):  # the frozen caption table the net looks its conditions up in
        net.label_emb.table.copy_(captions["table"])
    net = net.to(device)
    data = make_data(cfg.data) if not data_kind(cfg.data).files or rank == 0 else None
    logger = RunLogger(config["tracking_uri"], config["run_id"]) if rank == 0 else None

    def log(it: int, m: dict) -> None:
        if logger:
            logger.metrics(it, {f"train/{k}": v for k, v in m.items()})  # step = iteration

    _, ema_net, history = train_teacher(
        net,
        sched,
        _batches(cfg, data, rank, world, device),
        t.iterations,
        t.learning_rate,
        t.ema,
        t.seed + 1000 * rank,
        log,
        t.grad_clip,
        t.label_dropout,
        t.log_every,
        Replicas() if world > 1 else None,
    )  # gradients averaged over ranks
    if rank != 0:
        return {}
    rows, floor = _save_and_curve(cfg, config, ema_net, sched, data, history, logger, device)
    return {"history": history, "curve": rows, "floor": floor}
