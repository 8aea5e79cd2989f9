"""The MLflow run lifecycle every run kind shares (teacher, imported teacher, regression; the sweep's runs in
tracking/sweep_runs.py): open a run with its kind's tags, the git commit, its flattened config as params
(secrets left out) and its files; close it with a status, an optional error line and final metrics."""

from __future__ import annotations

from multistep.tracking import mlflow_layout as ml
from multistep.tracking import tags as tag


def open_run(
    client, uri: str, experiment: str, name: str, tags: dict, params: dict | None = None, files=(), folders=()
) -> str:
    """A RUNNING run in `experiment` (created if missing) with tags (+ the git commit), params (a nested config,
    flattened, secrets left out) and artifact files / folders (path, or (path, artifact folder)); its id."""
    exp_id = ml.ensure_experiment(client, experiment, uri)
    rid = client.create_run(exp_id, run_name=name, tags={tag.GIT_COMMIT: ml.git_commit()} | tags).info.run_id
    if params:
        ml.log_params(client, rid, ml.env_secrets_free(ml.flatten(params)))
    for f in files:
        client.log_artifact(rid, *((f,) if isinstance(f, str) else f))
    for f in folders:
        client.log_artifacts(rid, *((f,) if isinstance(f, str) else f))
    return rid


def close_run(client, rid: str, status: str, error: str | None = None, metrics: dict | None = None) -> None:
    """Final metrics, the error line (tag multistep.error, 5,000 characters at most), then the status."""
    for k, v in (metrics or {}).items():
        client.log_metric(rid, k, v)
    if error:
        client.set_tag(rid, tag.ERROR, error[:5000])
    client.set_terminated(rid, status=status)


def log_files(client, rid: str, path: str, folder: str | None = None) -> None:
    """A file or a whole folder as artifacts (under `folder`)."""
    from pathlib import Path

    (client.log_artifacts if Path(path).is_dir() else client.log_artifact)(rid, str(path), folder)


def set_tags(client, rid: str, tags: dict[str, str]) -> None:
    for k, v in tags.items():
        client.set_tag(rid, k, v)
