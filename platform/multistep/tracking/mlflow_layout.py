"""The MLflow layout every tool relies on (docs/architecture.md, "Contracts").

One run per sweep; one nested run per trial (tag mlflow.parentRunId); training curves with
step = iteration; evaluation metrics with step = number of sampling steps, so MLflow's own chart of
a metric against its step is the metric-versus-steps curve. The sweep driver owns run lifecycles;
workers only log into the run id they are given (RunLogger).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from multistep.config import ConfigError
from multistep.tracking import tags as tag

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


def default_tracking_uri() -> str:
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def absolute_uri(uri: str) -> str:
    """Make a sqlite or file URI absolute (Train workers change directory); others pass through."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"
    if "://" not in uri:
        return f"sqlite:///{Path(uri).resolve()}" if uri.endswith(".db") else uri
    return uri


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast (exit 2) when a tracking server cannot be reached, before any training."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as r:
            r.read()
    except Exception as e:  # any failure means unreachable
        raise ConfigError(
            f"--tracking-uri {uri}: MLflow tracking server unreachable ({e.__class__.__name__}: {e})"
        ) from None


def git_commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
            ).stdout.strip()
            or "unknown"
        )
    except Exception:
        return "unknown"


def ui_hint(uri: str, experiment_id: str) -> str:
    """Where to look: the address of the experiment's runs view (a server's own, or `mlflow ui`'s default port), on
    MLflow's model-training view (3.x opens on the GenAI one otherwise)."""
    view = f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    charts = (
        " (expand the sweep run for its trials; the Chart view plots each metric against its step: sampling "
        "steps for fd_*/kid_*/swd_*, iterations for train/*; the sweep run's <metric>/<method> are the curves)"
    )
    if uri.startswith(("http://", "https://")):
        return f"MLflow runs: {uri.rstrip('/')}{view}{charts}"
    return f"MLflow runs: mlflow ui --backend-store-uri {uri}, then open http://127.0.0.1:5000{view}{charts}"


def client(uri: str) -> MlflowClient:
    return MlflowClient(uri)


def get_run(client: MlflowClient, run_id: str):
    """The run `run_id`, or None when the store has no such run."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):  # local store: keep artifacts next to the database, absolute
        artifact_location = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts" / name).as_uri()
    return client.create_experiment(
        name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: "custom_model_development"}
    )


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def log_curve(client: MlflowClient, run_id: str, key: str, points: list[tuple[int, float]]) -> None:
    """Log (step, value) points of `key`, skipping those the run already holds: a resumed or re-run sweep logs no
    duplicate point (a step whose value changed is logged again, as an update)."""
    have = {(m.step, m.value) for m in client.get_metric_history(run_id, key)}
    now = int(time.time() * 1000)
    new = [Metric(key, float(v), now, int(step)) for step, v in points if (int(step), float(v)) not in have]
    if new:
        client.log_batch(run_id, metrics=new)


class RunLogger:
    """What a rank-0 worker uses: logs into a given run id, retrying brief outages with backoff.

    Metrics that cannot be sent are kept and re-sent with the next batch, so a short outage loses
    nothing; only after `retries` failures in a row does it raise.
    """

    def __init__(self, uri: str, run_id: str, retries: int = 6):
        self.client, self.run_id, self.retries = MlflowClient(uri), run_id, retries
        self.pending: list[Metric] = []
        self.logged: set[tuple[str, int]] = set()  # (key, step) points already in the run (filled on resume)

    def resume(self) -> None:
        """A resumed worker redoes work since its last checkpoint: keep the points logged before, skip repeats."""
        for key in self.client.get_run(self.run_id).data.metrics:
            self.logged |= {(key, m.step) for m in self.client.get_metric_history(self.run_id, key)}

    def metrics(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.pending += [
            Metric(k, float(v), now, int(step)) for k, v in values.items() if (k, int(step)) not in self.logged
        ]
        self.flush()

    def flush(self) -> None:
        delay = 0.5
        for attempt in range(self.retries):
            try:
                for i in range(0, len(self.pending), 1000):
                    self.client.log_batch(self.run_id, metrics=self.pending[i : i + 1000])
                self.pending = []
                return
            except Exception:
                if attempt == self.retries - 1:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

    def artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)


def trial_tags(sweep_run_id: str, index: int, label: str, sweep_name: str) -> list[RunTag]:
    return [
        RunTag("mlflow.parentRunId", sweep_run_id),
        RunTag(tag.TRIAL_INDEX, str(index)),
        RunTag(tag.METHOD, label),
        RunTag(tag.SWEEP_NAME, sweep_name),
        RunTag(tag.KIND, "trial"),
    ]


def child_runs(client, experiment_id: str, parent_run_id: str, extra: str = "") -> list:
    """The runs nested under a run (a sweep's trials), optionally filtered further (`extra`: an MLflow filter)."""
    where = f"tags.`mlflow.parentRunId` = '{parent_run_id}'" + (f" and {extra}" if extra else "")
    return client.search_runs([experiment_id], where, max_results=10000)


def find_trial_run(client, sweep: dict, trial_id: str):
    """The trial run nested under the sweep run with this Ray trial id, or None."""
    found = child_runs(client, sweep["experiment_id"], sweep["run_id"], f"tags.`ray.trial_id` = '{trial_id}'")
    return found[0] if found else None


def proposed_trial_run(client, sweep: dict, trial_id: str, label: str, doc: dict, values: dict) -> tuple[int, str]:
    """(index, run id) of an adaptive search's trial, opened by the driver when Tune starts it (nothing is planned up
    front): found again by its Ray trial id when the trial restarts (a resume, a retry), else created nested under
    the sweep run as the next index, with the trial's params and the proposal as JSON. Left RUNNING."""
    import json

    if (run := find_trial_run(client, sweep, trial_id)) is not None:
        if tag.INTERRUPTED in run.data.tags:
            client.delete_tag(run.info.run_id, tag.INTERRUPTED)
        client.update_run(run.info.run_id, status="RUNNING")
        return int(run.data.tags[tag.TRIAL_INDEX]), run.info.run_id
    srid, exp_id = sweep["run_id"], sweep["experiment_id"]
    index = len(child_runs(client, exp_id, srid))
    tags = {t.key: t.value for t in trial_tags(srid, index, label, sweep["name"])}
    tags |= {"ray.trial_id": trial_id, tag.SEARCH_VALUES: json.dumps(values, sort_keys=True)}
    S = doc["method"]["student_steps"]
    rid = client.create_run(exp_id, run_name=f"{label}-S{S}-{index:03d}", tags=tags).info.run_id
    log_params(client, rid, env_secrets_free(flatten(doc) | {f"search.{k}": str(v) for k, v in values.items()}))
    return index, rid


def env_secrets_free(params: dict[str, str]) -> dict[str, str]:
    """Drop anything that looks like a credential before it reaches params or tags."""
    secret_words = ("password", "token", "secret", "credential")
    return {
        k: v
        for k, v in params.items()
        if not any(w in k.lower() for w in secret_words)
        and v not in {os.environ.get("MLFLOW_TRACKING_PASSWORD"), os.environ.get("MLFLOW_TRACKING_TOKEN")} - {None}
    }
