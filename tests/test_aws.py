"""``python -m ablations.aws setup`` and ``python -m ablations.check --aws`` against a real AWS API on this machine
(moto's server: IAM, S3, EC2, SSM, STS). This session's moto server does not enforce policies, so these tests check
that the policies name the right actions on the right resources; tests/test_aws_launcher.py runs Ray's own launcher
code with them enforced. The AMI's public parameter under /aws/ cannot be put into moto, so the tests use a
parameter of their own, holding one of moto's AMI ids."""
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
    """The moto endpoint for this module's clients, and the AMI parameter the checks resolve: one of moto's AMIs
    (the id is yielded)."""
    saved = {k: os.environ.get(k) for k in s3}
    os.environ.update(s3)
    ami = boto3.client("ec2", region_name=REGION).describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    boto3.client("ssm", region_name=REGION).put_parameter(Name=AMI_PARAM, Value=ami, Type="String", Overwrite=True)
    yield ami
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def cli(module: str, *args: str, env: dict | None = None, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, **(env or {})})


def cluster_yaml(tmp_path, region: str = REGION, name: str = "cluster.yaml", **replace: str) -> str:
    """cluster.yaml as a user has it, in ``region``, its image the test's parameter (and ``replace``'s changes)."""
    text = (REPO / "cluster.yaml").read_text().replace("region: us-west-2", f"region: {region}")
    text = text.replace(aws.AMI_PARAMETER, AMI_PARAM)
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def setup(tmp_path, bucket: str, *extra: str, config: str | None = None) -> subprocess.CompletedProcess:
    return cli("ablations.aws", "setup", "--bucket", bucket, "--region", REGION, "--ami-parameter", AMI_PARAM,
               "--cluster-config", config or cluster_yaml(tmp_path, name=f"setup-{bucket}.yaml"), *extra)


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
    assert "arn:aws:ssm:eu-west-1:*:parameter/aws/service/deeplearning" in text
    assert "arn:aws:s3:::my-bucket/*" in text and "${" not in text
    assert "would ensure new instance profiles usable" in text
    assert "would ensure one image for the cluster (cluster.yaml)" in text
    assert "resolve:ssm:" + aws.AMI_PARAMETER in (REPO / "cluster.yaml").read_text()  # nothing pinned


def test_setup_creates_the_chain_once_waits_for_the_profiles_and_pins_one_image(account, tmp_path):
    config = cluster_yaml(tmp_path)
    first = setup(tmp_path, "chain-bucket", config=config)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(": created") == 5, first.stdout  # bucket, 2 roles, 2 profiles
    # the new profiles read back with their roles, then Ray's own 15 s for EC2 to see them
    assert ("new instance profiles usable: cifar-ablations-worker and cifar-ablations-head read back with their "
            "roles; waited 15 s more") in first.stdout, first.stdout
    assert f"pinned ImageId {account} (what {AMI_PARAM} resolves to now) in {config}" in first.stdout
    import yaml

    pinned = yaml.safe_load(open(config))
    assert {t["node_config"]["ImageId"] for t in pinned["available_node_types"].values()} == {account}
    assert "resolve:ssm:" not in open(config).read().split("cluster_name:")[1]  # every ImageId line
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(pinned))  # still a config Ray accepts
    again = setup(tmp_path, "chain-bucket", config=config)
    assert again.returncode == 0 and "created" not in again.stdout, again.stdout  # idempotent
    assert "usable: nothing new to wait for" in again.stdout and f"pins {account} for every node type (kept)" in \
        again.stdout, again.stdout
    chain = aws.Chain("chain-bucket", REGION, ami_parameter=AMI_PARAM, account=aws.account_id(REGION))
    head, worker = aws.role_policy(chain, chain.head_role), aws.role_policy(chain, chain.worker_role)
    assert all(aws._allows(head, a, "*") for a in aws.HEAD_ACTIONS)
    assert aws._allows(head, "iam:PassRole", chain.role_arn(chain.worker_role))
    assert not aws._allows(head, "iam:PassRole", chain.role_arn("someone-else"))  # only the worker role
    assert aws._allows(head, "ssm:GetParameters", chain.parameter_arn())
    public = aws.Chain("chain-bucket", REGION, account="123456789012")  # AWS's own parameter: no account in its ARN
    assert public.parameter_arn().startswith(f"arn:aws:ssm:{REGION}::parameter/aws/service/")
    assert aws._allows(public.policy("head"), "ssm:GetParameters", public.parameter_arn())
    for policy in (head, worker):
        assert aws._allows(policy, "s3:ListBucket", "arn:aws:s3:::chain-bucket")
        assert aws._allows(policy, "s3:PutObject", "arn:aws:s3:::chain-bucket/*")
        assert aws._allows(policy, "s3:AbortMultipartUpload", "arn:aws:s3:::chain-bucket/x/y.parquet")
        assert not aws._allows(policy, "s3:PutObject", "arn:aws:s3:::another-bucket/*")
    assert not aws._allows(worker, "ec2:RunInstances", "*") and not aws._allows(worker, "iam:PassRole", "*")
    iam = boto3.client("iam", region_name=REGION)
    for name in (chain.head_role, chain.worker_role):
        roles = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
        assert [r["RoleName"] for r in roles] == [name]
    # cluster.yaml names the profiles this setup makes
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    profiles = {t: n["node_config"].get("IamInstanceProfile", {}).get("Name")
                for t, n in cfg["available_node_types"].items()}
    assert profiles == {"head": chain.head_role, "gpu": chain.worker_role}


