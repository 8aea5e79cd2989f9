"""`multistep regress FILE`: run a fixed sweep (or reuse a finished one), compare it with a baseline, say so.

The baseline of a regression sweep is the sweep run that carries the tag multistep.regression_baseline =
<sweep name> (moved by `multistep regress --promote RUN_ID --reason TEXT`, which records who, when and why on
the run), or any sweep run or results file given with --baseline. The comparison itself is
multistep.regress.compare (pure); this module is the MLflow and Ray side. Every regress run becomes an MLflow run
(multistep.kind = regression) with the report, the plot and the table as artifacts, tagged with the
baseline it used; its status is FAILED when a point regressed, so the MLflow UI shows the red light.
"""

from __future__ import annotations

import getpass
import logging
import math
import os
import re
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from multistep.config import ConfigError
from multistep.tracking import find
from multistep.tracking import tags as tag

log = logging.getLogger(__name__)

BASELINE_TAG = tag.REGRESSION_BASELINE  # on a sweep run; value: the name of the sweep it is the baseline of
TABLE = "results.parquet"  # the sweep run's results table artifact (sweep/driver.py)


def who() -> str:
    """user@host of this process ($MULTISTEP_USER overrides the user, e.g. a CI job's actor)."""
    try:
        user = os.environ.get("MULTISTEP_USER") or getpass.getuser()
    except OSError:  # no passwd entry (some containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- runs -------------------------------------------------------------------------------------------
def sweep_run(client, run_id: str, flag: str):
    """The sweep run `run_id` names (a regression run stands for the sweep run it checked); bad ids are exit 2."""
    from multistep.tracking import mlflow_layout as ml

    if (run := ml.get_run(client, run_id)) is None:
        raise ConfigError(f"{flag} {run_id}: no such run in the tracking store")
    kind = run.data.tags.get(tag.KIND)
    if kind == "regression":
        return sweep_run(client, run.data.tags[tag.REGRESS_CURRENT_RUN], flag)
    if kind != "sweep":
        raise ConfigError(
            f"{flag} {run_id}: a {kind or 'non-multistep'} run, not a sweep run (tag multistep.kind = sweep)"
        )
    return run


def sweep_run_or_latest(client, arg: str):
    """RUN_OR_SWEEP: a sweep run id (a regression run stands for the sweep it checked), or a sweep name: its latest
    FINISHED sweep run in the tracking store. ConfigError (exit 2) when there is none."""
    if re.fullmatch(r"[0-9a-f]{32}", arg):
        return sweep_run(client, arg, "RUN_OR_SWEEP")
    runs = find.sweep_runs(client, None, f"tags.`{tag.SWEEP_NAME}` = '{arg}' and attributes.status = 'FINISHED'")
    if not runs:
        raise ConfigError(
            f"RUN_OR_SWEEP {arg}: no finished sweep run of that name (nor a run id) in the tracking store"
        )
    return runs[0]


def read_run_table(client, run, flag: str) -> list[dict]:
    from multistep.regress.compare import read_table

    if run.info.status in ("RUNNING", "SCHEDULED"):
        raise ConfigError(f"{flag} {run.info.run_id}: the sweep is still {run.info.status}")
    with tempfile.TemporaryDirectory() as d:
        try:
            path = find.artifact_file(client, run.info.run_id, TABLE, d)
        except Exception:  # any failure means there is no table to compare
            raise ConfigError(
                f"{flag} {run.info.run_id}: the run has no {TABLE} artifact (the sweep did not finish)"
            ) from None
        return read_table(path)


def baselines(client, experiment_id: str, name: str) -> list:
    """Sweep runs tagged as the baseline of `name`, newest promotion first (normally exactly one)."""
    runs = find.runs_tagged(client, experiment_id, BASELINE_TAG, name)
    return sorted(runs, key=lambda r: r.data.tags.get(tag.BASELINE_PROMOTED_AT, ""), reverse=True)


