"""AWS for ``cluster.yaml``: one permission chain, written once (``ablations/aws_policies/*.json``).

    python -m ablations.aws setup --bucket B --region R [--dry-run]

creates (idempotently) the results bucket, the head node's role and instance profile, the GPU workers' role and
instance profile, and their policies; ``--dry-run`` prints every step and policy without calling AWS.
``python -m ablations.check --aws`` reads it all back (``checks``). The chain:

* the user who runs ``ray up`` may pass the head role (``launcher.json``: ``iam:PassRole`` on it);
* the head role (``head.json``) may run, describe, tag and terminate instances (what Ray's AWS node provider
  calls), pass the worker role, read the AMI's SSM parameter, and read and write the bucket;
* the worker role (``worker.json``) may read and write the bucket.

The policy files are templates: ``${ACCOUNT}``, ``${REGION}``, ``${BUCKET}``, ``${HEAD_ROLE}``, ``${WORKER_ROLE}``
and ``${AMI_PARAMETER}`` are filled in here, so the README's commands and this code use the same files.
boto3 comes with the ``aws`` extra (``pip install -e '.[aws]'``).
"""
from __future__ import annotations

import argparse
import json
import string
import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

from pipeline.errors import UserError, one_line

PREFIX = "cifar-ablations"
# AWS's public parameter for the Deep Learning Base OSS Nvidia Driver AMI (Ubuntu 22.04), as in cluster.yaml
AMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
P_INSTANCE_QUOTA = ("ec2", "L-417A185B")  # Service Quotas: Running On-Demand P instances (vCPUs)
HEAD_ACTIONS = ("ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "ec2:DescribeInstances")
BUCKET_ACTIONS = ("s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject")


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
        return {"ACCOUNT": self.account, "REGION": self.region, "BUCKET": self.bucket, "HEAD_ROLE": self.head_role,
                "WORKER_ROLE": self.worker_role, "AMI_PARAMETER": self.ami_parameter}

    def policy(self, name: str) -> dict:
        """``aws_policies/<name>.json`` with this chain's values filled in."""
        text = resources.files("ablations").joinpath("aws_policies", f"{name}.json").read_text()
        return json.loads(string.Template(text).substitute(self.values()))

    def role_arn(self, role: str) -> str:
        return f"arn:aws:iam::{self.account}:role/{role}"

    def parameter_arn(self) -> str:
        return f"arn:aws:ssm:{self.region}::parameter{self.ami_parameter}"


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


def account_id(region: str) -> str:
    return call("sts get-caller-identity (AWS credentials)", lambda: client("sts", region).get_caller_identity())[
        "Account"]


# ----------------------------------------------------------------------------- setup


def steps(chain: Chain) -> list[tuple[str, Callable[[], str]]]:
    """Every step of the setup, in order: (what it does, a function that does it and says what it did)."""
    s3, iam = (lambda: client("s3", chain.region)), (lambda: client("iam", chain.region))
    trust = json.dumps(chain.policy("ec2-trust"))

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
            except c.exceptions.NoSuchEntityException:
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
            except c.exceptions.NoSuchEntityException:
                call(f"create instance profile {name}", lambda: c.create_instance_profile(InstanceProfileName=name))
                roles, state = [], "created"
            if name not in roles:
                call(f"add role {name} to its profile", lambda: c.add_role_to_instance_profile(
                    InstanceProfileName=name, RoleName=name))
                state += ", role added"
            return state
        return make

    return [
        (f"bucket s3://{chain.bucket} ({chain.region})", bucket),
        (f"role {chain.worker_role} (trust: EC2; policy worker.json: read and write the bucket)",
         role(chain.worker_role, "worker")),
        (f"instance profile {chain.worker_role} (the GPU workers', cluster.yaml)", profile(chain.worker_role)),
        (f"role {chain.head_role} (trust: EC2; policy head.json: EC2 for Ray's node provider, pass "
         f"{chain.worker_role}, read the AMI parameter, read and write the bucket)", role(chain.head_role, "head")),
        (f"instance profile {chain.head_role} (the head node's, cluster.yaml)", profile(chain.head_role)),
    ]


def setup(chain: Chain, dry_run: bool = False) -> list[str]:
    """Run (or, dry, print) every step; idempotent: what exists is kept, policies are put again."""
    if dry_run:
        lines = [f"would ensure {what}" for what, _ in steps(chain)]
        for name in ("worker", "head", "launcher"):
            lines += [f"policy {name}.json:", json.dumps(chain.policy(name), indent=1)]
        return lines + [f"the user who runs `ray up` needs launcher.json (iam:PassRole on {chain.head_role})"]
    chain = Chain(**{**chain.__dict__, "account": account_id(chain.region)})
    out = []
    for what, do in steps(chain):
        out.append(f"{what}: {do()}")
    out.append(f"the user who runs `ray up` needs iam:PassRole on {chain.role_arn(chain.head_role)} "
               f"(ablations/aws_policies/launcher.json)")
    return out


# ----------------------------------------------------------------------------- checks (ablations.check --aws)


def _statements(policy: dict) -> list[dict]:
    st = policy.get("Statement", [])
    return st if isinstance(st, list) else [st]


def _allows(policy: dict, action: str, resource: str) -> bool:
    """Whether an Allow statement names ``action`` (exactly or ``service:*``) on ``resource`` (exactly or *).
    This reads the policy; it does not evaluate it as AWS would (conditions, denies, boundaries)."""
    for st in _statements(policy):
        if st.get("Effect") != "Allow":
            continue
        actions = st.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        res = st.get("Resource", [])
        res = [res] if isinstance(res, str) else res
        if any(a in (action, "*", action.split(":")[0] + ":*") for a in actions) and any(
                r in (resource, "*") for r in res):
            return True
    return False


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


def check_offered(chain: Chain, instance_type: str) -> str:
    ec2 = client("ec2", chain.region)
    found = call("ec2 describe-instance-type-offerings", lambda: ec2.describe_instance_type_offerings(
        LocationType="region", Filters=[{"Name": "instance-type", "Values": [instance_type]}]))
    if not found.get("InstanceTypeOfferings"):
        raise AwsError(f"{instance_type} is not offered in {chain.region}: choose another region (cluster.yaml "
                       f"provider.region) or instance type")
    return f"{instance_type} is offered in {chain.region}"


def check_quota(chain: Chain, instance_type: str, max_workers: int) -> str | tuple[str, str]:
    """The on-demand P-instance vCPU quota against what ``max_workers`` GPU nodes need. Where Service Quotas
    cannot be read, one line says so ('--'), not a failure."""
    ec2 = client("ec2", chain.region)
    info = call("ec2 describe-instance-types", lambda: ec2.describe_instance_types(InstanceTypes=[instance_type]))
    vcpus = int(info["InstanceTypes"][0]["VCpuInfo"]["DefaultVCpus"]) if info.get("InstanceTypes") else 0
    need = vcpus * max_workers
    try:
        q = client("service-quotas", chain.region).get_service_quota(ServiceCode=P_INSTANCE_QUOTA[0],
                                                                     QuotaCode=P_INSTANCE_QUOTA[1])
        have = float(q["Quota"]["Value"])
    except AwsError:
        raise
    except Exception as e:  # NoSuchResource, AccessDenied, an endpoint without Service Quotas
        return "--", (f"cannot read the P-instance vCPU quota ({type(e).__name__}): {max_workers} x {instance_type} "
                      f"need {need} vCPUs; check 'Running On-Demand P instances' in the Service Quotas console")
    if have < need:
        raise AwsError(f"the on-demand P-instance quota is {have:g} vCPUs, {max_workers} x {instance_type} need "
                       f"{need}: request an increase (Service Quotas, 'Running On-Demand P instances'; new accounts "
                       f"often have 0) or lower max_workers")
    return f"P-instance quota {have:g} vCPUs covers {max_workers} x {instance_type} ({need})"


def check_ami(chain: Chain) -> str:
    ssm = client("ssm", chain.region)
    got = call(f"ssm get-parameters {chain.ami_parameter}", lambda: ssm.get_parameters(Names=[chain.ami_parameter]))
    if not got.get("Parameters"):
        raise AwsError(f"the AMI parameter {chain.ami_parameter} does not resolve in {chain.region}: pin an AMI id "
                       f"in cluster.yaml (see its header)")
    return f"AMI parameter resolves to {got['Parameters'][0]['Value']}"


def checks(chain: Chain, instance_type: str, max_workers: int) -> list[tuple[str, Callable[[], Any]]]:
    return [("aws roles", lambda: check_head_role(chain)), ("aws roles", lambda: check_worker_role(chain)),
            ("aws prof", lambda: check_profiles(chain)), ("aws s3", lambda: check_bucket(chain)),
            ("aws ec2", lambda: check_offered(chain, instance_type)),
            ("aws quota", lambda: check_quota(chain, instance_type, max_workers)),
            ("aws ami", lambda: check_ami(chain))]


def cluster_settings(path: str = "cluster.yaml") -> dict[str, Any]:
    """The region, GPU instance type and node count the checks compare with, from the cluster config."""
    import yaml

    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except OSError as e:
        raise AwsError(f"{path}: {one_line(e)}") from None
    gpu = next((t for t in cfg["available_node_types"].values() if t.get("max_workers")), {})
    return {"region": cfg["provider"]["region"], "instance_type": gpu.get("node_config", {}).get("InstanceType"),
            "max_workers": int(gpu.get("max_workers") or cfg.get("max_workers") or 1)}


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ablations.aws", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("setup", help="create the bucket, roles, policies and instance profiles (idempotent)")
    s.add_argument("--bucket", required=True)
    s.add_argument("--region", required=True)
    s.add_argument("--prefix", default=PREFIX, help="names: <prefix>-head and <prefix>-worker")
    s.add_argument("--ami-parameter", default=AMI_PARAMETER, help="the SSM parameter cluster.yaml's ImageId reads")
    s.add_argument("--dry-run", action="store_true", help="print every step and policy; call nothing")
    args = p.parse_args(argv)
    chain = Chain(args.bucket, args.region, args.prefix, args.ami_parameter)
    try:
        for line in setup(chain, args.dry_run):
            print(line, flush=True)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
