"""AWS for ``cluster.yaml``: one permission chain, written once (``ablations/aws_policies/*.json``).

    python -m ablations.aws setup --bucket B --region R [--cluster-config cluster.yaml] [--attach-launcher USER]
                                  [--dry-run]

creates (idempotently) the results bucket, the head node's role and instance profile, the GPU workers' role and
instance profile, and their policies; waits until new instance profiles are usable; pins the AMI of every node
type in the cluster config (the SSM parameter resolved once, so every node of a cluster runs one image and one
NVIDIA driver); and, with ``--attach-launcher USER``, puts ``launcher.json`` on that IAM user. ``--dry-run``
prints every step and policy without calling AWS. ``python -m ablations.check --aws`` reads it all back
(``checks``). The chain:

* the user who runs ``ray up``, ``ray down``, this setup and ``check --aws`` holds ``launcher.json``: the EC2 calls
  of Ray's launcher (key pair, security group, subnets, the head's launch and tags, termination), ``iam:PassRole``
  on the two roles, the IAM calls of this setup on the two roles and profiles only, the AMI parameter, the quotas
  and the bucket;
* the head role (``head.json``) may run, describe, tag and terminate instances (what Ray's AWS node provider
  calls), pass the worker role, read the AMI's SSM parameter, and read and write the bucket;
* the worker role (``worker.json``) may read and write the bucket.

The policy files are templates: ``${ACCOUNT}``, ``${REGION}``, ``${BUCKET}``, ``${PREFIX}``, ``${HEAD_ROLE}``,
``${WORKER_ROLE}`` and ``${AMI_PARAMETER}`` are filled in here, so the README's commands and this code use the same
files. boto3 comes with the ``aws`` extra (``pip install -e '.[aws]'``).
"""
from __future__ import annotations

import argparse
import json
import re
import string
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from pipeline.errors import UserError, one_line