def promote(client, run_id: str, reason: str, file_name: str | None) -> int:
    """Move the baseline tag of the run's sweep name to `run_id`, recording who/when/why; untag the old one."""
    run = sweep_run(client, run_id, "--promote")
    rid, name = run.info.run_id, run.data.tags[tag.SWEEP_NAME]
    if file_name is not None and file_name != name:
        raise ConfigError(f"--promote {run_id}: the run is a sweep named '{name}', the file's sweep is '{file_name}'")
    if run.info.status != "FINISHED":
        raise ConfigError(
            f"--promote {run_id}: the sweep run's status is {run.info.status}; only a FINISHED sweep "
            "(every trial finished) can be a baseline"
        )
    if why := run.data.tags.get(tag.INCOMPLETE):
        raise ConfigError(
            f"--promote {run_id}: the sweep is incomplete ({why}); only a complete sweep can be a baseline"
        )
    from multistep.tracking import mlflow_layout as ml
    from multistep.tracking.runs import set_tags

    open_trials = [
        t.info.run_id
        for t in ml.child_runs(client, run.info.experiment_id, rid)
        if t.info.status not in ("FINISHED", "KILLED") or (t.info.status == "KILLED" and tag.INTERRUPTED in t.data.tags)
    ]
    if open_trials:
        raise ConfigError(
            f"--promote {run_id}: {len(open_trials)} trial run(s) did not finish (e.g. {open_trials[0]}); "
            "only a sweep whose every trial finished can be a baseline"
        )
    read_run_table(client, run, "--promote")  # it must have a readable results table
    by, at = who(), _now()
    old = [r for r in baselines(client, run.info.experiment_id, name) if r.info.run_id != rid]
    for o in old:
        find.delete_tag(client, o.info.run_id, BASELINE_TAG)
        demoted = {"demoted_by": by, "demoted_at": at, "replaced_by": rid}
        set_tags(client, o.info.run_id, {f"{tag.BASELINE_PREFIX}{k}": v for k, v in demoted.items()})
    tags = {
        BASELINE_TAG: name,
        tag.BASELINE_PROMOTED_BY: by,
        tag.BASELINE_PROMOTED_AT: at,
        tag.BASELINE_REASON: reason,
        tag.BASELINE_REPLACES: ",".join(o.info.run_id for o in old),
    }
    set_tags(client, rid, tags)
    was = ", ".join(o.info.run_id for o in old) or "none"
    log.info(
        f"sweep run {rid} ({run.data.tags.get(tag.SWEEP_ID, '')}) is now the baseline of regression sweep "
        f"'{name}' (previous: {was}); promoted by {by} at {at}: {reason}"
    )
    return 0


def _no_baseline(file: str, name: str, experiment: str) -> ConfigError:
    return ConfigError(
        f"{file}: no baseline for regression sweep '{name}' in experiment '{experiment}'. Promote a finished sweep run "
        f"of this file: `multistep regress --promote RUN_ID --reason TEXT` (RUN_ID: a run of `multistep sweep {file}` "
        "or the sweep run of an earlier `multistep regress`), or give one with --baseline RUN_ID|PATH"
    )


def resolve_baseline(client, arg: str | None, cfg, file: str) -> tuple[list[dict], dict, dict]:
    """(rows, report facts, MLflow tags) of the baseline: --baseline PATH or RUN_ID, else the promoted run."""
    from multistep.regress.compare import read_table

    if arg and Path(arg).exists():
        try:
            rows = read_table(arg)
        except Exception as e:  # unreadable or not a table: bad input
            raise ConfigError(f"--baseline {arg}: cannot read a results table ({e.__class__.__name__}: {e})") from None
        path = str(Path(arg).resolve())
        return rows, {"baseline": f"results file {path}"}, {tag.REGRESS_BASELINE: f"file:{path}"}
    if arg:
        run = sweep_run(client, arg, "--baseline")
        how = "given with --baseline"
    else:
        exp_id = find.experiment_id(client, cfg.experiment)
        found = baselines(client, exp_id, cfg.name) if exp_id else []
        if not found:
            raise _no_baseline(file, cfg.name, cfg.experiment)
        run = found[0]
        t = run.data.tags
        how = (
            f"promoted by {t.get(tag.BASELINE_PROMOTED_BY, '?')} at {t.get(tag.BASELINE_PROMOTED_AT, '?')}: "
            f"{t.get(tag.BASELINE_REASON, '')}"
        )
    t = run.data.tags
    facts = {
        "baseline": f"sweep run {run.info.run_id} ({t.get(tag.SWEEP_ID, '')}, git {t.get(tag.GIT_COMMIT, '?')[:12]}), {how}"
    }
    return (
        read_run_table(client, run, "--baseline"),
        facts | {"_plan_hash": t.get(tag.PLAN_HASH, "")},
        {tag.REGRESS_BASELINE: f"run:{run.info.run_id}", tag.REGRESS_BASELINE_RUN: run.info.run_id},
    )


