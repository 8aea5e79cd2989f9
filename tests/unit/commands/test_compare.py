"""`multistep compare` (commands/compare.py): sweeps found by name or run id in a real SQLite MLflow store (sweep runs
made by hand with their results tables, no Ray), written as a table and a plot; unknown sweeps and metrics exit 2."""

import csv

import pytest
from mlflow.tracking import MlflowClient

from multistep.cli import main
from multistep.sweep.results import write_table
from multistep.tracking import mlflow_layout as ml
from unit.regress.test_side_by_side import rows


def test_compare_command_on_sweep_names_and_run_ids(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = ml.ensure_experiment(client, "tests", uri)

    def sweep_run(name, points, status="FINISHED"):
        r = client.create_run(
            exp, tags={"multistep.kind": "sweep", "multistep.sweep_name": name, "multistep.sweep_id": f"{name}-1"}
        )
        paths = write_table(rows(points), tmp_path / "tables" / r.info.run_id)
        client.log_artifact(r.info.run_id, str(paths["parquet"]))
        client.set_terminated(r.info.run_id, status=status)
        return r.info.run_id

    base = sweep_run("base", {("mcd", 4): (0.040, 0.002)})
    sweep_run("new", {("mcd", 4): (0.020, 0.002)})
    sweep_run("new", {("mcd", 4): (9.0, 0.002)}, status="FAILED")  # only finished sweeps are found by name
    out = tmp_path / "cmp"
    assert main(["compare", base, "new", "--tracking-uri", uri, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fd_identity_400" in printed and "lower" in printed
    with open(out / "compare.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["new-1 - base-1"]) == pytest.approx(-0.02) and (out / "compare.png").stat().st_size > 0
    assert main(["compare", "base", "nosuch", "--tracking-uri", uri]) == 2
    assert main(["compare", "base", "new", "--metric", "fid_50k", "--tracking-uri", uri]) == 2
