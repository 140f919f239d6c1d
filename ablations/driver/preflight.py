"""Before the first trial: a node that can run a trial is there (or joins within the wait), and on it the device
works: CUDA for GPU trials (torch's CUDA build against the node's driver), and a collective all-reduce between
the workers of a several-worker trial (NCCL on GPUs, gloo on CPUs).

Each check reserves exactly what one trial's workers will (a placement group of their bundles), so the
autoscaler sees the same demand and the checks run where trials will. A failure is one line naming the cause
and the fix (``ResourceError``, exit 2), before anything is written.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pipeline.errors import one_line

from ablations.plan.resources import GpuMemory, ResourceError, Resources, fmt_resources
from ablations.store.mirror import filesystem


def needed(res: Resources, on_cluster: bool) -> bool:
    """A local CPU run of one-worker trials has nothing to check; everything else does."""
    return on_cluster or res.device != "cpu" or res.workers > 1


# ----------------------------------------------------------------------------- on the node


def nvidia_driver() -> tuple[str | None, str | None]:
    """(driver version, highest CUDA version it supports) from nvidia-smi, or (None, None) without one."""
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    import re

    drv = re.search(r"Driver Version:\s*([\d.]+)", out)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", out)
    return (drv.group(1) if drv else None), (cuda.group(1) if cuda else None)


def nvidia_gpus() -> list[tuple[str, float, float]]:
    """(name, total MiB, free MiB) of each GPU nvidia-smi lists on this machine; [] without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,memory.free",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            gpus.append((parts[0], float(parts[1]), float(parts[2])))
        except (IndexError, ValueError):  # a line nvidia-smi could not fill ([N/A], an error)
            continue
    return gpus


def device_report(want_cuda: bool) -> dict[str, Any]:
    """What a trial's worker on this node would see: torch, its CUDA build, the driver, and whether a CUDA
    tensor operation works (with the error if not); with CUDA, the GPU's memory and what is free on it."""
    import glob

    import ray
    import torch

    driver, driver_cuda = nvidia_driver()
    out: dict[str, Any] = {"node_ip": ray.util.get_node_ip_address(), "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda, "driver": driver, "driver_cuda": driver_cuda,
                           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                           "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
                           "nvidia_devices": sorted(glob.glob("/dev/nvidia[0-9]*"))}
    try:
        torch.cuda.init()
        x = torch.arange(4.0, device="cuda")
        out["cuda_ok"] = float((x * 2).sum()) == 12.0
        out["gpu"] = torch.cuda.get_device_name(0)
        free, total = torch.cuda.mem_get_info(0)
        out["gpu_total_mib"], out["gpu_free_mib"] = total / 2**20, free / 2**20
    except Exception as e:  # an old driver, no driver, no visible device ...
        out["cuda_ok"] = False
        out["cuda_error"] = one_line(e)
    return out


