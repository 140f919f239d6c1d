"""cluster.yaml is accepted by Ray's own cluster-launcher validation (offline: no cloud calls), and pins what
every node runs: one container image for head and workers, whose Ray is the version installed here and in the
constraints file, and the GPU workers' instance profile for S3 checkpoints."""
from __future__ import annotations

import copy
import importlib.metadata as md
import re

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
    installs = [c for c in config["setup_commands"] if re.search(rf"pip install .*-e {re.escape(target)}$", c)]
    assert installs and all(f"-c {target}/constraints/cluster.txt" in c for c in installs)


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints" / "cluster.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_head_and_workers_run_one_pinned_stack(config):
    """Same image everywhere (no per-type image), its Ray = the pinned Ray = the Ray tested here; torch pinned."""
    docker = config["docker"]
    assert "head_image" not in docker and "worker_image" not in docker
    for node_type in config["available_node_types"].values():
        assert "docker" not in node_type  # no per-type override of the image
    image_ray = re.match(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d+)-cu(\d+)$", docker["image"])
    assert image_ray, docker["image"]
    pins = _pins()
    assert pins["ray"] == image_ray.group(1) == md.version("ray")
    assert pins["torch"] == md.version("torch").split("+")[0]
    torch_line = next(c for c in config["setup_commands"] if "torch==" in c)
    assert f"torch=={pins['torch']}" in torch_line and f"/whl/cu{image_ray.group(3)}" in torch_line
    for dep in ("numpy", "pandas", "pyarrow", "scikit-learn", "torchvision"):
        assert dep in pins


def test_gpu_workers_have_an_instance_profile_and_a_pinned_image_source(config):
    head = config["head_node_type"]
    for name, node_type in config["available_node_types"].items():
        nc = node_type["node_config"]
        assert nc.get("ImageId"), f"{name}: without ImageId Ray falls back to an old default AMI"
        if name != head:
            profile = nc.get("IamInstanceProfile", {})
            assert profile.get("Name") or profile.get("Arn"), f"{name}: workers need S3 access for checkpoints"
    images = {t["node_config"]["ImageId"] for t in config["available_node_types"].values()}
    assert len(images) == 1


def test_pyproject_bounds_ray_to_the_tested_minor_version():
    text = (REPO / "pyproject.toml").read_text()
    spec = re.search(r'"ray\[[^\]]*\]([^"]*)"', text).group(1)
    assert "<" in spec, "Ray needs an upper bound: ablations/driver/torch_backend.py uses private Ray Train parts"
    from packaging.specifiers import SpecifierSet

    assert md.version("ray") in SpecifierSet(spec)


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
