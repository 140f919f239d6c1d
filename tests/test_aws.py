"""``python -m ablations.aws setup`` and ``python -m ablations.check --aws`` against a real AWS API on this machine
(moto's server: IAM, S3, EC2, SSM, STS). moto stores policies but does not evaluate them, so these tests check
that the policies name the right actions on the right resources, not that AWS would allow them; the AMI's public
parameter under /aws/ cannot be put into moto, so the tests use a parameter of their own."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pytest

from ablations import aws

from .conftest import REPO

REGION = "us-west-2"
AMI_PARAM = "/cifar-ablations/test/ami-id"


@pytest.fixture(scope="module")
def account(s3):
    """The moto endpoint for this module's clients, and the AMI parameter the checks resolve."""
    saved = {k: os.environ.get(k) for k in s3}
    os.environ.update(s3)
    boto3.client("ssm", region_name=REGION).put_parameter(Name=AMI_PARAM, Value="ami-0123456789abcdef0",
                                                          Type="String", Overwrite=True)
    yield s3
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def cli(module: str, *args: str, env: dict | None = None, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, **(env or {})})


def cluster_yaml(tmp_path, region: str = REGION) -> str:
    text = (REPO / "cluster.yaml").read_text().replace("region: us-west-2", f"region: {region}")
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return str(path)


def test_the_dry_run_prints_every_step_and_policy_and_calls_nothing():
    env = {k: "" for k in ()}  # no endpoint, no credentials: nothing may be called
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out = subprocess.run([sys.executable, "-m", "ablations.aws", "setup", "--bucket", "my-bucket", "--region",
                          "eu-west-1", "--dry-run"], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**clean, **env, "AWS_EC2_METADATA_DISABLED": "true"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for what in ("bucket s3://my-bucket (eu-west-1)", "role cifar-ablations-worker", "instance profile "
                 "cifar-ablations-worker", "role cifar-ablations-head", "instance profile cifar-ablations-head"):
        assert f"would ensure {what}" in text, what
    assert "arn:aws:iam::ACCOUNT:role/cifar-ablations-worker" in text  # head passes the worker role
    assert "arn:aws:ssm:eu-west-1::parameter/aws/service/deeplearning" in text
    assert "arn:aws:s3:::my-bucket/*" in text and "${" not in text


def test_setup_creates_the_chain_once_and_the_policies_carry_the_actions(account):
    first = cli("ablations.aws", "setup", "--bucket", "chain-bucket", "--region", REGION,
                "--ami-parameter", AMI_PARAM)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(": created") == 5, first.stdout  # bucket, 2 roles, 2 profiles
    again = cli("ablations.aws", "setup", "--bucket", "chain-bucket", "--region", REGION,
                "--ami-parameter", AMI_PARAM)
    assert again.returncode == 0 and "created" not in again.stdout, again.stdout  # idempotent
    chain = aws.Chain("chain-bucket", REGION, ami_parameter=AMI_PARAM, account=aws.account_id(REGION))
    head, worker = aws.role_policy(chain, chain.head_role), aws.role_policy(chain, chain.worker_role)
    assert all(aws._allows(head, a, "*") for a in aws.HEAD_ACTIONS)
    assert aws._allows(head, "iam:PassRole", chain.role_arn(chain.worker_role))
    assert not aws._allows(head, "iam:PassRole", chain.role_arn("someone-else"))  # only the worker role
    assert aws._allows(head, "ssm:GetParameters", chain.parameter_arn())
    for policy in (head, worker):
        assert aws._allows(policy, "s3:ListBucket", "arn:aws:s3:::chain-bucket")
        assert aws._allows(policy, "s3:PutObject", "arn:aws:s3:::chain-bucket/*")
        assert not aws._allows(policy, "s3:PutObject", "arn:aws:s3:::another-bucket/*")
    assert not aws._allows(worker, "ec2:RunInstances", "*") and not aws._allows(worker, "iam:PassRole", "*")
    iam = boto3.client("iam", region_name=REGION)
    for name in (chain.head_role, chain.worker_role):
        roles = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
        assert [r["RoleName"] for r in roles] == [name]
    # cluster.yaml names the profiles this setup makes
    import yaml

    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    profiles = {t: n["node_config"].get("IamInstanceProfile", {}).get("Name")
                for t, n in cfg["available_node_types"].items()}
    assert profiles == {"head": chain.head_role, "gpu": chain.worker_role}


def test_check_aws_reads_it_back_one_line_each(account, tmp_path):
    setup = cli("ablations.aws", "setup", "--bucket", "checked-bucket", "--region", REGION,
                "--ami-parameter", AMI_PARAM)
    assert setup.returncode == 0, setup.stderr
    out = cli("ablations.check", "--aws", "--bucket", "checked-bucket", "--cluster-config", cluster_yaml(tmp_path),
              "--ami-parameter", AMI_PARAM)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert any(ln.startswith("ok   aws roles") and "passes cifar-ablations-worker" in ln for ln in lines), lines
    assert any(ln.startswith("ok   aws ec2") and "p5.4xlarge is offered in us-west-2" in ln for ln in lines)
    # moto has no EC2 quota: one line says it cannot be read, and what the cluster needs (4 x 16 vCPUs)
    assert any(ln.startswith("--   aws quota") and "cannot read" in ln and "need 64 vCPUs" in ln for ln in lines)
    assert any(ln.startswith("ok   aws ami") and "ami-0123456789abcdef0" in ln for ln in lines)


def test_check_aws_names_what_is_missing_and_the_fix(account, tmp_path):
    setup = cli("ablations.aws", "setup", "--bucket", "broken-bucket", "--region", REGION, "--prefix", "broken",
                "--ami-parameter", AMI_PARAM)
    assert setup.returncode == 0, setup.stderr
    iam = boto3.client("iam", region_name=REGION)
    head = json.loads(json.dumps(aws.Chain("broken-bucket", REGION, "broken", AMI_PARAM).policy("head")))
    head["Statement"] = [s for s in head["Statement"] if s["Sid"] != "PassTheWorkerRole"]  # the ray-3190 failure
    iam.put_role_policy(RoleName="broken-head", PolicyName="broken-head", PolicyDocument=json.dumps(head))
    out = cli("ablations.check", "--aws", "--bucket", "broken-bucket", "--aws-prefix", "broken",
              "--cluster-config", cluster_yaml(tmp_path, "eu-west-1"), "--region", REGION,
              "--ami-parameter", "/cifar-ablations/test/missing")
    assert out.returncode == 2
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert any("broken-head lacks iam:PassRole on broken-worker" in e and "ablations.aws setup" in e for e in errors)
    assert any("does not resolve" in e for e in errors), errors
    # the region of the cluster config without p5.4xlarge
    other = cli("ablations.check", "--aws", "--bucket", "broken-bucket", "--aws-prefix", "broken",
                "--cluster-config", cluster_yaml(tmp_path, "eu-west-1"), "--ami-parameter", AMI_PARAM)
    assert any("p5.4xlarge is not offered in eu-west-1" in ln for ln in other.stderr.splitlines()), other.stderr


def test_without_a_bucket_the_check_says_so_in_one_line(tmp_path):
    out = cli("ablations.check", "--aws", "--cluster-config", cluster_yaml(tmp_path))
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: --aws needs --bucket (or --storage s3://BUCKET/...)"], out.stderr
