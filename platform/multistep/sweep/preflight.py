"""Pre-flight: everything a sweep writes to and reads from is checked before Ray starts or an MLflow run exists.

`multistep sweep` (and `--dry-run`, which runs the same checks) calls `preflight` right after the sweep file
validated. Each failure is a ConfigError: one line naming the flag or field and the value, exit 2, nothing
started, nothing created (probes are made in the nearest existing folder and removed at once). docs/reliability.md
lists the checks and the tests that show them.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from multistep.atomic import cannot_write_in, check_output_folder, existing_ancestor
from multistep.config import ConfigError, SweepPlan, TrialCfg
from multistep.config.errors import first_line
from multistep.data import data_kind
from multistep.teachers import teacher_kind

log = logging.getLogger(__name__)

# Tracking-store schemes MLflow 3.17 opens (its SQLAlchemy dialects, the REST client, Databricks, file stores)
TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")


def tracking_uri(arg: str | None) -> str:
    """--tracking-uri made absolute and checked: a supported scheme, a SQLite file that can be written (or made),
    a server that answers. Default: sqlite:///<cwd>/mlflow.db."""
    from multistep.tracking.mlflow_layout import absolute_uri, check_reachable, default_tracking_uri

    if not arg:
        uri = default_tracking_uri()
    elif "://" not in arg and not arg.endswith(".db"):
        raise ConfigError(
            f"--tracking-uri {arg}: a bare path must name a SQLite file ending in .db "
            "(or give sqlite:///PATH.db, http://HOST:PORT, postgresql://...)"
        )
    else:
        uri = absolute_uri(arg)
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(
            f"--tracking-uri {arg}: unsupported scheme {scheme!r} (MLflow stores: {', '.join(TRACKING_SCHEMES)})"
        )
    if scheme == "sqlite":
        _writable_file(Path(uri[len("sqlite:///") :]), f"--tracking-uri {arg or uri}")
    check_reachable(uri)
    return uri


def _writable_file(path: Path, what: str) -> None:
    """`path` can be opened for writing: an existing writable file, or a new one in a folder that exists or can
    be made (a probe in its nearest existing ancestor)."""
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a folder, not a database file")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{what}: {path} is not writable")
        return
    anc = existing_ancestor(path.parent)
    if not anc.is_dir() or cannot_write_in(anc):
        raise ConfigError(f"{what}: cannot create {path} ({anc} is not a writable folder)")


class Storage:
    """--storage checked without creating anything: a local folder (atomic.check_output_folder: not a file, writable
    where it will be made), or a URI whose scheme pyarrow knows and where a probe file is written and deleted."""

    def __init__(self, arg: str):
        self.arg = arg
        if "://" in arg:
            self.uri = arg.rstrip("/")
            self._probe_uri()
        else:
            self.uri = str(check_output_folder(arg, "--storage").resolve())

    def _probe_uri(self) -> None:
        import pyarrow.fs as pafs

        try:
            fs, root = pafs.FileSystem.from_uri(self.uri)
        except Exception as e:  # unknown scheme, bad bucket name, missing credentials
            raise ConfigError(f"--storage {self.arg}: not a storage URI pyarrow can open ({first_line(e)})") from None
        probe = f"{root}/.multistep-probe-{uuid.uuid4().hex[:8]}"
        try:
            fs.create_dir(root, recursive=True)
            with fs.open_output_stream(probe) as out:
                out.write(b"probe")
            fs.delete_file(probe)
        except Exception as e:
            raise ConfigError(f"--storage {self.arg}: a probe write there failed ({first_line(e)})") from None


def inputs(plan: SweepPlan, check_data: bool = False) -> None:
    """Teacher and data files of every distinct (data, teacher) pair exist, open and agree in shape; eval sizes are
    meaningful. Parquet footers and teacher checkpoints are read; with `check_data`, every byte of the Parquet data
    too (verify_data)."""
    seen, checked = set(), set()
    for i in range(len(plan.trials)):
        tc = plan.trial_cfg(i)
        key = (repr(tc.data.model_dump()), repr(tc.teacher.model_dump()), tc.method.gan)
        if key in seen:
            continue
        seen.add(key)
        _check_pair(tc, plan.path)
        if tc.method.gan and teacher_kind(tc.teacher).opaque and tc.student.copy_teacher:
            raise ConfigError(
                f"{plan.path}: method.gan: the fake score copies the TorchScript teacher, which has no middle "
                "features to read; use student.copy_teacher: false or a state_dict / diffusers teacher"
            )
        if check_data and data_kind(tc.data).files and tc.data.path not in checked:
            checked.add(tc.data.path)
            verify_data(tc.data, f"{plan.path}: ")