class _Rank:
    """One worker of the collective check."""

    def address(self) -> tuple[str, int]:
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def all_reduce(self, backend: str, master: str, rank: int, world: int) -> float:
        import torch
        import torch.distributed as dist

        dist.init_process_group(backend, init_method=f"tcp://{master}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=120))
        try:
            device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
            t = torch.full((4,), float(rank + 1), device=device)
            dist.all_reduce(t)
            return float(t[0])
        finally:
            dist.destroy_process_group()


def write_marker(storage: str, token: str) -> dict[str, Any]:
    """On a trial's node: write a small marker file under the storage (what a trial's checkpoint write does)."""
    import ray

    fs, root = filesystem(storage)
    path = f"{root.rstrip('/')}/.ablations-probe/{token}"
    payload = f"{token} written on {ray.util.get_node_ip_address()}".encode()
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(payload)
    return {"node_ip": ray.util.get_node_ip_address(), "path": path, "payload": payload.decode()}


# ----------------------------------------------------------------------------- from the driver


def _remote_options(res: Resources, pg, index: int) -> dict[str, Any]:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {**res.ray_options(), "scheduling_strategy": PlacementGroupSchedulingStrategy(
        pg, placement_group_bundle_index=index)}


def cuda_failure(r: dict[str, Any]) -> str:
    where = f"on node {r['node_ip']}"
    if r.get("gpu_ids") and not r.get("nvidia_devices") and not r.get("driver"):
        return (f"Ray gave a task GPU {','.join(r['gpu_ids'])} {where}, but no GPU is visible to it (no /dev/nvidia*, no "
                f"nvidia-smi): a node's container needs --gpus all (cluster.yaml: docker.worker_run_options) on a host "
                f"with the NVIDIA driver and container toolkit, and a node without a GPU must not declare one")
    build = f"torch {r['torch']} is built for CUDA {r['torch_cuda']}" if r["torch_cuda"] else \
        f"torch {r['torch']} is a CPU-only build"
    if not r["torch_cuda"]:
        fix = "install a CUDA build of torch on the nodes (see README, 'CUDA builds')"
    elif not r["driver"]:
        fix = "the node has no NVIDIA driver (nvidia-smi not found): use a GPU image with the driver, or --device cpu"
    else:
        fix = (f"the node's driver {r['driver']} supports CUDA up to {r['driver_cuda'] or '?'}: install a torch build "
               f"for that CUDA version or a newer driver (README, 'CUDA builds')")
    return f"CUDA is not usable {where} ({r.get('cuda_error', 'no CUDA device')}); {build}; {fix}"


@dataclass(frozen=True)
class Found:
    """What the preflight found: its one-line summary, and the GPU of a trial's node where CUDA works there."""

    line: str
    gpu: GpuMemory | None = None


def run(res: Resources, wait_s: float, storage: str | None = None, storage_given: bool = True) -> Found:
    """Reserve one trial's worker bundles (waiting up to ``wait_s`` for a node), check the device, the
    collective and (``storage``) that the storage a trial writes to there is the one the driver reads, release
    them. Returns the one-line summary and the GPU's memory; raises ``ResourceError`` on failure.
    ``storage_given``: whether the user chose the storage (else it is the run folder's default, which only a
    single machine shares)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = res.worker_bundle()
    t0 = time.monotonic()
    pg = placement_group([dict(bundle) for _ in range(res.workers)], strategy="PACK")
    try:
        if not pg.wait(timeout_seconds=max(wait_s, 1.0)):
            raise ResourceError(
                f"no node that can run a trial ({res.workers} x {fmt_resources(bundle)}) joined the cluster "
                f"within {wait_s:.0f} s (resources now: {fmt_resources(ray.cluster_resources())}); check the "
                f"autoscaler's node types and max_workers (`ray status`), or raise --wait-for-resources")
        waited = time.monotonic() - t0
        parts = [f"a node for {res.workers} x ({fmt_resources(bundle)}) in {waited:.0f} s"]
        gpu = None
        if res.device != "cpu":
            remote = ray.remote(device_report).options(**_remote_options(res, pg, 0))
            report = ray.get(remote.remote(res.device == "cuda"), timeout=300)
            if res.device == "cuda" and not report["cuda_ok"]:
                raise ResourceError(cuda_failure(report))
            if report["cuda_ok"]:
                gpu = GpuMemory(report["gpu_total_mib"], report["gpu_free_mib"], report["gpu"],
                                node_cpus_per_gpu(report["node_ip"], res.gpu_resource))
            parts.append(f"CUDA ok ({report['gpu']}, {report['gpu_total_mib']:,.0f} MiB, "
                         f"{report['gpu_free_mib']:,.0f} free; torch {report['torch']} for CUDA "
                         f"{report['torch_cuda']}, driver {report['driver']})" if report["cuda_ok"]
                         else "no CUDA on the node: trials use cpu")
        if res.workers > 1:
            backend = "nccl" if res.device == "cuda" else "gloo"
            parts.append(_collective(res, pg, backend))
        if storage:
            parts.append(check_storage(res, pg, storage, storage_given))
        return Found("preflight: " + "; ".join(parts), gpu)
    finally:
        remove_placement_group(pg)


def node_cpus_per_gpu(node_ip: str, gpu_resource: str) -> float | None:
    """The CPUs per GPU of the node at ``node_ip`` (from Ray's node table), or None if it is not found there."""
    import ray

    for node in ray.nodes():
        r = node.get("Resources", {})
        if node.get("Alive") and node.get("NodeManagerAddress") == node_ip and r.get(gpu_resource):
            return r.get("CPU", 0.0) / r[gpu_resource]
    return None


def check_storage(res: Resources, pg, storage: str, given: bool = True) -> str:
    """A marker written where a trial runs (bundle 0 of ``pg``, with a trial's resources) and read back here, in
    the driver: the storage every trial checkpoints to and the driver collects from must be one (a shared path or
    a URI such as s3://). One line says which side failed and the fix."""
    import uuid

    import ray

    what = f"--storage {storage}" if given else f"the default storage {storage} (no --storage given)"
    fix = ("use --storage s3://BUCKET/PREFIX (or gs://...) or a path every node mounts" if not given or
           "://" not in storage else
           "give the nodes access to it (on AWS the GPU workers' instance profile: python -m ablations.check --aws)")
    token = uuid.uuid4().hex
    try:
        wrote = ray.get(ray.remote(write_marker).options(**_remote_options(res, pg, 0)).remote(storage, token),
                        timeout=300)
    except Exception as e:
        raise ResourceError(f"{what}: a trial's node cannot write there ({one_line(getattr(e, 'cause', None) or e)});"
                            f" {fix}") from None
    fs, _ = filesystem(storage)
    try:
        with fs.open_input_stream(wrote["path"]) as f:
            back = f.read().decode()
    except Exception:  # not found here: another machine's disk
        back = None
    finally:
        try:
            fs.delete_file(wrote["path"])
        except Exception:  # best effort; the marker is tiny
            pass
    if back != wrote["payload"]:
        raise ResourceError(f"{what}: a file a trial's node ({wrote['node_ip']}) wrote there is not visible to the "
                            f"driver ({ray.util.get_node_ip_address()}): the nodes do not share it; {fix}")
    return f"storage written on {wrote['node_ip']} and read back here"


def _collective(res: Resources, pg, backend: str) -> str:
    import ray

    ranks = [ray.remote(_Rank).options(**_remote_options(res, pg, i)).remote() for i in range(res.workers)]
    try:
        host, port = ray.get(ranks[0].address.remote(), timeout=120)
        sums = ray.get([r.all_reduce.remote(backend, f"{host}:{port}", i, len(ranks)) for i, r in enumerate(ranks)],
                       timeout=300)
    except Exception as e:
        raise ResourceError(f"{backend} all-reduce between the {res.workers} workers of a trial failed "
                            f"({one_line(e)}); the nodes must reach each other on all TCP ports "
                            f"(security group), and NCCL_SOCKET_IFNAME may need to name their network interface") from None
    finally:
        for r in ranks:
            ray.kill(r)
    want = res.workers * (res.workers + 1) / 2
    if any(abs(s - want) > 1e-6 for s in sums):
        raise ResourceError(f"{backend} all-reduce between the {res.workers} workers of a trial returned {sums}, "
                            f"expected {want:g} each")
    return f"{backend} all-reduce ok between {res.workers} workers"