def _new_sweep_run(client, cfg, storage: Path):
    """The sweep run run_sweep just made in `storage`, a folder only this regress job writes (name, time and pid):
    found by its storage tag, so a concurrent regress job of the same sweep cannot be taken for it."""
    exp_id = find.experiment_id(client, cfg.experiment)
    pattern = str(storage).replace("'", "_")  # a quote cannot be escaped in the filter; "_" matches any one character
    where = f"tags.`{tag.STORAGE}` LIKE '{pattern}/%'"
    runs = find.sweep_runs(client, [exp_id], where, limit=2, newest_first=False) if exp_id else []
    if len(runs) != 1:
        raise RuntimeError(f"the sweep '{cfg.name}' ran but its MLflow sweep run (storage {storage}) was not found")
    return runs[0]


# -- the command ------------------------------------------------------------------------------------
def check_file(plan, file: str) -> None:
    """A regression sweep needs a regression section; `ci` tolerances need bootstrap standard errors."""
    reg = plan.cfg.regression
    if reg is None:
        raise ConfigError(
            f"{file}: regression: missing (a regression sweep needs tolerances, e.g. "
            "`regression: {tolerances: {fd: {rel: 0.05}}}`; see docs/regression.md)"
        )
    for fam, tol in reg.tolerances.items():
        if tol.ci is not None and not all(plan.trial_cfg(i).eval.bootstrap for i in range(len(plan.trials))):
            raise ConfigError(
                f"{file}: regression.tolerances.{fam}.ci: needs eval.bootstrap > 0 (the bootstrap standard "
                "error of every point), e.g. eval: {bootstrap: 100}"
            )


def _write_report(out: Path, cfg, points, facts: dict) -> str:
    """regression.md / .png / .csv / .txt in `out`; returns the printed table."""
    from multistep.regress import compare as rg
    from multistep.sweep.results import write_csv

    out.mkdir(parents=True, exist_ok=True)
    table = rg.format_table(points)
    png = rg.plot(points, out / "regression.png", f"{cfg.name}: baseline (dashed) vs current (thick)")
    (out / "regression.md").write_text(rg.markdown(points, facts, png.name))
    (out / "regression.txt").write_text(table + "\n")
    blank_nan = lambda v: "" if isinstance(v, float) and math.isnan(v) else v
    write_csv([{k: blank_nan(v) for k, v in r.items()} for r in rg.to_rows(points)], out / "regression.csv")
    return table


def _current_sweep(client, plan, run_id: str | None, storage: str, uri: str):
    """(the sweep run to check, 1 when some of its trials failed): run_id's (--run), or a fresh run of the file."""
    cfg = plan.cfg
    if run_id:
        cur = sweep_run(client, run_id, "--run")
        if cur.data.tags.get(tag.SWEEP_NAME) != cfg.name:
            raise ConfigError(
                f"--run {run_id}: a sweep named '{cur.data.tags.get(tag.SWEEP_NAME)}', the file's sweep is '{cfg.name}'"
            )
        return cur, 1 if cur.info.status == "FAILED" else 0
    from multistep.sweep.driver import run_sweep

    # a fresh storage folder, so a fresh cache: evaluation reference, teacher curve and warm start are
    # recomputed by today's code (a cache hit would hide a regression in them)
    stamp = f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    folder = Path(storage).resolve() / "regress" / stamp
    sweep_rc = run_sweep(plan, uri, str(folder))
    return _new_sweep_run(client, cfg, folder), sweep_rc