def verify_data(d, where: str = "") -> None:
    """Parquet data read whole before anything starts: against its manifest.json (sha256 and rows per shard), or
    by decoding every row group; a problem is a ConfigError naming the shard and the row group."""
    from multistep.data.manifest import verify

    try:
        done = verify(d.path)
    except ValueError as e:
        raise ConfigError(f"{where}data.path: {e}") from None
    log.info(done.line(f"data.path {d.path}"))


def _check_pair(tc: TrialCfg, path: str) -> None:
    from multistep.train.build import sample_shape

    shape = sample_shape(tc.data, where=f"{path}: ")
    check_eval(tc, shape, f"{path}: ")
    teacher_kind(tc.teacher).preflight(tc, shape, f"{path}: ")


def check_eval(tc: TrialCfg, shape: tuple, where: str = "") -> None:
    """The detector is a TorchScript file that loads, and eval.reference's statistics have the dimension of the
    features FD compares (before any sampling)."""
    ev = tc.eval
    if tc.feature_space == "inception":
        from multistep.metrics.extractors import InceptionExtractor

        try:
            InceptionExtractor(ev.inception_path)
        except ValueError as e:
            raise ConfigError(f"{where}eval.inception_path: {e}") from None
    if ev.clip_path:
        _check_clip(tc, where)
    if ev.prompts:
        from multistep.sweep.assets import prompt_ids

        try:
            prompt_ids(tc)
        except ConfigError as e:
            raise ConfigError(f"{where}{e}") from None
    if ev.reference:
        from multistep.metrics.reference import expected_dim, load

        r, dim = load(ev.reference), expected_dim(tc.feature_space, shape)
        if dim is not None and r.dim != dim:
            raise ConfigError(
                f"{where}eval.reference: {ev.reference} holds statistics of dimension {r.dim}, but {tc.feature_space} "
                f"features of this data have dimension {dim}"
            )


def _check_clip(tc: TrialCfg, where: str) -> None:
    """eval.clip_path scores caption data with a CLIPModel that loads."""
    from multistep.metrics.clip import ClipScore

    kind = data_kind(tc.data)
    if not (kind.captions and kind.captions(tc.data)):
        raise ConfigError(f"{where}eval.clip_path: text alignment needs caption data; {tc.data.label} has no captions")
    try:
        ClipScore(tc.eval.clip_path)
    except ValueError as e:
        raise ConfigError(f"{where}{e}") from None


def resources(plan: SweepPlan) -> None:
    """A local Ray (no RAY_ADDRESS) offers this machine's CPUs and GPUs: a trial asking for more never starts."""
    if os.environ.get("RAY_ADDRESS"):
        return  # a cluster may add nodes (autoscaler); the driver compares with the cluster once joined
    r = plan.cfg.resources
    cpus, need = os.cpu_count() or 1, r.num_workers * r.cpus_per_worker  # one trial's workers, all at once
    if need > cpus:
        raise ConfigError(
            f"{plan.path}: resources.cpus_per_worker: {r.cpus_per_worker:g} x {r.num_workers} worker(s) = {need:g} "
            f"CPUs, but this machine (local Ray) has {cpus} CPUs"
        )
    if r.use_gpu:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"{plan.path}: resources.use_gpu: true, but local Ray would see no GPU on this machine")
        gpus = r.num_workers * (r.gpus_per_worker or 1)
        if gpus > torch.cuda.device_count():
            raise ConfigError(
                f"{plan.path}: resources.num_workers: {r.num_workers} worker(s) x {r.gpus_per_worker or 1:g} GPU = "
                f"{gpus:g} GPUs, this machine has {torch.cuda.device_count()}"
            )


def resumable(plan: SweepPlan, uri: str) -> None:
    """--resume: an earlier sweep of this name exists in the store, and the file still expands to its trials."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():  # opening would create it
        raise ConfigError(
            f"{plan.path}: --resume: no earlier sweep named '{plan.cfg.name}' ({uri[len('sqlite:///') :]} does not exist)"
        )
    from mlflow.tracking import MlflowClient

    from multistep.sweep.driver import resume_target

    resume_target(MlflowClient(uri), plan)


def preflight(
    plan: SweepPlan, tracking: str | None, storage: str, resume: bool, check_data: bool = True
) -> tuple[str, str]:
    """All checks, cheapest first: (tracking URI, storage path or URI) ready for run_sweep. Nothing is created."""
    resources(plan)
    uri = tracking_uri(tracking)
    store = Storage(storage)
    inputs(plan, check_data)
    if resume:
        resumable(plan, uri)
    return uri, store.uri