PREFIX = "cifar-ablations"
# AWS's public parameter for the Deep Learning Base OSS Nvidia Driver AMI (Ubuntu 22.04), as in cluster.yaml
AMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
SSM_IMAGE = "resolve:ssm:"  # an ImageId that EC2 resolves at every launch
HEAD_ACTIONS = ("ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "ec2:DescribeInstances")
BUCKET_ACTIONS = ("s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")
# After creating an instance profile Ray's launcher sleeps 15 s before using it (its IAM data reaches EC2 later:
# "Invalid IAM Instance Profile name" until then); setup waits as long once the profile reads back with its role.
PROFILE_PROPAGATION_S = 15.0
LAUNCHER_POLICY = "launcher"  # the inline policy's name suffix on the user (--attach-launcher)

# Service Quotas codes (vCPUs per region) by instance family: (on-demand, spot), and the console's names
QUOTAS = {
    "P": (("L-417A185B", "Running On-Demand P instances"), ("L-7212CCBC", "All P Spot Instance Requests")),
    "G and VT": (("L-DB2E81BA", "Running On-Demand G and VT instances"),
                 ("L-3819A6DF", "All G and VT Spot Instance Requests")),
    "Standard": (("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
                 ("L-34B43A08", "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests")),
}
_FAMILY_OF_SERIES = {"p": "P", "g": "G and VT", "vt": "G and VT", **{c: "Standard" for c in "acdhimrtz"}}


class AwsError(UserError, RuntimeError):
    """A missing boto3, missing credentials or a refused call: one line."""


@dataclass(frozen=True)
class Chain:
    """The names and settings of one permission chain."""

    bucket: str
    region: str
    prefix: str = PREFIX
    ami_parameter: str = AMI_PARAMETER
    account: str = "ACCOUNT"

    @property
    def head_role(self) -> str:
        return f"{self.prefix}-head"

    @property
    def worker_role(self) -> str:
        return f"{self.prefix}-worker"

    def values(self) -> dict[str, str]:
        return {"ACCOUNT": self.account, "REGION": self.region, "BUCKET": self.bucket, "PREFIX": self.prefix,
                "HEAD_ROLE": self.head_role, "WORKER_ROLE": self.worker_role, "AMI_PARAMETER": self.ami_parameter}

    def policy(self, name: str) -> dict:
        """``aws_policies/<name>.json`` with this chain's values filled in."""
        text = resources.files("ablations").joinpath("aws_policies", f"{name}.json").read_text()
        return json.loads(string.Template(text).substitute(self.values()))

    def role_arn(self, role: str) -> str:
        return f"arn:aws:iam::{self.account}:role/{role}"

    def parameter_arn(self, name: str | None = None) -> str:
        """The ARN of an SSM parameter: AWS's public ones (/aws/...) have no account in it."""
        name = name or self.ami_parameter
        owner = "" if name.startswith("/aws/") else self.account
        return f"arn:aws:ssm:{self.region}:{owner}:parameter{name}"


def client(service: str, region: str):
    """A boto3 client (endpoint from ``$AWS_ENDPOINT_URL`` as boto3 reads it, e.g. a local moto server)."""
    try:
        import boto3
    except ImportError:
        raise AwsError("boto3 is not installed: pip install -e '.[aws]'") from None
    return boto3.client(service, region_name=region)


def call(what: str, fn: Callable[[], Any]) -> Any:
    """An AWS call whose failure becomes one line (no credentials, access denied, ...)."""
    try:
        return fn()
    except Exception as e:  # botocore's errors, and NoCredentialsError
        raise AwsError(f"{what}: {one_line(e)}") from None


def error_code(e: Exception) -> str | None:
    return getattr(e, "response", {}).get("Error", {}).get("Code")


def account_id(region: str) -> str:
    return call("sts get-caller-identity (AWS credentials)", lambda: client("sts", region).get_caller_identity())[
        "Account"]


# ----------------------------------------------------------------------------- the cluster config


@dataclass(frozen=True)
class NodeType:
    """One of ``available_node_types``: how many nodes of it the cluster may run at once (the head: 1)."""

    name: str
    instance_type: str
    count: int
    head: bool
    resources: dict
    image: str
    spot: bool


@dataclass(frozen=True)
class ClusterConfig:
    path: str
    name: str
    region: str
    node_types: tuple[NodeType, ...]
    availability_zone: str | None = None
    use_internal_ips: bool = False

    @property
    def head(self) -> NodeType:
        return next(t for t in self.node_types if t.head)

    def images(self) -> set[str]:
        return {t.image for t in self.node_types}


def read_cluster(path: str = "cluster.yaml") -> ClusterConfig:
    """The settings the checks and the AMI pin use, from a Ray cluster-launcher config."""
    import yaml

    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
        provider, head_type = cfg["provider"], cfg["head_node_type"]
        total = int(cfg.get("max_workers", 2))
        types = []
        for name, t in cfg["available_node_types"].items():
            nc = t.get("node_config", {})
            types.append(NodeType(
                name=name, instance_type=nc.get("InstanceType", "?"), head=name == head_type,
                count=1 if name == head_type else min(int(t.get("max_workers", total)), total),
                resources=dict(t.get("resources") or {}), image=str(nc.get("ImageId", "")),
                spot=(nc.get("InstanceMarketOptions") or {}).get("MarketType") == "spot"))
        return ClusterConfig(path, cfg["cluster_name"], provider["region"], tuple(types),
                             provider.get("availability_zone"), bool(provider.get("use_internal_ips", False)))
    except OSError as e:
        raise AwsError(f"{path}: {one_line(e)} (run from the repository root, or give --cluster-config)") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise AwsError(f"{path}: not a Ray cluster config ({type(e).__name__}: {one_line(e)})") from None


def pin_image(path: str, region: str, ami: str | None = None) -> str:
    """Replace every ``ImageId: resolve:ssm:PARAM`` of the cluster config by the AMI id PARAM resolves to now
    (once), so that every node of a cluster, also one that joins hours later, boots the same image. An already
    pinned config is kept as it is. ``ami``: the id to pin instead of resolving (dry runs say what they would do)."""
    cluster = read_cluster(path)
    images = cluster.images()
    ssm = {i for i in images if i.startswith(SSM_IMAGE)}
    if not ssm:
        if len(images) != 1:
            raise AwsError(f"{path}: the node types boot different images ({', '.join(sorted(images))}): give them "
                           f"one ImageId, so the head and the workers run the same NVIDIA driver")
        return f"{path} pins {images.pop()} for every node type (kept)"
    if len(images) != 1:
        raise AwsError(f"{path}: the node types name different images ({', '.join(sorted(images))}): give them one "
                       f"ImageId (resolve:ssm:PARAMETER or ami-...)")
    parameter = ssm.pop()[len(SSM_IMAGE):]
    if ami is None:
        got = call(f"ssm get-parameters {parameter}",
                   lambda: client("ssm", region).get_parameters(Names=[parameter]))
        if not got.get("Parameters"):
            raise AwsError(f"{path}: the AMI parameter {parameter} does not resolve in {region}: put an ami-... id "
                           f"of that region into the ImageId lines")
        ami = got["Parameters"][0]["Value"]
    text = Path(path).read_text()
    pinned = re.sub(rf"^(\s*ImageId:\s*){re.escape(SSM_IMAGE + parameter)}\s*$",
                    lambda m: f"{m.group(1)}{ami}  # pinned by ablations.aws setup from {parameter}", text,
                    flags=re.M)
    Path(path).write_text(pinned)
    if read_cluster(path).images() != {ami}:  # an ImageId written in another form (flow style, quoted)
        Path(path).write_text(text)
        raise AwsError(f"{path}: could not pin every ImageId line (write them as `ImageId: {SSM_IMAGE}{parameter}`)")
    return f"pinned ImageId {ami} (what {parameter} resolves to now) in {path}"


# ----------------------------------------------------------------------------- setup


def steps(chain: Chain, cluster_config: str, launcher_user: str | None = None,
          settle_s: float = PROFILE_PROPAGATION_S) -> list[tuple[str, Callable[[], str]]]:
    """Every step of the setup, in order: (what it does, a function that does it and says what it did)."""
    s3, iam = (lambda: client("s3", chain.region)), (lambda: client("iam", chain.region))
    trust = json.dumps(chain.policy("ec2-trust"))
    fresh: list[str] = []  # instance profiles created or given their role in this run

    def bucket() -> str:
        c = s3()
        try:
            c.head_bucket(Bucket=chain.bucket)
            return "exists"
        except Exception:  # 404: create it (403 would be someone else's bucket: create_bucket says so)
            kw = {} if chain.region == "us-east-1" else {
                "CreateBucketConfiguration": {"LocationConstraint": chain.region}}
            call(f"create bucket {chain.bucket}", lambda: c.create_bucket(Bucket=chain.bucket, **kw))
            return "created"

    def role(name: str, policy: str) -> Callable[[], str]:
        def make() -> str:
            c = iam()
            try:
                c.get_role(RoleName=name)
                state = "exists"
            except Exception as e:
                if error_code(e) != "NoSuchEntity":
                    raise AwsError(f"get role {name}: {one_line(e)}") from None
                call(f"create role {name}", lambda: c.create_role(RoleName=name, AssumeRolePolicyDocument=trust))
                state = "created"
            call(f"put policy {name} on role {name}", lambda: c.put_role_policy(
                RoleName=name, PolicyName=name, PolicyDocument=json.dumps(chain.policy(policy))))
            return f"{state}, policy {policy}.json put"
        return make

    def profile(name: str) -> Callable[[], str]:
        def make() -> str:
            c = iam()
            try:
                roles = [r["RoleName"] for r in c.get_instance_profile(InstanceProfileName=name)
                         ["InstanceProfile"]["Roles"]]
                state = "exists"
            except Exception as e:
                if error_code(e) != "NoSuchEntity":
                    raise AwsError(f"get instance profile {name}: {one_line(e)}") from None
                call(f"create instance profile {name}", lambda: c.create_instance_profile(InstanceProfileName=name))
                roles, state = [], "created"
                fresh.append(name)
            if name not in roles:
                call(f"add role {name} to its profile", lambda: c.add_role_to_instance_profile(
                    InstanceProfileName=name, RoleName=name))
                state += ", role added"
                if name not in fresh:
                    fresh.append(name)
            return state
        return make

    def usable() -> str:
        if not fresh:
            return "nothing new to wait for"
        for name in fresh:
            wait_for_profile(chain.region, name)
        time.sleep(settle_s)
        return (f"{' and '.join(fresh)} read back with their roles; waited {settle_s:g} s more for EC2 to see them "
                f"(as Ray's launcher does after creating one)")

    def launcher() -> str:
        name = f"{chain.prefix}-{LAUNCHER_POLICY}"
        call(f"put policy {name} on user {launcher_user}", lambda: iam().put_user_policy(
            UserName=launcher_user, PolicyName=name, PolicyDocument=json.dumps(chain.policy("launcher"))))
        return f"put as inline policy {name}"

    out = [
        (f"bucket s3://{chain.bucket} ({chain.region})", bucket),
        (f"role {chain.worker_role} (trust: EC2; policy worker.json: read and write the bucket)",
         role(chain.worker_role, "worker")),
        (f"instance profile {chain.worker_role} (the GPU workers', cluster.yaml)", profile(chain.worker_role)),
        (f"role {chain.head_role} (trust: EC2; policy head.json: EC2 for Ray's node provider, pass "
         f"{chain.worker_role}, read the AMI parameter, read and write the bucket)", role(chain.head_role, "head")),
        (f"instance profile {chain.head_role} (the head node's, cluster.yaml)", profile(chain.head_role)),
        ("new instance profiles usable", usable),
        (f"one image for the cluster ({cluster_config})",
         lambda: pin_image(cluster_config, read_cluster(cluster_config).region)),
    ]
    if launcher_user:
        out.append((f"launcher.json on user {launcher_user}", launcher))
    return out


def wait_for_profile(region: str, name: str, timeout_s: float = 120.0) -> None:
    """Until the instance profile reads back holding its role (IAM is eventually consistent too)."""
    iam = client("iam", region)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            roles = [r["RoleName"] for r in iam.get_instance_profile(InstanceProfileName=name)
                     ["InstanceProfile"]["Roles"]]
            if roles:
                return
        except Exception as e:
            if error_code(e) != "NoSuchEntity":
                raise AwsError(f"get instance profile {name}: {one_line(e)}") from None
        if time.monotonic() > deadline:
            raise AwsError(f"instance profile {name} did not read back with its role within {timeout_s:.0f} s: run "
                           f"setup again")
        time.sleep(2.0)


def setup(chain: Chain, dry_run: bool = False, cluster_config: str = "cluster.yaml",
          launcher_user: str | None = None, settle_s: float = PROFILE_PROPAGATION_S) -> list[str]:
    """Run (or, dry, print) every step; idempotent: what exists is kept, policies are put again, a pinned image
    stays pinned."""
    if dry_run:
        read_cluster(cluster_config)  # a missing or broken config fails now, not after the roles are made
        lines = [f"would ensure {what}" for what, _ in steps(chain, cluster_config, launcher_user)]
        for name in ("worker", "head", "launcher"):
            lines += [f"policy {name}.json:", json.dumps(chain.policy(name), indent=1)]
        return lines + ["the user who runs `ray up` and `ray down` needs launcher.json"
                        + (f" (put on {launcher_user})" if launcher_user else " (--attach-launcher USER puts it)")]
    read_cluster(cluster_config)
    chain = Chain(**{**chain.__dict__, "account": account_id(chain.region)})
    out = []
    for what, do in steps(chain, cluster_config, launcher_user, settle_s):
        out.append(f"{what}: {do()}")
    if not launcher_user:
        out.append("the user who runs `ray up` and `ray down` needs ablations/aws_policies/launcher.json "
                   "(--attach-launcher USER puts it on an IAM user)")
    return out


# ----------------------------------------------------------------------------- reading policies


def _statements(policy: dict) -> list[dict]:
    st = policy.get("Statement", [])
    return st if isinstance(st, list) else [st]


def _listed(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _matches(pattern: str, value: str, case: bool = True) -> bool:
    """IAM's wildcards: ``*`` any run of characters (also none), ``?`` one character."""
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value, 0 if case else re.IGNORECASE) is not None


def _allows(policy: dict, action: str, resource: str) -> bool:
    """Whether an Allow statement names ``action`` on ``resource``, with IAM's wildcards (actions case-insensitive).
    This reads the policy; it does not evaluate it as AWS would (conditions, denies, boundaries)."""
    for st in _statements(policy):
        if st.get("Effect") != "Allow":
            continue
        if any(_matches(a, action, case=False) for a in _listed(st.get("Action"))) and any(
                _matches(r, resource) for r in _listed(st.get("Resource"))):
            return True
    return False


# ----------------------------------------------------------------------------- checks (ablations.check --aws)


def role_policy(chain: Chain, role: str) -> dict:
    iam = client("iam", chain.region)
    doc = call(f"role {role} (run python -m ablations.aws setup)",
               lambda: iam.get_role_policy(RoleName=role, PolicyName=role))["PolicyDocument"]
    return json.loads(doc) if isinstance(doc, str) else doc


def check_head_role(chain: Chain) -> str:
    p = role_policy(chain, chain.head_role)
    missing = [a for a in HEAD_ACTIONS if not _allows(p, a, "*")]
    if not _allows(p, "iam:PassRole", chain.role_arn(chain.worker_role)):
        missing.append(f"iam:PassRole on {chain.worker_role}")
    if not _allows(p, "ssm:GetParameters", chain.parameter_arn()):
        missing.append(f"ssm:GetParameters on {chain.ami_parameter}")
    missing += [f"{a} on the bucket" for a in BUCKET_ACTIONS if not _bucket_ok(p, chain, a)]
    if missing:
        raise AwsError(f"role {chain.head_role} lacks {', '.join(missing)}: run python -m ablations.aws setup "
                       f"--bucket {chain.bucket} --region {chain.region}")
    return f"{chain.head_role}: EC2 for the node provider, passes {chain.worker_role}, reads the AMI parameter, the bucket"


def _bucket_ok(policy: dict, chain: Chain, action: str) -> bool:
    target = f"arn:aws:s3:::{chain.bucket}" + ("" if action == "s3:ListBucket" else "/*")
    return _allows(policy, action, target)


def check_worker_role(chain: Chain) -> str:
    p = role_policy(chain, chain.worker_role)
    missing = [a for a in BUCKET_ACTIONS if not _bucket_ok(p, chain, a)]
    if missing:
        raise AwsError(f"role {chain.worker_role} lacks {', '.join(missing)} on s3://{chain.bucket}: run "
                       f"python -m ablations.aws setup --bucket {chain.bucket} --region {chain.region}")
    return f"{chain.worker_role}: reads and writes s3://{chain.bucket}"


def check_profiles(chain: Chain) -> str:
    iam = client("iam", chain.region)
    for name in (chain.head_role, chain.worker_role):
        prof = call(f"instance profile {name} (run python -m ablations.aws setup)",
                    lambda: iam.get_instance_profile(InstanceProfileName=name))["InstanceProfile"]
        if name not in [r["RoleName"] for r in prof["Roles"]]:
            raise AwsError(f"instance profile {name} does not hold role {name}: run python -m ablations.aws setup")
    return f"{chain.head_role} and {chain.worker_role} hold their roles"


def check_bucket(chain: Chain) -> str:
    s3 = client("s3", chain.region)
    call(f"bucket s3://{chain.bucket} (run python -m ablations.aws setup)", lambda: s3.head_bucket(Bucket=chain.bucket))
    return f"s3://{chain.bucket} exists"


def check_offered(cluster: ClusterConfig) -> str:
    """Every node type's instance type is offered in the region (Ray's autodetection fails otherwise, and the
    launch does)."""
    ec2 = client("ec2", cluster.region)
    wanted = sorted({t.instance_type for t in cluster.node_types})
    found = call("ec2 describe-instance-type-offerings", lambda: ec2.describe_instance_type_offerings(
        LocationType="region", Filters=[{"Name": "instance-type", "Values": wanted}]))
    offered = {o["InstanceType"] for o in found.get("InstanceTypeOfferings", [])}
    missing = [f"{t.instance_type} (node type {t.name})" for t in cluster.node_types if t.instance_type not in offered]
    if missing:
        raise AwsError(f"{', '.join(missing)} not offered in {cluster.region}: choose another region (provider.region "
                       f"in {cluster.path}) or instance type")
    return f"{' and '.join(wanted)} offered in {cluster.region}"


def instance_types(cluster: ClusterConfig) -> dict[str, dict]:
    """EC2's description of each node type's instance type (vCPUs, memory, GPUs)."""
    ec2 = client("ec2", cluster.region)
    wanted = sorted({t.instance_type for t in cluster.node_types})
    got = call("ec2 describe-instance-types", lambda: ec2.describe_instance_types(InstanceTypes=wanted))
    return {i["InstanceType"]: i for i in got.get("InstanceTypes", [])}


def _gpus(info: dict) -> int:
    return sum(int(g.get("Count", 0)) for g in (info.get("GpuInfo") or {}).get("Gpus", []))


def check_declared_resources(cluster: ClusterConfig, infos: dict[str, dict] | None = None) -> str:
    """Each node type declares the resources Ray gives its nodes, within what its instance type has: declared, they
    do not depend on Ray's autodetection (a denied or failed DescribeInstanceTypes leaves a node type without a GPU,
    and the autoscaler then never starts it for a GPU trial)."""
    infos = instance_types(cluster) if infos is None else infos
    problems, said = [], []
    for t in cluster.node_types:
        info = infos.get(t.instance_type)
        if info is None:
            problems.append(f"{t.instance_type} (node type {t.name}) is not described in {cluster.region}")
            continue
        vcpus, gpus = int(info["VCpuInfo"]["DefaultVCpus"]), _gpus(info)
        mem = int(info["MemoryInfo"]["SizeInMiB"]) * 2**20
        r = t.resources
        fix = (f"set available_node_types.{t.name}.resources in {cluster.path} to what {t.instance_type} has "
               f"({vcpus} vCPUs, {gpus} GPUs, {mem / 2**30:g} GiB)")
        if not r:
            problems.append(f"node type {t.name} declares no resources: {fix}")
            continue
        if r.get("CPU", 0) > vcpus:
            problems.append(f"node type {t.name} declares CPU {r['CPU']:g} but {t.instance_type} has {vcpus} vCPUs: "
                            f"{fix}")
        if r.get("GPU", 0) != gpus and not t.head:
            problems.append(f"node type {t.name} declares GPU {r.get('GPU', 0):g} but {t.instance_type} has {gpus}: "
                            f"{fix}")
        if r.get("memory", 0) > mem:
            problems.append(f"node type {t.name} declares memory {r['memory'] / 2**30:.0f} GiB but {t.instance_type} "
                            f"has {mem / 2**30:g} GiB: {fix}")
        said.append(f"{t.name} {t.instance_type}: " + ", ".join(
            f"{k}={v / 2**30:.0f}GiB" if k == "memory" else f"{k}={v:g}" for k, v in sorted(r.items())))
    if problems:
        raise AwsError("; ".join(problems))
    return "; ".join(said)


def family(instance_type: str) -> str | None:
    """The Service Quotas family of an instance type (``p5.4xlarge``: "P"); None for the ones not checked here."""
    series = re.match(r"[a-z]+", instance_type)
    return _FAMILY_OF_SERIES.get(series.group(0)) if series else None


def quota_needs(cluster: ClusterConfig) -> dict[tuple[str, bool], list[NodeType]]:
    """The node types by (quota family, spot), for the families checked here."""
    needs: dict[tuple[str, bool], list[NodeType]] = {}
    for t in cluster.node_types:
        fam = family(t.instance_type)
        if fam:
            needs.setdefault((fam, t.spot), []).append(t)
    return needs


def quota_verdict(fam: str, spot: bool, have: float | None, types: list[NodeType], vcpus: dict[str, int]) -> \
        str | tuple[str, str]:
    """One line on a family's vCPU quota against what its node types need at most (``have`` None: unreadable)."""
    code, title = QUOTAS[fam][1 if spot else 0]
    need = sum(vcpus[t.instance_type] * t.count for t in types)
    what = " + ".join(f"{t.count} x {t.instance_type} ({t.name})" for t in types)
    if have is None:
        return "--", (f"cannot read the quota '{title}' ({code}): {what} need {need} vCPUs; check it in the Service "
                      f"Quotas console")
    if have < need:
        raise AwsError(f"the quota '{title}' ({code}) is {have:g} vCPUs, {what} need {need}: request an increase "
                       f"(Service Quotas console; new accounts often have 0, and an increase can take a day) or "
                       f"lower max_workers")
    return f"'{title}' {have:g} vCPUs covers {what} ({need})"


def check_quota(cluster: ClusterConfig, fam: str, spot: bool, types: list[NodeType]) -> str | tuple[str, str]:
    infos = instance_types(cluster)
    vcpus = {t.instance_type: int(infos[t.instance_type]["VCpuInfo"]["DefaultVCpus"]) for t in types
             if t.instance_type in infos}
    if len(vcpus) < len({t.instance_type for t in types}):
        raise AwsError(f"cannot describe {', '.join(t.instance_type for t in types)} in {cluster.region}")
    code = QUOTAS[fam][1 if spot else 0][0]
    sq = client("service-quotas", cluster.region)
    have = None
    for get in (sq.get_service_quota, sq.get_aws_default_service_quota):
        try:
            have = float(get(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
            break
        except Exception:  # NoSuchResource, AccessDenied, an endpoint without Service Quotas
            continue
    return quota_verdict(fam, spot, have, types, vcpus)


def check_subnets(cluster: ClusterConfig) -> str:
    """A subnet Ray's launcher can put the nodes in: available, mapping public IPs on launch (unless
    provider.use_internal_ips), in provider.availability_zone when set; `ray up` aborts without one."""
    ec2 = client("ec2", cluster.region)
    subnets = call("ec2 describe-subnets", lambda: ec2.describe_subnets())["Subnets"]
    vpcs = call("ec2 describe-vpcs", lambda: ec2.describe_vpcs())["Vpcs"]
    default = {v["VpcId"] for v in vpcs if v.get("IsDefault")}
    zones = [z.strip() for z in cluster.availability_zone.split(",")] if cluster.availability_zone else None
    usable = [s for s in subnets if s.get("State") == "available"
              and (cluster.use_internal_ips or s.get("MapPublicIpOnLaunch"))
              and (zones is None or s.get("AvailabilityZone") in zones)]
    if not usable:
        where = f"{cluster.region}" + (f" ({', '.join(zones)})" if zones else "")
        fix = ("create the default VPC (aws ec2 create-default-vpc --region " + cluster.region + "), whose subnets do"
               if not default else "set MapPublicIpOnLaunch on a subnet of the default VPC, or set "
                                   "provider.use_internal_ips with a route to the nodes")
        raise AwsError(f"no subnet in {where} maps public IPs on launch: `ray up` aborts ('No usable subnets found'); "
                       f"{fix}")
    usable.sort(key=lambda s: s["AvailabilityZone"])
    first = usable[0]
    vpc = first["VpcId"] + (" (the default VPC)" if first["VpcId"] in default else "")
    return (f"{len(usable)} subnet(s) where `ray up` can put the nodes, e.g. {first['SubnetId']} in "
            f"{first['AvailabilityZone']}, VPC {vpc}")


def check_image(cluster: ClusterConfig, chain: Chain) -> str | tuple[str, str]:
    """One image for every node type: pinned (an ami- id that exists in the region), or an SSM parameter that
    resolves (EC2 resolves it again at every launch: a node that joins later may boot a newer image)."""
    images = cluster.images()
    if len(images) != 1:
        raise AwsError(f"the node types of {cluster.path} boot different images ({', '.join(sorted(images))}): one "
                       f"ImageId for all (python -m ablations.aws setup pins one)")
    image = images.pop()
    if image.startswith(SSM_IMAGE):
        parameter = image[len(SSM_IMAGE):]
        ssm = client("ssm", cluster.region)
        got = call(f"ssm get-parameters {parameter}", lambda: ssm.get_parameters(Names=[parameter]))
        if not got.get("Parameters"):
            raise AwsError(f"the AMI parameter {parameter} does not resolve in {cluster.region}: pin an AMI id in "
                           f"{cluster.path} (python -m ablations.aws setup)")
        return "--", (f"not pinned: {parameter} resolves to {got['Parameters'][0]['Value']} now, and at every launch "
                      f"again (a node that joins later may boot a newer image and driver); python -m ablations.aws "
                      f"setup pins it")
    ec2 = client("ec2", cluster.region)
    try:
        found = ec2.describe_images(ImageIds=[image]).get("Images", [])
    except Exception as e:
        if error_code(e) not in ("InvalidAMIID.NotFound", "InvalidAMIID.Malformed"):
            raise AwsError(f"ec2 describe-images {image}: {one_line(e)}") from None
        found = []
    if not found:
        raise AwsError(f"the pinned image {image} of {cluster.path} does not exist in {cluster.region} (an AMI id is "
                       f"per region): put resolve:ssm:{chain.ami_parameter} back into the ImageId lines and run "
                       f"python -m ablations.aws setup again")
    return f"every node type boots {image} ({found[0].get('Name') or 'no name'}), pinned"


def check_orphans(cluster: ClusterConfig) -> str | tuple[str, str]:
    """Instances tagged for the cluster that run without a head: no autoscaler is left to stop them, and they bill
    until terminated (a head lost to a failure, or terminated by hand)."""
    from ablations.driver.cluster import launcher_tags

    name_tag, kind_tag, head_kind = launcher_tags()
    ec2 = client("ec2", cluster.region)
    pages = call("ec2 describe-instances", lambda: ec2.get_paginator("describe_instances").paginate(Filters=[
        {"Name": f"tag:{name_tag}", "Values": [cluster.name]},
        {"Name": "instance-state-name", "Values": ["pending", "running"]}]).build_full_result())
    nodes = [(i["InstanceId"], {t["Key"]: t["Value"] for t in i.get("Tags", [])}.get(kind_tag),
              i["InstanceType"]) for r in pages.get("Reservations", []) for i in r["Instances"]]
    heads = [n for n in nodes if n[1] == head_kind]
    others = [n for n in nodes if n[1] != head_kind]
    if others and not heads:
        listed = ", ".join(f"{i} ({t})" for i, _, t in others)
        raise AwsError(f"{len(others)} instance(s) of cluster {cluster.name} run without a head: {listed}; no "
                       f"autoscaler is left to stop them and they bill until terminated: `ray down {cluster.path}` "
                       f"terminates them")
    if heads:
        return "--", (f"cluster {cluster.name} is up: head {heads[0][0]} and {len(others)} worker(s) running "
                      f"(`ray down {cluster.path}` when done)")
    return f"no instance of cluster {cluster.name} running"


def checks(chain: Chain, cluster: ClusterConfig) -> list[tuple[str, Callable[[], Any]]]:
    out = [("aws roles", lambda: check_head_role(chain)), ("aws roles", lambda: check_worker_role(chain)),
           ("aws prof", lambda: check_profiles(chain)), ("aws s3", lambda: check_bucket(chain)),
           ("aws ec2", lambda: check_offered(cluster)), ("aws types", lambda: check_declared_resources(cluster))]
    for (fam, spot), types in quota_needs(cluster).items():
        out.append(("aws quota", lambda f=fam, s=spot, t=types: check_quota(cluster, f, s, t)))
    return out + [("aws vpc", lambda: check_subnets(cluster)), ("aws ami", lambda: check_image(cluster, chain)),
                  ("aws nodes", lambda: check_orphans(cluster))]


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ablations.aws", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("setup", help="create the bucket, roles, policies and instance profiles, pin the cluster's "
                                     "image (idempotent)")
    s.add_argument("--bucket", required=True)
    s.add_argument("--region", required=True)
    s.add_argument("--prefix", default=PREFIX, help="names: <prefix>-head and <prefix>-worker")
    s.add_argument("--ami-parameter", default=AMI_PARAMETER, help="the SSM parameter the head role may read")
    s.add_argument("--cluster-config", default="cluster.yaml",
                   help="the cluster config whose ImageId lines are pinned to the AMI id their parameter resolves to")
    s.add_argument("--attach-launcher", metavar="USER",
                   help="also put launcher.json on this IAM user, as the inline policy <prefix>-launcher (needs "
                        "iam:PutUserPolicy: an administrator's right)")
    s.add_argument("--dry-run", action="store_true", help="print every step and policy; call nothing")
    args = p.parse_args(argv)
    chain = Chain(args.bucket, args.region, args.prefix, args.ami_parameter)
    try:
        for line in setup(chain, args.dry_run, args.cluster_config, args.attach_launcher):
            print(line, flush=True)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