def test_setup_puts_the_launcher_policy_on_a_user_and_fails_in_one_line_without_a_config(account, tmp_path):
    iam = boto3.client("iam", region_name=REGION)
    iam.create_user(UserName="ray-user")
    out = setup(tmp_path, "chain-bucket", "--attach-launcher", "ray-user")
    assert out.returncode == 0, out.stderr
    assert "launcher.json on user ray-user: put as inline policy cifar-ablations-launcher" in out.stdout
    doc = iam.get_user_policy(UserName="ray-user", PolicyName="cifar-ablations-launcher")["PolicyDocument"]
    chain = aws.Chain("chain-bucket", REGION, ami_parameter=AMI_PARAM, account=aws.account_id(REGION))
    assert (json.loads(doc) if isinstance(doc, str) else doc) == chain.policy("launcher")
    missing = setup(tmp_path, "chain-bucket", config=str(tmp_path / "nowhere.yaml"))
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nowhere.yaml'}: [Errno 2] No such file or directory: '{tmp_path / 'nowhere.yaml'}' "
        f"(run from the repository root, or give --cluster-config)"], missing.stderr


def check_aws(config: str, bucket: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict[str, list[str]]]:
    """``check --aws``, and its lines by check (``aws quota`` has one per instance family)."""
    out = cli("ablations.check", "--aws", "--bucket", bucket, "--cluster-config", config, "--ami-parameter",
              AMI_PARAM, *extra)
    lines: dict[str, list[str]] = {}
    for ln in out.stdout.splitlines():
        if ln[:4] in ("ok  ", "--  ", "FAIL"):
            lines.setdefault(" ".join(ln[5:].split()[:2]), []).append(ln)
    return out, lines


def test_check_aws_reads_it_back_one_line_each(account, tmp_path):
    config = cluster_yaml(tmp_path)
    assert setup(tmp_path, "checked-bucket", config=config).returncode == 0
    out, lines = check_aws(config, "checked-bucket")
    assert out.returncode == 0, out.stdout + out.stderr
    assert any(ln.startswith("ok   aws roles") and "passes cifar-ablations-worker" in ln for ln in lines["aws roles"])
    assert lines["aws ec2"] == ["ok   aws ec2    m5.2xlarge and p5.4xlarge offered in us-west-2"], lines
    assert lines["aws types"][0].startswith("ok") and "gpu p5.4xlarge: CPU=16, GPU=1, memory=179GiB" in \
        lines["aws types"][0]
    # moto has no EC2 quotas: one line per family says it cannot be read, and what the node types need
    standard, p = sorted(lines["aws quota"], key=lambda ln: "P instances" in ln)
    assert standard.startswith("--") and "Standard (A, C, D, H, I, M, R, T, Z)" in standard and \
        "1 x m5.2xlarge (head) need 8 vCPUs" in standard, lines["aws quota"]
    assert p.startswith("--") and "'Running On-Demand P instances' (L-417A185B)" in p and \
        "4 x p5.4xlarge (gpu) need 64 vCPUs" in p
    assert lines["aws vpc"][0].startswith("ok") and "(the default VPC)" in lines["aws vpc"][0], lines
    assert lines["aws ami"] == [f"ok   aws ami    every node type boots {account} ("
                                f"{lines['aws ami'][0].split('(', 1)[1]}"] and "pinned" in lines["aws ami"][0]
    assert lines["aws nodes"] == ["ok   aws nodes  no instance of cluster cifar-ablations running"]