def _facts(cfg, file: str, cur, sweep_rc: int, facts: dict) -> dict:
    """The report's header: the sweep, the current run, the baseline, the tolerances (and a changed plan)."""
    plan_hash = facts.pop("_plan_hash", None)
    git = cur.data.tags.get(tag.GIT_COMMIT, "?")[:12]
    out = {
        "sweep": f"{cfg.name} ({file})",
        "current": f"sweep run {cur.info.run_id} ({cur.data.tags.get(tag.SWEEP_ID, cur.info.run_id)}, git {git})"
        + (", some trials FAILED" if sweep_rc else ""),
        **facts,
        "tolerances": "; ".join(
            f"{k}: " + ", ".join(f"{a} {v:g}" for a, v in t.model_dump(exclude_none=True).items())
            for k, t in cfg.regression.tolerances.items()
        ),
    }
    if plan_hash and plan_hash != cur.data.tags.get(tag.PLAN_HASH):
        out["note"] = (
            "the baseline ran a different plan (sweep file or defaults changed): differences may come from "
            "the configuration, not the code"
        )
    return out


def regress(
    client,
    plan,
    uri: str,
    storage: str,
    baseline: str | None = None,
    run_id: str | None = None,
    out: str | None = None,
    dry_run: bool = False,
) -> int:
    """Check the sweep run `run_id` (else a fresh run of the plan, in a fresh storage folder under `storage`)
    against `baseline` (a run id; else the sweep name's baseline tag); the report goes to `out` (default
    <storage>/regress/reports/<regression run name>) and onto a regression run. 1 when a point regressed."""
    from multistep.regress import compare as rg
    from multistep.tracking.runs import close_run, log_files, open_run, set_tags

    cfg, file = plan.cfg, plan.path
    base_rows, facts, base_tags = resolve_baseline(client, baseline, cfg, file)  # before any training
    if dry_run:
        log.info(
            f"{file}: valid; baseline: {facts['baseline']} ({len(base_rows)} rows); would "
            + (f"compare sweep run {run_id}" if run_id else f"run {len(plan.trials)} trial(s) and compare them")
        )
        return 0
    cur, sweep_rc = _current_sweep(client, plan, run_id, storage, uri)
    cur_rows = read_run_table(client, cur, "--run")
    srid, sweep_id = cur.info.run_id, cur.data.tags.get(tag.SWEEP_ID, cur.info.run_id)

    points = rg.compare(base_rows, cur_rows, cfg.regression.tolerances, cfg.regression.teacher)
    base_keys, cur_keys = set(rg.best_points(base_rows)), set(rg.best_points(cur_rows))
    if not points or (cur_keys and not base_keys & cur_keys):
        raise ConfigError(
            f"{file}: the baseline and the current run share no (method, student_steps, metric) point "
            "(another sweep file? metric names carry the sample count); promote a new baseline with "
            "`multistep regress --promote RUN_ID --reason TEXT`"
        )
    bad = rg.failing(points)
    facts = _facts(cfg, file, cur, sweep_rc, facts)

    run_name = f"regress-{sweep_id}"
    tags = {tag.KIND: "regression", tag.SWEEP_NAME: cfg.name, tag.REGRESS_CURRENT_RUN: srid, **base_tags}
    tags |= {tag.REGRESS_VERDICT: "fail" if bad else "pass", tag.REGRESS_REGRESSED: "; ".join(map(rg.describe, bad))}
    rid = open_run(client, uri, cfg.experiment, run_name, tags)
    folder = Path(out).resolve() if out else Path(storage).resolve() / "regress" / "reports" / run_name
    table = _write_report(folder, cfg, points, facts | {"regression run": rid})
    for name in ("regression.md", "regression.png", "regression.csv", "regression.txt"):
        log_files(client, rid, str(folder / name))
    compared = sum(p.verdict != "new" for p in points)
    close_run(
        client,
        rid,
        "FAILED" if bad else "FINISHED",
        metrics={"regressed_points": len(bad), "compared_points": compared},
    )
    set_tags(client, srid, {tag.REGRESS_VERDICT: "fail" if bad else "pass", tag.REGRESS_RUN: rid})

    log.info("")
    log.info(table)
    log.info(f"\nbaseline: {facts['baseline']}")
    log.info(
        f"report: {folder / 'regression.md'}\nplot: {folder / 'regression.png'}\nMLflow regression run: {rid} ({uri})"
    )
    if bad:
        log.info(f"\nREGRESSION: {len(bad)} of {len(points)} points got worse than the baseline allows:")
        for p in bad:
            log.info(f"  - {rg.describe(p)}")
        return 1
    log.info(f"\nno regression: {len(points)} points within tolerance of the baseline")
    return 0
