"""config/reference.py: every sweep-file key with its type, default and meaning (`multistep sweep --options`),
and docs/config.md is that output, current."""

import yaml

from conftest import REPO
from multistep.cli import main
from multistep.config.reference import reference


def _keys(doc: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in doc.items():
        if isinstance(v, dict) and k not in ("search", "mutations", "params", "builder_args", "tolerances"):
            out += _keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def test_docs_config_md_is_the_current_reference():
    assert (REPO / "docs" / "config.md").read_text() == reference(), (
        "regenerate: multistep sweep --options > docs/config.md"
    )


def test_every_key_of_the_repos_sweep_files_has_a_row():
    text = reference()
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if "net" in doc:  # a teacher file (`multistep teacher`), not a sweep
            continue
        for key in _keys(doc):
            assert f"| `{key}` |" in text, f"{path.name}: {key} has no row"


def test_rows_show_bounds_defaults_and_descriptions():
    rows = {line.split("|")[1].strip(): line for line in reference().splitlines() if line.startswith("| `")}
    assert "`float (> 0)`" in rows["`train.learning_rate`"]
    assert "`int (>= 1)`" in rows["`max_trials`"] and "`256`" in rows["`max_trials`"]
    assert "seed of the mixture itself" in rows["`data.seed`"]  # a data kind's own field
    assert "`'addim' \\| 'ddim'`" in rows["`method.teacher_integrator`"]  # a method's own field, | escaped
    assert "teacher steps at iteration 0" in rows["`method.anneal.start`"]  # a member of a union of models
    assert "`<axis>.loguniform`" in rows  # what a search axis takes


def test_sweep_options_prints_it_and_a_missing_file_is_one_line(capsys):
    assert main(["sweep", "--options"]) == 0
    assert capsys.readouterr().out == reference()
    assert main(["sweep"]) == 2
    assert capsys.readouterr().err.strip() == (
        "multistep: error: FILE: a sweep file is required, e.g. multistep sweep sweeps/quickstart.yaml"
    )