def test_check_aws_names_what_is_missing_and_the_fix(account, tmp_path):
    setup_out = setup(tmp_path, "broken-bucket", "--prefix", "broken")
    assert setup_out.returncode == 0, setup_out.stderr
    iam = boto3.client("iam", region_name=REGION)
    head = json.loads(json.dumps(aws.Chain("broken-bucket", REGION, "broken", AMI_PARAM).policy("head")))
    head["Statement"] = [s for s in head["Statement"] if s["Sid"] != "PassTheWorkerRole"]  # the ray-3190 failure
    iam.put_role_policy(RoleName="broken-head", PolicyName="broken-head", PolicyDocument=json.dumps(head))
    missing_param = cluster_yaml(tmp_path, "eu-west-1", "missing.yaml", **{AMI_PARAM: "/cifar-ablations/test/missing"})
    out = cli("ablations.check", "--aws", "--bucket", "broken-bucket", "--aws-prefix", "broken",
              "--cluster-config", missing_param, "--region", REGION, "--ami-parameter", AMI_PARAM)
    assert out.returncode == 2
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert any("broken-head lacks iam:PassRole on broken-worker" in e and "ablations.aws setup" in e for e in errors)
    assert any("/cifar-ablations/test/missing does not resolve" in e for e in errors), errors
    # the region of the cluster config without p5.4xlarge
    other = cli("ablations.check", "--aws", "--bucket", "broken-bucket", "--aws-prefix", "broken",
                "--cluster-config", cluster_yaml(tmp_path, "eu-west-1"), "--ami-parameter", AMI_PARAM)
    assert any("p5.4xlarge (node type gpu) not offered in eu-west-1" in ln for ln in other.stderr.splitlines()), \
        other.stderr


def test_check_aws_compares_the_declared_resources_with_the_instance_type(account, tmp_path):
    """The README's cheaper GPU type with the H100 node's resources left in place, and a type with none."""
    g5 = cluster_yaml(tmp_path, name="g5.yaml", **{"InstanceType: p5.4xlarge": "InstanceType: g5.2xlarge"})
    out, lines = check_aws(g5, "checked-bucket")
    assert out.returncode == 2
    assert lines["aws types"][0].startswith("FAIL") and "node type gpu declares CPU 16 but g5.2xlarge has 8 vCPUs" \
        in lines["aws types"][0] and "(8 vCPUs, 1 GPUs, 32 GiB)" in lines["aws types"][0], lines["aws types"]
    g_quota = [ln for ln in lines["aws quota"] if "G and VT" in ln]
    assert g_quota and "'Running On-Demand G and VT instances' (L-DB2E81BA)" in g_quota[0] and \
        "4 x g5.2xlarge (gpu) need 32 vCPUs" in g_quota[0], lines["aws quota"]
    right = cluster_yaml(tmp_path, name="g5-right.yaml", **{
        "InstanceType: p5.4xlarge": "InstanceType: g5.2xlarge",
        "resources: {CPU: 16, GPU: 1, memory: 192414534860}": "resources: {CPU: 8, GPU: 1, memory: 24051816857}"})
    assert check_aws(right, "checked-bucket")[1]["aws types"][0].startswith("ok")
    undeclared = cluster_yaml(tmp_path, name="undeclared.yaml", **{
        "resources: {CPU: 16, GPU: 1, memory: 192414534860}": "resources: {}"})
    line = check_aws(undeclared, "checked-bucket")[1]["aws types"][0]
    assert line.startswith("FAIL") and "node type gpu declares no resources" in line, line


