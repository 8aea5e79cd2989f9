"""A sweep's MLflow runs (the system of record of its status): the sweep run and its trial runs opened, marked
running, settled, closed when the sweep fails or is interrupted, finished, and read back into the results table.
No Ray here; sweep/driver.py calls these at each step of a sweep."""

from __future__ import annotations

import logging
import time

from multistep.tracking import mlflow_layout as ml
from multistep.tracking import tags as tag
from multistep.tracking.runs import close_run, log_files, open_run

log = logging.getLogger(__name__)


def open_sweep_run(client, uri: str, experiment: str, name: str, tags: dict, params: dict, file: str) -> str:
    return open_run(client, uri, experiment, name, tags, params, [file])


def open_trial_runs(client, experiment_id: str, srid: str, sweep_name: str, trials: list[tuple[str, str, dict]]):
    """SCHEDULED runs of the planned trials, each (run name, label, params), as children of the sweep run."""
    run_ids = []
    for i, (name, label, params) in enumerate(trials):
        rid = client.create_run(
            experiment_id, run_name=name, tags={t.key: t.value for t in ml.trial_tags(srid, i, label, sweep_name)}
        ).info.run_id
        ml.log_params(client, rid, ml.env_secrets_free(params))
        client.update_run(rid, status="SCHEDULED")
        run_ids.append(rid)
    return run_ids


def latest_sweep_run(client, experiment: str, name: str):
    """(experiment, the latest sweep run of this name) or (experiment or None, None)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None, None
    found = client.search_runs(
        [exp.experiment_id],
        f"tags.`{tag.SWEEP_NAME}` = '{name}' and tags.`{tag.KIND}` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return exp, (found[0] if found else None)


def reopen_sweep_run(client, sweep) -> None:
    """A resumed sweep's run: RUNNING again, no longer tagged incomplete."""
    client.update_run(sweep.info.run_id, status="RUNNING")
    if tag.INCOMPLETE in sweep.data.tags:
        client.delete_tag(sweep.info.run_id, tag.INCOMPLETE)


def experiment_of(client, rid: str) -> str:
    return client.get_run(rid).info.experiment_id


def mark_running(client, rid: str, trial_id: str) -> None:
    """A planned trial's run at its (re)start: RUNNING, known by its Ray trial id, no longer marked interrupted."""
    client.set_tag(rid, "ray.trial_id", trial_id)
    if tag.INTERRUPTED in client.get_run(rid).data.tags:  # running again: a later KILLED is ASHA's
        client.delete_tag(rid, tag.INTERRUPTED)
    client.update_run(rid, status="RUNNING")


def unfinished(client, run_ids: list[str]) -> list[int]:
    """Indices of the trials MLflow does not record as done (FINISHED, or KILLED by the scheduler)."""
    out = []
    for i, rid in enumerate(run_ids):
        run = client.get_run(rid)
        done = run.info.status == "FINISHED" or (run.info.status == "KILLED" and tag.INTERRUPTED not in run.data.tags)
        if not done:
            out.append(i)
    return out


def settle_trials(client, run_ids: list[str], last: dict[int, dict]) -> list[int]:
    """Every trial run's final status, from MLflow (the system of record) and Tune's results: the failed indices.

    FINISHED and KILLED (stopped early by the scheduler) stand; FAILED counts as failed; a run left RUNNING or
    SCHEDULED (a restored Tuner's callbacks are its original ones) becomes FINISHED when its last result is final,
    else FAILED. A trial Tune reports no result for at all (its state lost) is failed too. last: each trial's last
    result by index."""
    failed = []
    for i, rid in enumerate(run_ids):
        run = client.get_run(rid)
        st = run.info.status
        if st in ("RUNNING", "SCHEDULED") or (st == "KILLED" and tag.INTERRUPTED in run.data.tags):
            st = "FINISHED" if last.get(i, {}).get("final") else "FAILED"
            client.set_terminated(rid, status=st)
        if st != "KILLED" and tag.INTERRUPTED in run.data.tags:  # settled since the interruption
            client.delete_tag(rid, tag.INTERRUPTED)
        if st == "FAILED":
            failed.append(i)
    return failed


def trial_errors(client, run_ids: list[str], indices: list[int]) -> list[str]:
    """The error lines (tag multistep.error) of the trials at `indices`."""
    return [client.get_run(run_ids[i]).data.tags.get(tag.ERROR, "") for i in indices if i >= 0]


