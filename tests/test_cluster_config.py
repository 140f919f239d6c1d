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


# ----------------------------------------------------------------------------- declared resources, the containers' GPU


def _gpu_nodes_for(node_types: dict, head: str) -> dict:
    """The nodes Ray's autoscaler would add for one GPU trial's bundle (its resource demand scheduler)."""
    from functools import partial

    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

    scorer = partial(_default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary({}))
    added, _ = get_nodes_for(node_types, {}, head, 4, [{"CPU": 3, "GPU": 0.25}], scorer)
    return dict(added)


def test_node_types_declare_their_resources_so_a_failed_detection_hides_no_gpu(config):
    """As Ray has the config when its instance-type detection failed (a denied DescribeInstanceTypes, a type not
    offered in the region: a warning, then the config as written), the autoscaler still starts a GPU node for a
    GPU trial; with the resources left to detection ({}), it starts none."""
    full = _validate(config)
    types, head = full["available_node_types"], full["head_node_type"]
    assert types["gpu"]["resources"].keys() >= {"CPU", "GPU", "memory"} and types["gpu"]["resources"]["GPU"] == 1
    assert types[head]["resources"].keys() >= {"CPU", "memory"}
    assert _gpu_nodes_for(types, head) == {"gpu": 1}
    undeclared = copy.deepcopy(types)
    for t in undeclared.values():
        t["resources"] = {}
    assert _gpu_nodes_for(undeclared, head) == {}


def test_declared_resources_are_what_ray_detects_for_the_instance_types(config, s3, monkeypatch):
    """Ray's own detection (``AWSNodeProvider.fillout_available_node_types_resources``, EC2's instance-type data
    from a moto server) on the config without its resources: the GPU type's CPU, GPU and memory are what it
    declares; the head declares no more memory than its type has, and no CPU (no task that needs one runs there)."""
    from ray.autoscaler._private.aws import utils as ray_utils
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    for k, v in s3.items():
        monkeypatch.setenv(k, v)
    ray_utils.resource_cache.cache_clear(), ray_utils.client_cache.cache_clear()
    bare = copy.deepcopy(config)
    for t in bare["available_node_types"].values():
        t["resources"] = {}
    try:
        detected = AWSNodeProvider.fillout_available_node_types_resources(bare)["available_node_types"]
    finally:
        ray_utils.resource_cache.cache_clear(), ray_utils.client_cache.cache_clear()
    declared = config["available_node_types"]
    gpu = detected["gpu"]["resources"]
    assert {k: declared["gpu"]["resources"][k] for k in ("CPU", "GPU", "memory")} == \
        {k: gpu[k] for k in ("CPU", "GPU", "memory")}, gpu
    import boto3

    head_type = declared[config["head_node_type"]]
    ec2 = boto3.client("ec2", region_name=config["provider"]["region"])
    (info,) = ec2.describe_instance_types(InstanceTypes=[head_type["node_config"]["InstanceType"]])["InstanceTypes"]
    assert head_type["resources"]["CPU"] == 0
    assert 0 < head_type["resources"]["memory"] <= info["MemoryInfo"]["SizeInMiB"] * 2**20


def test_the_gpu_reaches_the_workers_containers_only(config):
    docker = config["docker"]
    assert "--gpus all" in docker["worker_run_options"]
    assert not any("--gpus" in o for o in docker.get("run_options", []) + docker.get("head_run_options", []))