def test_check_aws_finds_no_usable_subnet_and_nodes_without_a_head(account, tmp_path):
    """In regions of their own: every subnet made private, then instances tagged for the cluster without a head
    (as after a head failure), then with one."""
    region = "ap-southeast-2"
    ec2 = boto3.client("ec2", region_name=region)
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]]
    for s in subnets:
        ec2.modify_subnet_attribute(SubnetId=s, MapPublicIpOnLaunch={"Value": False})
    config = cluster_yaml(tmp_path, region, "private.yaml")
    line = check_aws(config, "checked-bucket")[1]["aws vpc"][0]
    assert line.startswith("FAIL") and f"no subnet in {region} maps public IPs on launch: `ray up` aborts" in line \
        and "MapPublicIpOnLaunch" in line, line
    ec2.modify_subnet_attribute(SubnetId=subnets[0], MapPublicIpOnLaunch={"Value": True})
    assert check_aws(config, "checked-bucket")[1]["aws vpc"][0].startswith("ok")

    region = "us-east-2"
    ec2 = boto3.client("ec2", region_name=region)
    config = cluster_yaml(tmp_path, region, "orphans.yaml")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]

    def launch(kind: str) -> str:
        tags = [{"Key": "ray-cluster-name", "Value": "cifar-ablations"}, {"Key": "ray-node-type", "Value": kind}]
        return ec2.run_instances(ImageId=image, InstanceType="p5.4xlarge" if kind == "worker" else "m5.2xlarge",
                                 MinCount=1, MaxCount=1, TagSpecifications=[
                                     {"ResourceType": "instance", "Tags": tags}])["Instances"][0]["InstanceId"]

    workers = [launch("worker"), launch("worker")]
    out, lines = check_aws(config, "checked-bucket")
    line = lines["aws nodes"][0]
    assert line.startswith("FAIL") and "2 instance(s) of cluster cifar-ablations run without a head" in line and \
        all(f"{w} (p5.4xlarge)" in line for w in workers) and f"`ray down {config}` terminates them" in line, line
    assert any(e.startswith("error: aws nodes: 2 instance(s)") for e in out.stderr.splitlines())
    head = launch("head")
    line = check_aws(config, "checked-bucket")[1]["aws nodes"][0]
    assert line.startswith("--") and f"head {head} and 2 worker(s) running" in line, line
    ec2.terminate_instances(InstanceIds=[head, *workers])
    assert check_aws(config, "checked-bucket")[1]["aws nodes"][0].startswith("ok")


def test_quota_verdicts_count_every_node_of_a_family():
    head = aws.NodeType("head", "m5.2xlarge", 1, True, {}, "ami-1", False)
    gpu = aws.NodeType("gpu", "g5.2xlarge", 4, False, {}, "ami-1", False)
    vcpus = {"m5.2xlarge": 8, "g5.2xlarge": 8}
    assert aws.quota_verdict("G and VT", False, 32.0, [gpu], vcpus) == \
        "'Running On-Demand G and VT instances' 32 vCPUs covers 4 x g5.2xlarge (gpu) (32)"
    with pytest.raises(aws.AwsError, match=r"'Running On-Demand G and VT instances' \(L-DB2E81BA\) is 0 vCPUs, "
                                           r"4 x g5.2xlarge \(gpu\) need 32: request an increase"):
        aws.quota_verdict("G and VT", False, 0.0, [gpu], vcpus)
    with pytest.raises(aws.AwsError, match=r"All G and VT Spot Instance Requests' \(L-3819A6DF\) is 16"):
        aws.quota_verdict("G and VT", True, 16.0, [gpu], vcpus)
    assert aws.quota_verdict("Standard", False, None, [head], vcpus)[0] == "--"
    assert [aws.family(t) for t in ("p5.4xlarge", "g6.2xlarge", "g4dn.xlarge", "vt1.3xlarge", "m5.2xlarge",
                                    "inf2.xlarge", "c7gn.large")] == ["P", "G and VT", "G and VT", "G and VT",
                                                                      "Standard", None, "Standard"]


def test_without_a_bucket_the_check_says_so_in_one_line(tmp_path):
    out = cli("ablations.check", "--aws", "--cluster-config", cluster_yaml(tmp_path))
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: --aws needs --bucket (or --storage s3://BUCKET/...)"], out.stderr