def close_incomplete(client, srid: str, run_ids: list[str], interrupted: bool) -> None:
    """The sweep failed (its run FAILED) or was interrupted (KILLED): tagged incomplete, every open trial run KILLED.
    A failure here (the store gone too) is reported, never raised over the error that brought us here."""
    try:
        client.set_tag(srid, tag.INCOMPLETE, "interrupted" if interrupted else "failed")
        client.set_terminated(srid, status="KILLED" if interrupted else "FAILED")
        exp_id = None if run_ids else client.get_run(srid).info.experiment_id
        for rid in run_ids or [r.info.run_id for r in ml.child_runs(client, exp_id, srid)]:  # adaptive: the runs opened
            if client.get_run(rid).info.status in ("RUNNING", "SCHEDULED"):
                client.set_tag(rid, tag.INTERRUPTED, "1")  # not stopped by the scheduler: a resume settles it again
                client.set_terminated(rid, status="KILLED")
    except Exception as e:
        log.warning(f"could not close the MLflow runs of sweep run {srid} ({type(e).__name__}: {e}); they stay open")


def finish_sweep_run(client, srid: str, t_start: float, failed: list[int], files=()) -> str:
    """The result files, the wall time (the first session that finishes the sweep logs it) and the final status:
    FAILED (tagged incomplete) when a trial failed; returns the experiment id."""
    for f in files:
        log_files(client, srid, str(f))
    wall = {} if client.get_metric_history(srid, "wall_seconds") else {"wall_seconds": time.time() - t_start}
    if failed:
        client.set_tag(srid, tag.INCOMPLETE, f"{len(failed)} trial(s) failed")
    close_run(client, srid, "FAILED" if failed else "FINISHED", metrics=wall)
    return experiment_of(client, srid)


def trial_metrics(client, run_ids: list[str]) -> list[dict]:
    """Each trial run's latest metrics (the run table's columns)."""
    return [client.get_run(rid).data.metrics for rid in run_ids]


def collect_rows(client, run_ids: list[str], trials: list[tuple[str, dict, int]], names: dict[str, str]) -> list[dict]:
    """Rows of the results table from each trial run's metric histories (step = sampling steps); trials: each
    run's (method label, its table cells, its training iterations).

    A metric logged as "<name>" belongs to the trial's method; "<name>/<label>" to an extra sampler.
    """
    rows = []
    for rid, (own, cells, iterations) in zip(run_ids, trials):
        run = client.get_run(rid)
        for key in run.data.metrics:
            metric, _, label = key.partition("/")
            if metric not in names.values():
                continue
            se_key = f"{metric}_se" + (f"/{label}" if label else "")  # bootstrap standard errors (eval.bootstrap)
            se = {m.step: m.value for m in client.get_metric_history(rid, se_key)} if se_key in run.data.metrics else {}
            for m in client.get_metric_history(rid, key):
                rows.append(
                    {
                        "method": label or own,
                        "student_steps": m.step,
                        "nfe": m.step,
                        "metric": metric,
                        "value": m.value,
                        "trial_id": run.data.tags.get("ray.trial_id", ""),
                        "run_id": rid,
                        **cells,
                        "train_iterations": iterations,
                        "wall_seconds": run.data.metrics.get("wall_seconds"),
                        "se": se.get(m.step),
                    }
                )
    return rows


def log_shared_assets(client, srid: str, first: dict, eval_rows: dict | None, reports: list) -> None:
    """On a new sweep's run: the teacher's curve, the reference's hash and floor, the kept evaluation rows (for
    `multistep claims`) and the warm starts' v-space errors (step = 1000 t)."""
    import tempfile
    from pathlib import Path

    from multistep.metrics.paired import EVAL_ROWS, save_rows

    for row in first["teacher_rows"]:
        ml.log_curve(client, srid, f"{row['metric']}/{row['method']}", [(row["student_steps"], row["value"])])
    client.set_tag(srid, tag.EVAL_REF_HASH, first["eval_ref_hash"])
    ml.log_params(client, srid, {f"noise_floor.{k}": f"{v:.6g}" for k, v in first["eval_ref"]["floor"].items()})
    if eval_rows:
        with tempfile.TemporaryDirectory() as d:
            for name, rows in eval_rows.items():
                log_files(client, srid, save_rows(rows, Path(d), name), EVAL_ROWS)
    for j, rep in enumerate(reports):
        suffix = "" if len(reports) == 1 else f"/{j}"
        ml.log_curve(
            client, srid, f"warmstart/v_rmse{suffix}", [(round(1000 * t), e) for t, e in rep["v_rmse"].items()]
        )
        stopped = {
            f"warmstart{suffix}.iterations": str(rep["iterations"]),
            f"warmstart{suffix}.stopped": rep["stopped"],
        }
        ml.log_params(client, srid, stopped)
