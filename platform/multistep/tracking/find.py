"""Reading runs back: the queries `multistep regress`, `claims` and `bench` ask the tracking store (sweep runs by
name, by tag or by storage folder, a run's artifact file, a metric's history)."""

from __future__ import annotations

from multistep.tracking import tags as tag


def experiment_id(client, name: str) -> str | None:
    exp = client.get_experiment_by_name(name)
    return None if exp is None else exp.experiment_id


def sweep_runs(client, experiment_ids: list[str] | None, where: str, limit: int = 1, newest_first: bool = True):
    """Sweep runs (tag multistep.kind = sweep) matching the filter `where`, in the given experiments (None: all)."""
    ids = experiment_ids if experiment_ids is not None else [e.experiment_id for e in client.search_experiments()]
    order = ["attributes.start_time DESC"] if newest_first else None
    return client.search_runs(ids, f"tags.`{tag.KIND}` = 'sweep' and {where}", order_by=order, max_results=limit)


def runs_tagged(client, experiment_id: str, key: str, value: str, limit: int = 100) -> list:
    return client.search_runs([experiment_id], f"tags.`{key}` = '{value}'", max_results=limit)


def trial_runs(client, experiment_id: str, limit: int) -> list:
    """The latest `limit` trial runs of an experiment."""
    return client.search_runs(
        [experiment_id], f"tags.`{tag.KIND}` = 'trial'", order_by=["attributes.start_time DESC"], max_results=limit
    )


def artifact_file(client, run_id: str, name: str, folder: str) -> str:
    """A run's artifact downloaded into folder; its local path (MLflow's exceptions pass through)."""
    return client.download_artifacts(run_id, name, folder)


def artifact_names(client, run_id: str, suffixes: tuple[str, ...]) -> list[str]:
    return [a.path for a in client.list_artifacts(run_id) if a.path.endswith(suffixes)]


def metric_history(client, run_id: str, key: str) -> list:
    """A metric's points by step."""
    return sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)


def delete_tag(client, run_id: str, key: str) -> None:
    client.delete_tag(run_id, key)
