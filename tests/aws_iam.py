"""What AWS would allow a principal, beside moto's own access control: a policy evaluator hooked into boto3.

moto (server mode, ``/moto-api/reset-auth``) authenticates every request and checks the caller's policies, but
only in part (its limits are listed in tests/test_aws_launcher.py). This module evaluates every call a boto3 client
makes, before it is sent, against the exact policy documents the principal holds, as AWS does for the cases that
matter to ``cluster.yaml``:

* the action on its resource ARN (IAM roles, instance profiles and users, SSM parameters, S3 buckets and objects;
  EC2 and the others on ``*``), with IAM's wildcards, explicit denies first;
* the rights a call needs implicitly: ``iam:PassRole`` on the role of the instance profile that ``RunInstances``
  gives an instance, and on the role ``AddRoleToInstanceProfile`` adds; ``ec2:CreateTags`` for tags set at
  creation (``TagSpecifications``); ``ssm:GetParameters`` on the parameter of a ``resolve:ssm:`` image.

A call the principal may not make is recorded by name (``denied``) and, when enforcing, refused the way AWS refuses
it (``UnauthorizedOperation`` for EC2, ``AccessDenied`` for the others). moto's own refusals are recorded too
(``after-call``). Statements with a ``Condition`` are not evaluated: such a statement allows nothing here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

S3_ACTIONS = {
    "HeadBucket": "ListBucket", "ListObjects": "ListBucket", "ListObjectsV2": "ListBucket",
    "CreateBucket": "CreateBucket", "GetBucketLocation": "GetBucketLocation",
    "GetObject": "GetObject", "HeadObject": "GetObject",
    "PutObject": "PutObject", "CreateMultipartUpload": "PutObject", "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject", "CopyObject": "PutObject",
    "DeleteObject": "DeleteObject", "DeleteObjects": "DeleteObject", "AbortMultipartUpload": "AbortMultipartUpload",
}
FREE = {"sts:GetCallerIdentity"}  # AWS asks no permission for these
DENIED_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess"}


def _listed(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _match(pattern: str, value: str, case: bool = True) -> bool:
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value, 0 if case else re.IGNORECASE) is not None


def _applies(st: dict, action: str, resource: str) -> bool:
    if "Condition" in st:
        return False
    if "NotAction" in st:
        act = not any(_match(a, action, case=False) for a in _listed(st["NotAction"]))
    else:
        act = any(_match(a, action, case=False) for a in _listed(st.get("Action")))
    if "NotResource" in st:
        res = not any(_match(r, resource) for r in _listed(st["NotResource"]))
    else:
        res = any(_match(r, resource) for r in _listed(st.get("Resource")))
    return act and res


def allowed(policies: list[dict], action: str, resource: str) -> bool:
    """AWS's order for identity policies: an explicit deny wins, then any allow, else the implicit deny."""
    if action in FREE:
        return True
    statements = [st for p in policies for st in _listed_statements(p)]
    if any(st.get("Effect") == "Deny" and _applies(st, action, resource) for st in statements):
        return False
    return any(st.get("Effect") == "Allow" and _applies(st, action, resource) for st in statements)


def _listed_statements(policy: dict) -> list[dict]:
    st = policy.get("Statement", [])
    return st if isinstance(st, list) else [st]


@dataclass
class Principal:
    """Who calls: a name for the messages, and the identity policies it holds (exact documents)."""

    name: str
    policies: list[dict]


