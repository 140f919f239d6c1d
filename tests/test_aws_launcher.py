"""Ray 2.60's own AWS launcher code, run with IAM enforced, as the README's two principals:

(a) the user who runs the commands, holding exactly ``launcher.json``: ``python -m ablations.aws setup``,
    ``python -m ablations.check --aws``, ``ray up`` (its config bootstrap, ``_bootstrap_config``: instance-type
    detection, key pair, subnets, security group; then the head's launch, tags and lookups through Ray's
    ``AWSNodeProvider``) and ``ray down`` (the bootstrap again, the teardown's lookups and termination);
(b) the head node's role (``head.json``): what its autoscaler calls through ``AWSNodeProvider`` to launch a GPU
    worker with the worker profile, tag it, list the nodes and terminate the worker.

Two checks stand between each call and AWS's API (a moto server of this module's own): moto's IAM-like access
control (``/moto-api/reset-auth``) and the evaluator of tests/aws_iam.py, which holds the exact policy documents.
Any call either refuses fails the test, by its action's name.

moto's limits, and what covers them here:
* moto compares a statement's Resource with the call's resource only for S3 and for IAM calls that name an existing
  role; EC2, SSM, Service Quotas and the other IAM calls are compared with ``*``, so a statement scoped to an ARN
  would never match. moto therefore gets the policies with their non-S3 resources widened to ``*``; the evaluator
  checks the exact ones, resources included.
* moto names the right of HeadBucket after the operation (``s3:HeadBucket``), AWS after ``s3:ListBucket``: moto's
  copy of a policy that grants ListBucket grants HeadBucket too.
* moto checks no implied right: ``iam:PassRole`` for an instance profile (RunInstances) or for
  AddRoleToInstanceProfile, ``ec2:CreateTags`` for tags set at creation, ``ssm:GetParameters`` for a
  ``resolve:ssm:`` image. The evaluator does.
* Neither evaluates conditions, permission boundaries, service control policies or session policies, nor EC2's
  resource-level permissions (the policies grant EC2 on ``*``).
* moto does not resolve a ``resolve:ssm:`` image, has no quotas (the check says it cannot read them), no capacity,
  no instance boots and no delay before a new instance profile is usable; AWS's public /aws/service/ parameters
  cannot be created in it, so a parameter of the test's own, holding one of moto's AMI ids, stands in.
* Nothing runs on the nodes: no ssh, rsync, docker, ``ray start`` or autoscaler process. The AWS calls they lead to
  are made through Ray's own functions.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import time

import boto3
import pytest
import requests
import yaml

from ablations import aws

from .aws_iam import Evaluator, Principal
from .conftest import REPO
from .fake_cluster import free_port

REGION = "us-west-2"
ACCOUNT = "123456789012"  # moto's
AMI_PARAM = "/cifar-ablations/launcher-test/ami-id"
BUCKET = "launcher-test-bucket"


# ----------------------------------------------------------------------------- a moto server with IAM enforced


@pytest.fixture(scope="module")
def moto():
    """A moto server of this module's own (access control is one switch for the whole server)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            requests.get(f"{url}/moto-api/", timeout=5)
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError("the moto server did not start") from None
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def enforce(url: str, on: bool) -> None:
    """moto's access control: on from the next request, or off."""
    requests.post(f"{url}/moto-api/reset-auth", data=b"0" if on else b"inf", timeout=30).raise_for_status()


def for_moto(policy: dict) -> dict:
    """The policy as moto can match it (the module docstring): non-S3 resources widened to *, HeadBucket beside
    ListBucket."""
    out = copy.deepcopy(policy)
    for st in out["Statement"]:
        resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
        if not all(r.startswith("arn:aws:s3:::") for r in resources):
            st["Resource"] = "*"
        actions = [st["Action"]] if isinstance(st["Action"], str) else list(st["Action"])
        if "s3:ListBucket" in actions:
            st["Action"] = actions + ["s3:HeadBucket"]
    return out


def admin_session(keys: dict) -> boto3.Session:
    return boto3.Session(aws_access_key_id=keys["AccessKeyId"], aws_secret_access_key=keys["SecretAccessKey"],
                         region_name=REGION)


