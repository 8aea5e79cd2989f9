"""`multistep compare` (regress/side_by_side.py): sweeps side by side from a real SQLite MLflow store (sweep runs
made by hand with their results tables, no Ray): the values, the difference and the combined-se verdict."""

import csv
import math

import pytest
from mlflow.tracking import MlflowClient

from multistep.cli import main
from multistep.regress.side_by_side import side_by_side
from multistep.sweep.results import write_table
from multistep.tracking import mlflow_layout as ml

M = "fd_identity_400"


def rows(points: dict) -> list[dict]:
    return [
        {"method": m, "student_steps": s, "nfe": s, "metric": M, "value": v, "se": se, "trial_id": "", "run_id": ""}
        for (m, s), (v, se) in points.items()
    ]


def test_differences_and_verdicts_against_the_first_sweep():
    a = rows({("mcd", 4): (0.040, 0.002), ("mcd", 8): (0.030, 0.002), ("pd", 4): (0.05, None)})
    b = rows({("mcd", 4): (0.030, 0.002), ("mcd", 8): (0.031, 0.002), ("pd", 4): (0.04, 0.001)})
    got = {(r["method"], r["steps"]): r for r in side_by_side({"A": a, "B": b}, M)}
    r4 = got[("mcd", 4)]
    assert r4["B - A"] == pytest.approx(-0.010) and r4["B combined se"] == pytest.approx(math.sqrt(2) * 0.002)
    assert r4["B verdict"] == "lower"  # 0.010 > 0.0028: a difference the se can see
    assert got[("mcd", 8)]["B verdict"] == "within se"  # 0.001 < 0.0028
    assert got[("pd", 4)]["B verdict"] == "no se"  # A measured none
    c = rows({("mcd", 4): (0.05, 0.001)})
    only = {(r["method"], r["steps"]): r for r in side_by_side({"A": a, "C": c}, M)}
    assert only[("mcd", 8)]["C verdict"] == "missing" and only[("mcd", 4)]["C verdict"] == "higher"


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