@dataclass
class Evaluator:
    """Hooks for one boto3 session acting as ``principal``. ``profile_role(profile name) -> role ARN`` resolves
    an instance profile's role (outside this session); ``enforce``: refuse denied calls (else record only)."""

    principal: Principal
    account: str
    profile_role: Callable[[str], str]
    enforce: bool = True
    checked: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)

    def register(self, session) -> None:
        """On a boto3 Session: every client it creates from now on is evaluated."""
        session.events.register("before-parameter-build", self._before)
        session.events.register("after-call", self._after)

    # ------------------------------------------------------------------ what a call needs

    def needs(self, prefix: str, op: str, params: dict, region: str) -> list[tuple[str, str, str | None]]:
        """(action, resource ARN, the call it is implied by or None) for one API call."""
        acct, call = self.account, f"{prefix}:{op}"
        if prefix == "s3":
            if op not in S3_ACTIONS:
                raise AssertionError(f"the evaluator does not know which right s3:{op} needs: add it to S3_ACTIONS")
            arn = f"arn:aws:s3:::{params.get('Bucket', '*')}" + (f"/{params['Key']}" if "Key" in params else "")
            on_objects = S3_ACTIONS[op] in ("GetObject", "PutObject", "DeleteObject", "AbortMultipartUpload")
            if on_objects and "Key" not in params:
                arn += "/*"  # DeleteObjects: the keys are in the body
            return [(f"s3:{S3_ACTIONS[op]}", arn, None)]
        if prefix == "iam":
            out = []
            if "InstanceProfileName" in params:
                out.append((call, f"arn:aws:iam::{acct}:instance-profile/{params['InstanceProfileName']}", None))
            elif "RoleName" in params:
                out.append((call, f"arn:aws:iam::{acct}:role/{params['RoleName']}", None))
            elif "UserName" in params:
                out.append((call, f"arn:aws:iam::{acct}:user/{params['UserName']}", None))
            else:
                out.append((call, "*", None))
            if op == "AddRoleToInstanceProfile":
                out.append(("iam:PassRole", f"arn:aws:iam::{acct}:role/{params['RoleName']}", call))
            return out
        if prefix == "ssm" and op in ("GetParameters", "GetParameter"):
            names = params.get("Names") or [params.get("Name")]
            return [(call, parameter_arn(region, acct, n), None) for n in names]
        out = [(call, "*", None)]
        if prefix == "ec2":
            if params.get("TagSpecifications"):
                out.append(("ec2:CreateTags", "*", call))
            if op == "RunInstances":
                profile = params.get("IamInstanceProfile") or {}
                name = profile.get("Name") or (profile.get("Arn") or "").rsplit("/", 1)[-1]
                if name:
                    out.append(("iam:PassRole", self.profile_role(name), call))
                image = params.get("ImageId", "")
                if image.startswith("resolve:ssm:"):
                    out.append(("ssm:GetParameters", parameter_arn(region, acct, image[len("resolve:ssm:"):]), call))
        return out

    # ------------------------------------------------------------------ the hooks

    def _before(self, params, model, context, **_):
        prefix = model.service_model.signing_name
        region = context.get("client_region") or "us-east-1"
        for action, resource, implied_by in self.needs(prefix, model.name, params, region):
            self.checked.append(action)
            if allowed(self.principal.policies, action, resource):
                continue
            why = f" (implied by {implied_by})" if implied_by else ""
            line = f"{action} on {resource}{why}"
            self.denied.append(line)
            if self.enforce:
                from botocore.exceptions import ClientError

                code = "UnauthorizedOperation" if prefix == "ec2" else "AccessDenied"
                raise ClientError({"Error": {"Code": code, "Message": f"evaluator: {self.principal.name} is not "
                                   f"authorized to perform: {line}"}}, model.name)

    def _after(self, http_response, parsed, model, **_):
        code = (parsed or {}).get("Error", {}).get("Code")
        if code in DENIED_CODES:
            self.denied.append(f"{model.service_model.signing_name}:{model.name} (moto: "
                               f"{parsed['Error'].get('Message', code)})")


def parameter_arn(region: str, account: str, name: str) -> str:
    """An SSM parameter's ARN: AWS's public parameters (/aws/...) have no account in it."""
    name = name if name.startswith("/") else "/" + name
    return f"arn:aws:ssm:{region}:{'' if name.startswith('/aws/') else account}:parameter{name}"
