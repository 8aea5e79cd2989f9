"""`multistep regress`, the whole job on real Ray (tiny sweep): a re-run of the same sweep passes (the comparison:
tests/unit/regress/test_compare.py; the baseline tag and a worse run against a SQLite store:
tests/unit/regress/test_baseline.py)."""

import pytest

from multistep.cli import main
from multistep.regress.compare import read_table
from unit.regress.test_baseline import regress_store

DIVERSITY = ("precision", "recall", "modes_missed", "mode_tv")


@pytest.fixture
def store(tmp_path, tiny_sweep, monkeypatch):
    return regress_store(tmp_path, tiny_sweep, monkeypatch)


# -- the whole job on real Ray -------------------------------------------------------------------------
@pytest.mark.slow
def test_rerun_of_the_same_sweep_passes(ray_local, store, capsys, tmp_path):
    """Two real sweeps: the baseline, then `multistep regress` re-running it (fresh cache, same seeds)."""
    from multistep.config import load_sweep
    from multistep.sweep.driver import run_sweep

    client, _, common, f = store
    uri = common[1]
    assert run_sweep(load_sweep(f), uri, str(tmp_path / "rr")) == 0
    exp = client.get_experiment_by_name("tests").experiment_id
    (first,) = client.search_runs([exp], "tags.`multistep.kind` = 'sweep'")
    table = read_table(client.download_artifacts(first.info.run_id, "results.parquet", str(tmp_path)))
    assert all(r["se"] > 0 for r in table if not r["metric"].startswith(DIVERSITY))  # eval.bootstrap: every point
    assert all(r["se"] >= 0 for r in table)  # has a standard error (a count like modes_missed can have 0)
    assert main(["regress", "--promote", first.info.run_id, "--reason", "test", *common]) == 0

    capsys.readouterr()
    assert main(["regress", str(f), *common]) == 0  # runs the sweep again from scratch
    text = capsys.readouterr().out
    assert "no regression: 24 points" in text and "REGRESSION" not in text
    (ok,) = client.search_runs([exp], "tags.`multistep.kind` = 'regression'")
    assert ok.data.tags["multistep.regress.baseline_run"] == first.info.run_id and ok.info.status == "FINISHED"
    assert {"regression.md", "regression.png"} <= {a.path for a in client.list_artifacts(ok.info.run_id)}
    (tmp_path / "cur").mkdir()
    current = read_table(
        client.download_artifacts(
            ok.data.tags["multistep.regress.current_run"], "results.parquet", str(tmp_path / "cur")
        )
    )
    key = lambda r: (r["method"], r["student_steps"], r["metric"])
    assert {key(r): r["value"] for r in current} == {key(r): r["value"] for r in table}  # same seeds: the same numbers
