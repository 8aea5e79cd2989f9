"""cluster.yaml passes the checks `ray up` runs before it touches a cloud, and broken copies do not.

`ray up` (ray.autoscaler._private.commands._bootstrap_config) runs prepare_config (merge with the
provider's defaults.yaml, setup-command merging, per-type worker bounds) and validate_config (Ray's
JSON schema plus cross-field checks). The step between them asks AWS for instance types and the
step after creates IAM roles and key pairs; both need credentials and are left out here.
"""

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from conftest import REPO

TEXT = (REPO / "cluster.yaml").read_text()
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
COMMAND_LISTS = [
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
]


def load() -> dict:
    return yaml.safe_load(TEXT)


def up_checks(cfg: dict) -> dict:
    """What `ray up` checks without credentials: the shipped schema, then prepare + validate."""
    jsonschema.validate(cfg, SCHEMA)
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_ray_up_checks():
    cfg = load()
    p = up_checks(cfg)
    head = p["available_node_types"][p["head_node_type"]]
    assert head["resources"]["train_driver"] >= 1 and head["max_workers"] == 0
    assert "GPU" not in head["resources"]
    gpu = [t for name, t in p["available_node_types"].items() if name != p["head_node_type"]]
    assert gpu and all(re.match(r"(g[456]|p[345])", t["node_config"]["InstanceType"]) for t in gpu)
    assert all(0 <= t["min_workers"] <= t["max_workers"] <= p["max_workers"] for t in gpu)
    assert p["provider"]["type"] == "aws"
    # the project is installed on every node (setup_commands merged into head and worker setup)
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("pip install" in c and "-e ." in c for c in p[key]), key


def test_commands_are_whole_strings_and_dashboard_is_private():
    cfg = load()
    for key in COMMAND_LISTS:
        assert all(isinstance(c, str) for c in cfg.get(key, [])), key  # unquoted `{...}` would parse as a mapping
    (start,) = [c for c in cfg["head_start_ray_commands"] if "ray start --head" in c]
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
    assert "RAY_AUTH_MODE=token" in start
    assert all("RAY_AUTH_MODE=token" in c for c in cfg["worker_start_ray_commands"] if "ray start" in c)


def test_no_secrets_in_cluster_yaml():
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|aws_access_key_id|BEGIN [A-Z ]*PRIVATE KEY", TEXT)
    assert "ssh_private_key" not in load()["auth"]
    assert "aws_credentials" not in load()["provider"]


def _unknown_key(c):
    c["max_worker"] = 3  # typo of max_workers


def _unknown_node_type_key(c):
    c["available_node_types"]["ray.worker.gpu"]["min_worker"] = 1


def _head_not_a_node_type(c):
    c["head_node_type"] = "ray.head.missing"


def _wrong_type(c):
    c["max_workers"] = "four"


def _wrong_resource_type(c):
    c["available_node_types"][c["head_node_type"]]["resources"]["train_driver"] = "many"


def _min_above_max(c):
    c["available_node_types"]["ray.worker.gpu"]["min_workers"] = c["max_workers"] + 1


@pytest.mark.parametrize(
    "breakit, error, says",
    [
        (_unknown_key, jsonschema.ValidationError, "max_worker"),
        (_unknown_node_type_key, jsonschema.ValidationError, "min_worker"),
        (_head_not_a_node_type, ValueError, "head_node_type"),
        (_wrong_type, jsonschema.ValidationError, "'four'"),
        (_wrong_resource_type, jsonschema.ValidationError, "'many'"),
        (_min_above_max, ValueError, "min_workers"),
    ],
)
def test_broken_copies_are_rejected(breakit, error, says):
    cfg = load()
    breakit(cfg)
    with pytest.raises(error, match=re.escape(says)):
        up_checks(cfg)


def test_validate_config_alone_catches_what_the_schema_misses():
    """The schema accepts a head type missing from the node types; Ray's own validation does not."""
    cfg = load()
    _head_not_a_node_type(cfg)
    jsonschema.validate(cfg, SCHEMA)  # passes: a cross-field rule
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(copy.deepcopy(cfg)))