@pytest.fixture(scope="module")
def account(moto, tmp_path_factory):
    """Users made with access control off: an administrator, the launcher (launcher.json) and a user holding what
    the README asked of a launcher before (iam:PassRole on the head role only); the AMI parameter. Then on."""
    enforce(moto, False)
    iam = boto3.client("iam", endpoint_url=moto, region_name=REGION, aws_access_key_id="x",
                       aws_secret_access_key="x")
    chain = aws.Chain(BUCKET, REGION, ami_parameter=AMI_PARAM, account=ACCOUNT)
    users = {}
    for name, policy in (("admin", {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
            ("launcher", for_moto(chain.policy("launcher"))),
            ("auditor", {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})):
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
        users[name] = iam.create_access_key(UserName=name)["AccessKey"]
    ec2 = boto3.client("ec2", endpoint_url=moto, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]  # one of moto's AMIs
    boto3.client("ssm", endpoint_url=moto, region_name=REGION, aws_access_key_id="x",
                 aws_secret_access_key="x").put_parameter(Name=AMI_PARAM, Value=ami, Type="String")
    enforce(moto, True)
    return {"url": moto, "users": users, "chain": chain, "ami": ami}


@contextlib.contextmanager
def acting_as(acct: dict, principal: Principal, keys: dict, home, enforce_policy: bool = True):
    """This process's AWS calls (boto3's default session, Ray's cached clients) as ``keys``, each one evaluated
    against ``principal``'s exact policies; the evaluator is yielded."""
    from ray.autoscaler._private.aws import config as ray_config
    from ray.autoscaler._private.aws import utils as ray_utils

    admin = admin_session(acct["users"]["admin"])

    def profile_role(name: str) -> str:
        roles = admin.client("iam", endpoint_url=acct["url"]).get_instance_profile(
            InstanceProfileName=name)["InstanceProfile"]["Roles"]
        return roles[0]["Arn"] if roles else f"arn:aws:iam::{ACCOUNT}:role/(profile {name} has none)"

    env = {"AWS_ENDPOINT_URL": acct["url"], "AWS_ACCESS_KEY_ID": keys["AccessKeyId"],
           "AWS_SECRET_ACCESS_KEY": keys["SecretAccessKey"], "AWS_DEFAULT_REGION": REGION,
           "AWS_EC2_METADATA_DISABLED": "true", "HOME": str(home)}
    if keys.get("SessionToken"):
        env["AWS_SESSION_TOKEN"] = keys["SessionToken"]
    saved = {k: os.environ.get(k) for k in [*env, "AWS_SESSION_TOKEN", "AWS_PROFILE"]}
    for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(k, None)
    os.environ.update(env)

    def forget_clients():
        boto3.DEFAULT_SESSION = None
        for cached in (ray_utils.resource_cache, ray_utils.client_cache, ray_config._get_subnets_or_die):
            cached.cache_clear()

    forget_clients()
    ev = Evaluator(principal, ACCOUNT, profile_role, enforce=enforce_policy)
    boto3.setup_default_session()
    ev.register(boto3.DEFAULT_SESSION)
    try:
        yield ev
    finally:
        forget_clients()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


# ----------------------------------------------------------------------------- Ray's launcher, step by step


def cluster_config(tmp_path, name: str) -> str:
    """cluster.yaml as a user has it, named ``name``, its image the test's own parameter."""
    text = (REPO / "cluster.yaml").read_text().replace(aws.AMI_PARAMETER, AMI_PARAM)
    text = text.replace("cluster_name: cifar-ablations", f"cluster_name: {name}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def ray_up(path: str):
    """What `ray up` asks of AWS (ray.autoscaler._private.commands: create_or_update_cluster, then
    get_or_create_head_node up to its ssh): the bootstrapped config and the head node's id."""
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler._private.commands import _bootstrap_config
    from ray.autoscaler._private.util import hash_launch_conf
    from ray.autoscaler.tags import (
        NODE_KIND_HEAD,
        STATUS_UNINITIALIZED,
        STATUS_UP_TO_DATE,
        TAG_RAY_LAUNCH_CONFIG,
        TAG_RAY_NODE_KIND,
        TAG_RAY_NODE_NAME,
        TAG_RAY_NODE_STATUS,
        TAG_RAY_USER_NODE_TYPE,
    )

    config = _bootstrap_config(yaml.safe_load(open(path)), no_config_cache=True)
    provider = AWSNodeProvider(config["provider"], config["cluster_name"])
    head_type = config["head_node_type"]
    tags = {TAG_RAY_NODE_KIND: NODE_KIND_HEAD, TAG_RAY_USER_NODE_TYPE: head_type}
    assert provider.non_terminated_nodes(tags) == []
    node_config = {**copy.deepcopy(config.get("head_node", {})),
                   **config["available_node_types"][head_type]["node_config"]}
    provider.create_node(node_config, {**tags, TAG_RAY_LAUNCH_CONFIG: hash_launch_conf(node_config, config["auth"]),
                                       TAG_RAY_NODE_NAME: f"ray-{config['cluster_name']}-head",
                                       TAG_RAY_NODE_STATUS: STATUS_UNINITIALIZED}, 1)
    (head,) = provider.non_terminated_nodes(tags)
    assert provider.external_ip(head) and provider.internal_ip(head)
    provider.set_node_tags(head, {TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE})  # the head's updater, when done
    return config, head


def autoscaler_launches_a_worker(config: dict, image: str | None = None) -> str:
    """What the head's autoscaler asks of AWS for one GPU worker (launch, list, tag) and its removal when idle."""
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler._private.util import hash_launch_conf
    from ray.autoscaler.tags import (
        NODE_KIND_WORKER,
        STATUS_UNINITIALIZED,
        STATUS_UP_TO_DATE,
        TAG_RAY_LAUNCH_CONFIG,
        TAG_RAY_NODE_KIND,
        TAG_RAY_NODE_NAME,
        TAG_RAY_NODE_STATUS,
        TAG_RAY_USER_NODE_TYPE,
    )

    provider = AWSNodeProvider(config["provider"], config["cluster_name"])
    assert len(provider.non_terminated_nodes({})) == 1  # the head
    gpu = next(n for n in config["available_node_types"] if n != config["head_node_type"])
    node_config = copy.deepcopy(config["available_node_types"][gpu]["node_config"])
    if image:
        node_config["ImageId"] = image
    tags = {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: gpu}
    provider.create_node(node_config, {**tags, TAG_RAY_NODE_NAME: f"ray-{config['cluster_name']}-worker",
                                       TAG_RAY_NODE_STATUS: STATUS_UNINITIALIZED,
                                       TAG_RAY_LAUNCH_CONFIG: hash_launch_conf(node_config, config["auth"])}, 1)
    (worker,) = provider.non_terminated_nodes(tags)
    provider.set_node_tags(worker, {TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE})
    provider.terminate_nodes([worker])
    assert provider.non_terminated_nodes(tags) == []
    return worker


def ray_down(path: str) -> None:
    """What `ray down` asks of AWS (ray.autoscaler._private.commands.teardown_cluster, its ssh left out)."""
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler._private.commands import _bootstrap_config
    from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER, TAG_RAY_NODE_KIND

    config = _bootstrap_config(yaml.safe_load(open(path)), no_config_cache=True)
    provider = AWSNodeProvider(config["provider"], config["cluster_name"])

    def remaining():
        return (provider.nodes_for_teardown({TAG_RAY_NODE_KIND: NODE_KIND_WORKER})
                + provider.nodes_for_teardown({TAG_RAY_NODE_KIND: NODE_KIND_HEAD}))

    nodes = remaining()
    assert nodes, "no node to tear down"
    while nodes:
        provider.terminate_nodes(nodes)
        nodes = remaining()


def assume_head_role(acct: dict) -> dict:
    """Credentials of the head role, as EC2 hands them to the head node (moto cannot check an EC2 service
    principal's AssumeRole: made with access control off)."""
    enforce(acct["url"], False)
    try:
        creds = boto3.client("sts", endpoint_url=acct["url"], region_name=REGION, aws_access_key_id="x",
                             aws_secret_access_key="x").assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{acct['chain'].head_role}", RoleSessionName="head-node")
    finally:
        enforce(acct["url"], True)
    return creds["Credentials"]


# ----------------------------------------------------------------------------- the tests


def run_as(acct: dict, principal: Principal, keys: dict, home, steps) -> set[str]:
    """``steps()`` as ``principal``; any call refused (by moto or the evaluator) fails the test by its action's
    name, before any other failure of the steps. The actions evaluated are returned."""
    error = None
    with acting_as(acct, principal, keys, home) as ev:
        try:
            steps()
        except BaseException as e:  # SystemExit from a CLI's main, Ray's aborts, assertions
            error = e
    if ev.denied:
        raise AssertionError(f"{principal.name} was denied: {'; '.join(dict.fromkeys(ev.denied))}")
    if error is not None:
        raise error
    return set(ev.checked)


def test_the_readme_launcher_and_the_head_role_are_denied_nothing(account, tmp_path, capsys):
    from ablations import check

    chain, users, home = account["chain"], account["users"], tmp_path / "home"
    home.mkdir()
    path = cluster_config(tmp_path, "launcher-test")
    launcher = Principal("user launcher (launcher.json)", [chain.policy("launcher")])
    head = Principal(f"role {chain.head_role} (head.json)", [chain.policy("head")])
    up = {}

    def setup_check_up():
        assert aws.main(["setup", "--bucket", BUCKET, "--region", REGION, "--ami-parameter", AMI_PARAM,
                         "--cluster-config", path]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert out.count(": created") == 5 and f"pinned ImageId {account['ami']}" in out, out
        assert check.main(["--aws", "--bucket", BUCKET, "--cluster-config", path, "--ami-parameter",
                           AMI_PARAM]) == 0, capsys.readouterr()
        up["config"], up["head"] = ray_up(path)

    checked = run_as(account, launcher, users["launcher"], home, setup_check_up)
    config = up["config"]
    assert config["available_node_types"]["gpu"]["resources"]["GPU"] == 1
    assert config["available_node_types"]["head"]["node_config"]["ImageId"] == account["ami"]  # pinned

    checked |= run_as(account, head, assume_head_role(account), home, lambda: (
        autoscaler_launches_a_worker(config),
        autoscaler_launches_a_worker(config, image=f"resolve:ssm:{AMI_PARAM}")))  # an image left unpinned

    def down_and_check():
        ray_down(path)
        assert check.main(["--aws", "--bucket", BUCKET, "--cluster-config", path, "--ami-parameter", AMI_PARAM]) == 0
        assert "no instance of cluster launcher-test running" in capsys.readouterr().out

    checked |= run_as(account, launcher, users["launcher"], home, down_and_check)
    # the evaluator saw the rights AWS asks implicitly, and the calls moto checks itself
    assert {"iam:PassRole", "ec2:CreateTags", "ssm:GetParameters", "ec2:RunInstances", "ec2:TerminateInstances",
            "ec2:CreateKeyPair", "ec2:CreateSecurityGroup", "ec2:AuthorizeSecurityGroupIngress",
            "ec2:DescribeInstanceTypes", "iam:CreateRole", "iam:AddRoleToInstanceProfile", "s3:CreateBucket"} <= checked


def test_what_the_readme_asked_of_a_launcher_before_is_denied_by_name(account, tmp_path):
    """The harness fails by name: `ray up` and `ray down` as a user holding only iam:PassRole on the head role
    (what the README asked before), evaluated without refusing, so that every denial along the way is listed."""
    chain = account["chain"]
    ensure_chain(account, tmp_path)
    path = cluster_config(tmp_path, "audit-test")  # unpinned: EC2 resolves the image at launch
    before = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iam:PassRole",
                                                      "Resource": chain.role_arn(chain.head_role)}]}
    home = tmp_path / "home"
    home.mkdir()
    with acting_as(account, Principal("user auditor", [before]), account["users"]["auditor"], home,
                   enforce_policy=False) as ev:
        ray_up(path)
        ray_down(path)
    names = {d.split(" ")[0] for d in ev.denied}
    assert names == {"ec2:DescribeInstanceTypes", "ec2:DescribeKeyPairs", "ec2:CreateKeyPair", "ec2:DescribeSubnets",
                     "ec2:DescribeSecurityGroups", "ec2:CreateSecurityGroup", "ec2:AuthorizeSecurityGroupIngress",
                     "ec2:DescribeInstances", "ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances",
                     "ssm:GetParameters"}, ev.denied
    assert any("ec2:CreateTags" in d and "implied by ec2:RunInstances" in d for d in ev.denied)
    assert any(d.startswith("ssm:GetParameters") and "implied by ec2:RunInstances" in d for d in ev.denied)


def ensure_chain(acct: dict, tmp_path) -> None:
    """The roles and profiles, made by the administrator (idempotent; the first test makes them as the launcher)."""
    home = tmp_path / "admin-home"
    home.mkdir(exist_ok=True)
    admin = Principal("user admin", [{"Version": "2012-10-17",
                                      "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}])
    with acting_as(acct, admin, acct["users"]["admin"], home):
        assert aws.main(["setup", "--bucket", BUCKET, "--region", REGION, "--ami-parameter", AMI_PARAM,
                         "--cluster-config", cluster_config(tmp_path, "setup-only")]) == 0
