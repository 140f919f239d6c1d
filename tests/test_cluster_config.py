"""cluster.yaml is accepted by Ray's own cluster-launcher validation (offline: no cloud calls)."""
from __future__ import annotations

import copy

import pytest
import yaml

from .conftest import REPO


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _validate(cfg):
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(copy.deepcopy(cfg))  # fills the provider's defaults, as `ray up` does
    validate_config(full)
    return full


def test_ray_accepts_cluster_yaml(config):
    full = _validate(config)
    types = full["available_node_types"]
    assert full["head_node_type"] in types
    gpu = [t for name, t in types.items() if name != full["head_node_type"]]
    assert gpu and all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in gpu)  # autoscales from zero


def test_nodes_install_this_project(config):
    mounts = config["file_mounts"]
    assert "." in mounts.values()
    target = next(k for k, v in mounts.items() if v == ".")
    assert any(f"pip install -e {target}" in c for c in config["setup_commands"])


@pytest.mark.parametrize("break_it", [
    lambda c: c["available_node_types"]["gpu"].__setitem__("min_workers", "many"),
    lambda c: c.__setitem__("head_node_type", "nope"),
    lambda c: c.__setitem__("not_a_field", 1),
])
def test_validation_rejects_broken_configs(config, break_it):
    bad = copy.deepcopy(config)
    break_it(bad)
    with pytest.raises(Exception):
        _validate(bad)
