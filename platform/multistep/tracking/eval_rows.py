"""The kept evaluation rows (eval.keep_rows) of a sweep run and its trials, read back from MLflow for
`multistep claims`: the reference's and the teacher's from the sweep run, each trial's by method, steps and seed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from multistep.metrics.paired import EVAL_ROWS, FLOOR, REFERENCE
from multistep.tracking import tags as tag
from multistep.tracking.mlflow_layout import child_runs


def _download(client, run_id: str, dst: str) -> list[Path]:
    if not any(f.path == EVAL_ROWS for f in client.list_artifacts(run_id)):
        return []
    return sorted(Path(client.download_artifacts(run_id, EVAL_ROWS, dst)).glob("*.npy"))


def _point(path: Path) -> tuple[str, int]:
    label, _, steps = path.stem.rpartition("_")  # <label>_<steps>.npy; labels may hold "_" themselves
    return label, int(steps)


def load(client, sweep) -> tuple[dict, np.ndarray | None, dict]:
    """(points {(label, steps): {train.seed: rows}}, the reference's rows or None, {(label, steps): iterations})
    of a sweep run's FINISHED trials; the teacher's points under train.seed -1 (the same rows for every seed), and
    the floor's second data sample as the point ("floor", 0)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file, dozens of files
    srid = sweep.info.run_id
    points: dict = {}
    iterations: dict = {}
    ref = None
    with tempfile.TemporaryDirectory() as d:
        for f in _download(client, srid, f"{d}/sweep"):
            if f.stem == REFERENCE:
                ref = np.load(f)
            elif f.stem == FLOOR:
                points[(FLOOR, 0)] = {-1: np.load(f)}
            else:
                points.setdefault(_point(f), {})[-1] = np.load(f)
        for run in child_runs(client, sweep.info.experiment_id, srid):
            if run.info.status != "FINISHED" or tag.TRIAL_INDEX not in run.data.tags:
                continue
            seed = int(run.data.params.get("train.seed", 0))
            for f in _download(client, run.info.run_id, f"{d}/{run.info.run_id}"):
                key = _point(f)
                points.setdefault(key, {})[seed] = np.load(f)
                iterations[key] = int(run.data.params.get("train.iterations", 0))
    return points, ref, iterations
